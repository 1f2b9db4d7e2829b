"""The click options every command shares, built from the settings table.

A stage's commands.py decorates its commands with these, so that `--model`,
`--index`, `--collection`, `--device` and `--grpc/--rest` mean the same everywhere,
read the same environment variables, and show the same help and default (all from
clipsearch/config.py). Kept apart from cli.py, which imports every stage: a stage
importing this module imports no other stage.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from . import config
from .config import BY_NAME, Settings

F = Callable[..., Any]


class SettingType(click.ParamType):
    """A flag's value parsed by its setting's own parser: the flag and the
    environment variable accept the same text."""

    def __init__(self, setting: config.Setting, metavar: str | None = None):
        self.setting = setting
        self.name = setting.name
        self._metavar = metavar

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str | None:
        return self._metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        if not value.strip():
            if self.name in config.NAMED_PLACES:  # `--index "$IDX"` with IDX unset must not mean the default index
                self.fail("is empty: give a value, or leave the flag out", param, ctx)
            return None  # `--shard "$SHARD"` with SHARD unset: as if not given, like an empty variable
        try:
            return self.setting.parse(value)
        except ValueError as exc:
            self.fail(f"{config.shown_raw(self.setting, value)} {exc}", param, ctx)


class SettingOption(click.Option):
    """An option built from a row of the settings table, which it keeps (the README's
    configuration table and the table's tests find the options by it)."""

    def __init__(self, *args: Any, setting: config.Setting, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.setting = setting


def setting_help(name: str, text: str | None = None, with_default: bool = True) -> str:
    setting = BY_NAME[name]
    default = f" Default: {setting.describe_default()}." if with_default else ""
    return f"{text or setting.help} Env: {', then '.join(setting.env)}.{default}"


def setting_option(name: str, *decls: str, help: str | None = None, metavar: str | None = None,
                   with_default: bool = True, **kwargs: Any) -> Callable[[F], F]:
    """A click option for setting `name` of the table: it passes None when the flag
    is absent, so that `config.value` can fall back to the environment and default."""
    setting = BY_NAME[name]
    decls = decls or (setting.flag or "--" + name.replace("_", "-"),)
    if "/" not in decls[0]:  # an on/off pair is a boolean flag; everything else is parsed
        kwargs.setdefault("type", SettingType(setting, metavar))
    return click.option(*decls, name, cls=SettingOption, setting=setting, default=None,
                        help=setting_help(name, help, with_default), **kwargs)


def model_option(*decls: str, help: str | None = None, with_default: bool = True,
                 hidden: bool = False) -> Callable[[F], F]:
    return setting_option("model", *(decls or ("--model", "-m")), help=help, metavar="NAME|DIR",
                          with_default=with_default, hidden=hidden)


def device_option(fn: F | None = None, *, hidden: bool = False) -> Any:
    if fn is None:
        return lambda command: device_option(command, hidden=hidden)
    return setting_option("device", metavar="auto|cpu|cuda[:N]|mps", hidden=hidden)(fn)


def index_options(fn: F | None = None, *, model_help: str | None = None,
                  model_default: bool = True, loads_model: bool = True) -> Any:
    """--model, --index, --collection, --device, --grpc/--rest: which model and which
    collection. The command receives them as one resolved `settings`. `model_help`
    (and `model_default=False`) for a command whose --model means something else.
    `loads_model=False`, for a command that reads only the index (status, migrate,
    duplicates): --model and --device are left out of its help, where they would
    promise a choice that changes nothing, and still accepted, so that a script
    passing one flag set to every command keeps working."""
    if fn is None:
        return lambda command: index_options(command, model_help=model_help, model_default=model_default,
                                             loads_model=loads_model)

    @model_option(help=model_help, with_default=model_default, hidden=not loads_model)
    @setting_option("index", metavar="DIR|URL")
    @setting_option("collection", "--collection", "-c", metavar="NAME")
    @device_option(hidden=not loads_model)
    @setting_option("grpc", "--grpc/--rest", help="Protocol to a Qdrant server: gRPC (port 6334) or REST.")
    @functools.wraps(fn)
    def wrapper(model: str | None, index: str | None, collection: str | None, device: str | None,
                grpc: bool | None, **kwargs: Any) -> Any:
        settings = Settings.resolve(model=model, index=index, collection=collection, device=device, grpc=grpc)
        return fn(settings=settings, **kwargs)

    return wrapper


# A server collection's layout, set where a command creates one (ingest, migrate).
LAYOUT_SETTINGS = ("shards", "replicas", "write_consistency", "quantization", "vectors_on_disk", "hnsw_m",
                   "hnsw_ef_construct")


def layout_options(fn: F) -> F:
    """--shards, --replicas, --write-consistency, --quantization, --vectors-on-disk,
    --hnsw-m, --hnsw-ef-construct. Goes below @index_options: the flags given replace
    the environment's values in the command's `settings`, which open_index applies
    when it creates a server collection."""

    @setting_option("shards", metavar="N")
    @setting_option("replicas", metavar="N")
    @setting_option("write_consistency", metavar="N")
    @setting_option("quantization", metavar="none|int8|binary")
    @setting_option("vectors_on_disk", "--vectors-on-disk/--vectors-in-ram")
    @setting_option("hnsw_m", metavar="M")
    @setting_option("hnsw_ef_construct", metavar="N")
    @functools.wraps(fn)
    def wrapper(settings: Settings, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in LAYOUT_SETTINGS}
        given = {name: value for name, value in given.items() if value is not None}
        return fn(settings=settings.with_overrides(**given) if given else settings, **kwargs)

    return wrapper


# How commands that list images print them (search, duplicates): the same four ways.
OUTPUT_FORMATS = ("table", "paths", "paths0", "json")


def format_option(help: str) -> Callable[[F], F]:
    """-f/--format, passed as `fmt`; `help` says what each format holds for this command."""
    return click.option("--format", "-f", "fmt", type=click.Choice(OUTPUT_FORMATS), default="table",
                        show_default=True, help=help)


def exclude_option(fn: F) -> F:
    """--exclude GLOB of ingest and serve --watch: both walks skip the same files."""
    return click.option(
        "--exclude", multiple=True, metavar="GLOB",
        help="Skip files and folders matching GLOB (repeatable): a name (raw, '*.tmp'), a full path, or the "
             "end of one (2019/Paris skips every folder .../2019/Paris). A link whose target it matches is "
             "skipped too.")(fn)


def quiet_option(fn: F) -> F:
    return click.option("--quiet", "-q", is_flag=True, help="No progress display; print only the summary.")(fn)


def server_options(server_help: str) -> Callable[[F], F]:
    """--server URL and --token TOKEN of a thin client (search, status, duplicates): the
    command receives both resolved from the flags, then CLIPSEARCH_SERVER and
    CLIPSEARCH_TOKEN (server None: work locally; so too where --index or --collection is
    given without --server: a flag wins over the environment)."""

    def decorate(fn: F) -> F:
        @setting_option("server", metavar="URL", help=server_help)
        @setting_option("token", metavar="TOKEN", help=(
            "With --server: the token that server was started with, sent as Authorization: Bearer. Never printed."))
        @functools.wraps(fn)
        def wrapper(server: str | None, token: str | None, **kwargs: Any) -> Any:
            given = click.get_current_context().params
            local = [flag for name, flag in (("index", "--index"), ("collection", "--collection"))
                     if given.get(name) is not None]
            if server is None and local:
                # A flag wins over the environment: an --index given here with
                # CLIPSEARCH_SERVER exported means this index, not the server's.
                return fn(server=None, token=config.value("token", token), **kwargs)
            if server is not None and local and not given.get("check"):  # status --check refuses --server itself
                from .progress import stderr_line

                stderr_line(f"{' and '.join(local)} {'is' if len(local) == 1 else 'are'} ignored with --server: "
                            "the server answers from the index it holds")
            return fn(server=config.value("server", server), token=config.value("token", token), **kwargs)

        return wrapper

    return decorate
