"""Every setting clipsearch reads from the environment, declared once.

`SETTINGS` is the table: each row names a setting, its environment variable(s), its
default, the parser that turns text into a value (and says, in a phrase, what a bad
value should have been) and its help text. The click options are built from it
(clipsearch/options.py), the README's configuration table is generated from it
(scripts/update_readme.py), and tests/cli/test_settings_table.py fails when a module
reads a CLIPSEARCH_* variable that is not declared here, or reads one by hand.

Precedence: a flag wins over the environment, which wins over the default. A bad value
from the environment is a one-line error naming the variable; a CLIPSEARCH_ variable
that is no setting, a warning naming it.

Standard library only: every command imports this before anything else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import UsageError

DEFAULT_MODEL = "sentence-transformers/clip-ViT-B-32"
DEFAULT_COLLECTION = "images"
MEMORY_INDEX = ":memory:"

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
DEVICES = ("auto", "cpu", "cuda", "mps")


# -- parsers: text -> value; a ValueError's message says what the value should be ----------


def parse_text(text: str) -> str:
    return text


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"is not one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")


def parse_device(text: str) -> str:
    if text in DEVICES or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise ValueError("is not one of auto, cpu, cuda, cuda:N, mps")


PRECISIONS = ("fp32", "int8")  # as clipsearch/encoders/identity.py names them


def parse_precision(text: str) -> str:
    word = text.strip().lower()
    if word in PRECISIONS:
        return word
    raise ValueError(f"is not one of {', '.join(PRECISIONS)}")


def _number(kind: Callable[[str], Any], what: str, low: float, low_open: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(str(text).strip())
        except ValueError:
            raise ValueError(f"is not {what}") from None
        if value < low or (low_open and value == low) or value != value or value == float("inf"):  # NaN, inf
            raise ValueError(f"is not {what}")
        return value

    return parse


parse_seconds = _number(float, "a number of seconds above 0", 0, low_open=True)
parse_interval = _number(float, "a number of seconds, 0 or more", 0)
parse_batch_size = _number(int, "a whole number of 1 or more", 1)
parse_workers = _number(int, "a whole number of 0 or more", 0)
parse_megapixels = _number(float, "a number of megapixels above 0", 0, low_open=True)
parse_points = _number(int, "a whole number of points, 1 or more", 1)
parse_minutes = _number(float, "a number of minutes, 0 or more", 0)


def parse_port(text: str) -> int:
    value = _number(int, "a port number (1-65535)", 1)(text)
    if value > 65535:
        raise ValueError("is not a port number (1-65535)")
    return value


# A host name as DNS spells it (RFC 1123 labels), for serve's --host.
_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def parse_host(text: str) -> str:
    """An address serve can bind: an IP address (v4, v6) or a host name; a typo is
    told before the model loads, not as a failed bind after it."""
    import ipaddress

    address = text.strip()
    try:
        ipaddress.ip_address(address.strip("[]"))
        return address.strip("[]")
    except ValueError:
        pass
    if _HOST_NAME.fullmatch(address):
        return address
    raise ValueError("is not an IP address or host name")


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' with 0 <= I < N."""
    try:
        i, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError("is not of the form I/N (e.g. 0/4)") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError("is not of the form I/N with 0 <= I < N")
    return i, n


def parse_server_url(text: str) -> str:
    from urllib.parse import urlsplit

    url = text.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise ValueError("is not a serve URL such as http://127.0.0.1:8765")
    parts = urlsplit(url)
    # serve's own login link pasted whole would carry its token into every request line,
    # error and log: the address alone, the token apart.
    if parts.query or parts.fragment or "@" in parts.netloc or parts.path not in ("", "/"):
        raise ValueError("is not serve's address alone, such as http://127.0.0.1:8765: no path, query or "
                         "user:password (a login link's token goes in --token or CLIPSEARCH_TOKEN)")
    return url


def shown_raw(setting: "Setting", raw: str) -> str:
    """A setting's raw text as an error may quote it: a secret never; a server URL
    without what may hold a secret (user:password, the query of a login link)."""
    if setting.secret:
        return "(hidden)"
    if setting.name == "server":
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(raw.strip())
            host = parts.netloc.rpartition("@")[2]
            raw = f"{parts.scheme}://{host}{parts.path}" + ("?..." if parts.query or parts.fragment else "") \
                if parts.scheme else raw
        except ValueError:  # not even a URL's shape: nothing of one to hide
            pass
    return repr(raw)


def parse_token(text: str) -> str:
    token = text.strip()
    # ASCII only: HTTP carries header bytes as latin-1, so a client's UTF-8 `é` never
    # matched the token serve was given (a 401 for the right token).
    if len(token) < 16 or any(c.isspace() or not c.isprintable() or not c.isascii() for c in token):
        raise ValueError("is not a token of 16 or more printable ASCII characters without spaces")
    return token


def parse_origins(text: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"names {origin!r}, which is not an origin such as https://photos.example.org")
    return origins


parse_megabytes = _number(float, "a number of megabytes above 0", 0, low_open=True)


def parse_path(text: str) -> str:
    return str(Path(text).expanduser())


# A server collection's layout (clipsearch/index/layout.py reads these rows).
QUANTIZATIONS = ("none", "int8", "binary")
parse_count = _number(int, "a whole number of 1 or more", 1)
parse_hnsw = _number(int, "a whole number of 4 or more", 4)  # Qdrant refuses an ef_construct below 4
parse_oversampling = _number(float, "a number of 1 or more", 1)


def parse_quantization(text: str) -> str:
    word = text.strip().lower()
    if word in QUANTIZATIONS:
        return word
    raise ValueError(f"is not one of {', '.join(QUANTIZATIONS)}")


# -- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    env: tuple[str, ...]  # read in this order, the first one set wins
    default: Any  # a value, or a callable giving it (read when needed)
    parse: Callable[[str], Any]
    help: str
    flag: str | None = None  # the CLI flag that also sets it
    default_text: str | None = None  # how help and README show the default, where str(default) would not do
    secret: bool = False  # never printed

    @property
    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def describe_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        return "none" if self.default is None else str(self.default)


def default_index_path() -> str:
    """The embedded index lives in the user's data dir, e.g. ~/.local/share/clipsearch/index."""
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("clipsearch")) / "index")


def default_cache_dir() -> str:
    from platformdirs import user_cache_dir

    return user_cache_dir("clipsearch")


SETTINGS: tuple[Setting, ...] = (
    # Which model and which collection: every command's shared options (clipsearch/options.py).
    Setting("model", ("CLIPSEARCH_MODEL",), DEFAULT_MODEL, parse_text,
            "CLIP model: hub id or local folder. Unset, ingest, search and serve use the model an existing "
            "collection was made with.", flag="--model"),
    Setting("index", ("CLIPSEARCH_INDEX", "QDRANT_URL"), default_index_path, parse_text,
            "Index: a folder (embedded Qdrant), http(s)://host:6333 (Qdrant server) or :memory:.",
            flag="--index", default_text="the user data dir (~/.local/share/clipsearch/index)"),
    Setting("collection", ("CLIPSEARCH_COLLECTION",), DEFAULT_COLLECTION, parse_text,
            "Collection name.", flag="--collection"),
    Setting("device", ("CLIPSEARCH_DEVICE",), "auto", parse_device,
            "Where the model runs: auto (cuda when available), cpu, cuda, cuda:N, mps.", flag="--device"),
    Setting("grpc", ("CLIPSEARCH_GRPC",), False, parse_bool,
            "Talk to a Qdrant server over gRPC instead of REST: faster bulk upserts.", flag="--grpc",
            default_text="off (REST)"),
    Setting("api_key", ("QDRANT_API_KEY",), None, parse_text,
            "The Qdrant server's API key; sent to the server, never printed.", secret=True),
    Setting("retry_seconds", ("CLIPSEARCH_RETRY_SECONDS",), 30.0, parse_interval,
            "How long calls to a Qdrant server are retried before giving up "
            "(at most 10 s until the server has first answered; 0: no retries)."),
    Setting("grpc_port", ("CLIPSEARCH_GRPC_PORT",), 6334, parse_port,
            "The server's gRPC port, where a proxy or port mapping moved it."),
    # A server collection's layout: applied when clipsearch creates the collection (ingest,
    # migrate); an existing one keeps its own. None: Qdrant's default. Refused on an embedded index.
    Setting("shards", ("CLIPSEARCH_SHARDS",), None, parse_count,
            "Qdrant shards of a new server collection, spread over the cluster's nodes (not --shard, "
            "which splits the files among ingest machines).", flag="--shards", default_text="Qdrant's: 1"),
    Setting("replicas", ("CLIPSEARCH_REPLICAS",), None, parse_count,
            "Copies of each shard of a new server collection, on different nodes of a cluster.",
            flag="--replicas", default_text="Qdrant's: 1"),
    Setting("write_consistency", ("CLIPSEARCH_WRITE_CONSISTENCY",), None, parse_count,
            "Replicas that must confirm a write to a new server collection before it succeeds.",
            flag="--write-consistency", default_text="Qdrant's: 1"),
    Setting("quantization", ("CLIPSEARCH_QUANTIZATION",), None, parse_quantization,
            "Quantized copies of a new collection's vectors (server or embedded), kept in RAM (always_ram): int8 (4x "
            "smaller) or binary (32x); searches rescore the best candidates with the original vectors "
            "(CLIPSEARCH_OVERSAMPLING).", flag="--quantization", default_text="Qdrant's: none"),
    Setting("vectors_on_disk", ("CLIPSEARCH_VECTORS_ON_DISK",), None, parse_bool,
            "Keep a new collection's original vectors on disk (mmap; server or embedded) instead of in RAM: with "
            "--quantization, RAM holds only the quantized ones.", flag="--vectors-on-disk",
            default_text="Qdrant's: off (in RAM)"),
    Setting("hnsw_m", ("CLIPSEARCH_HNSW_M",), None, parse_hnsw,
            "HNSW links per node of a new collection's graph (server or embedded): more is better recall, more RAM.",
            flag="--hnsw-m", default_text="Qdrant's: 16"),
    Setting("hnsw_ef_construct", ("CLIPSEARCH_HNSW_EF_CONSTRUCT",), None, parse_hnsw,
            "HNSW beam width while a new collection's graph is built (server or embedded): more is a better graph, "
            "built slower.", flag="--hnsw-ef-construct", default_text="Qdrant's: 100"),
    Setting("oversampling", ("CLIPSEARCH_OVERSAMPLING",), 2.0, parse_oversampling,
            "Searching a quantized collection: fetch this many times k candidates by the quantized "
            "vectors, then rank them by the original ones (int8 at 1M on the embedded index: recall@10 0.91 "
            "at 1, all the graph finds from 2; bench/embedded_quantization.py)."),
    # ingest
    Setting("batch_size", ("CLIPSEARCH_BATCH_SIZE",), 32, parse_batch_size,
            "Images per model batch.", flag="--batch-size"),
    Setting("workers", ("CLIPSEARCH_WORKERS",), lambda: os.cpu_count() or 1, parse_workers,
            "Decoding processes; 0 decodes in the main process.", flag="--workers",
            default_text="the number of cores"),
    Setting("max_megapixels", ("CLIPSEARCH_MAX_MEGAPIXELS",), 100.0, parse_megapixels,
            "Skip (and report) images larger than this instead of decoding them.",
            flag="--max-megapixels"),
    Setting("shard", ("CLIPSEARCH_SHARD",), None, parse_shard,
            "Take only shard I of N (by a stable hash of each path): N machines fill one server "
            "collection with no overlap.", flag="--shard", default_text="none: all files"),
    Setting("precision", ("CLIPSEARCH_PRECISION",), "fp32", parse_precision,
            "Image vectors from the fp32 model, or from its int8-quantized ONNX image tower (about 2x faster "
            "on a CPU, vectors slightly different). A collection holds one precision: it is part of the "
            "collection's model identity. Unset, ingest and serve use an existing collection's; set, both "
            "refuse a collection of the other.", flag="--precision"),
    Setting("known_bad", ("CLIPSEARCH_KNOWN_BAD",), True, parse_bool,
            "Remember files that could not be used, so that a re-run reports them without reading "
            "them again (until they change).", default_text="on"),
    Setting("hnsw_min_points", ("CLIPSEARCH_HNSW_MIN_POINTS",), 20_000, parse_points,
            "The embedded index builds its HNSW search graph once a collection holds this many points "
            "(below, an exact scan is about as fast); ingest builds it at the end of a run, with no progress "
            "meanwhile (about 25 s per 100k images on 2 cores), and says what the last build took."),
    # queries and the model cache
    Setting("cache_dir", ("CLIPSEARCH_CACHE_DIR",), default_cache_dir, parse_path,
            "Where exported text and image towers, model identities, query vectors and known bad files are kept.",
            default_text="the user cache dir (~/.cache/clipsearch)"),
    Setting("fast_path", ("CLIPSEARCH_FAST_PATH",), True, parse_bool,
            "Answer text queries with the cached ONNX text tower (no torch), encode images on a CPU with "
            "the cached ONNX image tower (exported once), and take the model's identity from the cache when "
            "an ingest has nothing to embed. Off: torch everywhere.", default_text="on"),
    Setting("query_cache", ("CLIPSEARCH_QUERY_CACHE",), True, parse_bool,
            "Answer repeated queries from a small cache of query vectors.", default_text="on"),
    # clipsearch serve, and the thin clients that answer through it
    Setting("server", ("CLIPSEARCH_SERVER",), None, parse_server_url,
            "A running `clipsearch serve` (http://host:8765): search, status and duplicates answer through it, "
            "loading no model and opening no index here. An --index or --collection flag given without "
            "--server works on that index here instead (a flag wins).", flag="--server",
            default_text="none: work locally"),
    Setting("token", ("CLIPSEARCH_TOKEN",), None, parse_token,
            "The serve token: required by every endpoint but health. Required to bind an address other than "
            "loopback (generated and printed once as a login URL when not given); sent by the thin clients. "
            "Never printed.", flag="--token", secret=True),
    Setting("host", ("CLIPSEARCH_HOST",), "127.0.0.1", parse_host,
            "The address serve binds: loopback unless asked; any other needs a token.", flag="--host"),
    Setting("port", ("CLIPSEARCH_PORT",), 8765, parse_port, "The port serve listens on.", flag="--port"),
    Setting("cors_origins", ("CLIPSEARCH_CORS_ORIGINS",), (), parse_origins,
            "Origins (comma-separated) whose pages may call serve's API from a browser; CORS is closed "
            "otherwise.", flag="--cors-origin", default_text="none"),
    Setting("upload_megabytes", ("CLIPSEARCH_UPLOAD_MEGABYTES",), 20.0, parse_megabytes,
            "The largest query image serve accepts as an upload.", flag="--upload-megabytes"),
    Setting("thumbnail_megabytes", ("CLIPSEARCH_THUMBNAIL_MEGABYTES",), 2000.0, parse_megabytes,
            "Disk space serve's thumbnail cache may use; beyond it, the thumbnails served least recently "
            "are removed.", flag="--thumbnail-megabytes"),
    Setting("rescan_minutes", ("CLIPSEARCH_RESCAN_MINUTES",), 60.0, parse_minutes,
            "How often serve --watch walks its folders again, as the first scan does: it finds the changes no "
            "event reported (made from another machine on a network share, a share mounted again, events the "
            "kernel dropped in a burst) and watches the folders anew. 0: never.", flag="--rescan", default_text="60"),
    # output
    Setting("progress_seconds", ("CLIPSEARCH_PROGRESS_SECONDS",), None, parse_interval,
            "Seconds between progress updates.", default_text="0.25 on a terminal, 10 into a log"),
    Setting("timings", ("CLIPSEARCH_TIMINGS",), None, parse_path,
            "Write each search's phase timings to this JSON file (for bench/cold_query.py).",
            default_text="none"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

# Read by docker-compose.yml, not by clipsearch: set in a user's shell for compose, they
# are not typos of a setting.
COMPOSE_VARIABLES = frozenset({"CLIPSEARCH_PHOTOS", "CLIPSEARCH_MODELS", "CLIPSEARCH_MODEL_NAME",
                               "CLIPSEARCH_PUBLISH"})


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """A warning line for each CLIPSEARCH_ variable set that is no setting: a misspelt
    one (INDX for INDEX) otherwise leaves its setting at the default, silently, and a
    nightly ingest writes to another index than the one meant."""
    import difflib

    env = os.environ if env is None else env
    known = sorted(v for s in SETTINGS for v in s.env if v.startswith("CLIPSEARCH_"))
    lines = []
    for variable in sorted(env):
        if variable.startswith("CLIPSEARCH_") and variable not in known and variable not in COMPOSE_VARIABLES:
            close = difflib.get_close_matches(variable[11:], [v[11:] for v in known], n=1, cutoff=0.7)
            hint = f" (did you mean CLIPSEARCH_{close[0]}?)" if close else ""
            lines.append(f"warning: {variable} is not a clipsearch setting{hint}: ignored")
    return lines


def _first_set(setting: Setting, env: Mapping[str, str] | None) -> tuple[str, str] | None:
    """(variable, raw text) of the first of the setting's variables that is set; an
    empty value counts as unset."""
    env = os.environ if env is None else env
    return next(((v, env[v]) for v in setting.env if env.get(v)), None)


def env_value(name: str, env: Mapping[str, str] | None = None) -> Any:
    """The parsed value of setting `name` from the environment, or None when no
    variable of it is set. A bad value is a one-line error naming the variable."""
    setting = BY_NAME[name]
    found = _first_set(setting, env)
    if found is None:
        return None
    variable, raw = found
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise UsageError(f"{variable}={shown_raw(setting, raw)} {exc}") from None


def where_set(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """`VARIABLE=value` of the variable that sets `name`, for messages; None when
    the default applies. Secret values are hidden."""
    setting = BY_NAME[name]
    found = _first_set(setting, env)
    if found is None:
        return None
    variable, raw = found
    return f"{variable}={'(hidden)' if setting.secret else raw}"


def value(name: str, given: Any = None, env: Mapping[str, str] | None = None) -> Any:
    """Setting `name`: the flag `given` (None: not given), else the environment, else the default."""
    if given is not None:
        return given
    from_env = env_value(name, env)
    return from_env if from_env is not None else BY_NAME[name].default_value


def enabled(name: str) -> bool:
    """An on/off setting such as fast_path, read now (tests and benchmarks flip them)."""
    return bool(value(name))


def cache_root() -> Path:
    """The user cache dir clipsearch keeps its model cache and records in."""
    return Path(value("cache_dir"))


# -- the settings every command shares -----------------------------------------------------------

def valid_collection_name(name: str) -> bool:
    """Not a path (an embedded index keeps a collection in a folder of its name), and
    printable: a line break in a name forged lines of status."""
    return bool(name) and "/" not in name and not name.startswith(".") and name.isprintable()


# Settings that say which index, collection, model, server or token: an empty one (a
# flag or a Settings.resolve argument) is a script's or caller's unset variable, and the
# environment's or the default place instead would write to (or search, or log in to)
# another one than meant ("" as an index was the current directory).
NAMED_PLACES = frozenset({"index", "collection", "model", "server", "token"})


def _given_place(name: str, given: Any) -> Any:
    """An index, collection or model argument of Settings.resolve as text: a path
    object as its path; an empty one refused."""
    if isinstance(given, os.PathLike):
        given = os.fsdecode(given)
    if isinstance(given, str) and not given.strip():
        raise UsageError(f"Settings: {name}={given!r} is empty; give one, or leave it out (None) "
                              f"for {BY_NAME[name].env[0]} or the default")
    return given


# A server's address without its scheme: `qdrant:6333`, `10.0.0.5:6333`, `[::1]:6333`.
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})")


def refuse_host_port(index: str, where: str) -> None:
    """An index given as HOST:PORT, which no folder bears: a server's address without
    http://, which as a folder name would quietly become a new embedded index in the
    current directory. `where`: the flag or variable that gave it, for the message."""
    found = _HOST_PORT.fullmatch(index)
    if found is None or not 0 < int(found.group(1)) < 65536 or os.path.exists(os.path.expanduser(index)):
        return
    raise UsageError(f"{where} {index!r} looks like a server's HOST:PORT, not an index folder: give "
                          f"http://{index} for a Qdrant server (https:// behind TLS), or ./{index} for a new "
                          "folder of that name")


def _table_default(name: str) -> Any:
    """A Settings field whose default is the table's row of the same name."""
    return field(default_factory=lambda: BY_NAME[name].default_value, repr=not BY_NAME[name].secret)


@dataclass(frozen=True)
class Settings:
    """Which model, which index and collection, and how to reach it. Built by
    `Settings.resolve` from flags, then the environment, then the defaults: the CLI
    and the Python API agree on what an unset option means."""

    model: str = _table_default("model")
    index: str = _table_default("index")
    collection: str = _table_default("collection")
    device: str = _table_default("device")
    api_key: str | None = _table_default("api_key")  # secret: never printed (not in repr)
    retry_seconds: float = _table_default("retry_seconds")
    grpc: bool = _table_default("grpc")
    grpc_port: int = _table_default("grpc_port")
    # A new server collection's layout (None: Qdrant's default) and the search of a quantized one.
    shards: int | None = _table_default("shards")
    replicas: int | None = _table_default("replicas")
    write_consistency: int | None = _table_default("write_consistency")
    quantization: str | None = _table_default("quantization")
    vectors_on_disk: bool | None = _table_default("vectors_on_disk")
    hnsw_m: int | None = _table_default("hnsw_m")
    hnsw_ef_construct: int | None = _table_default("hnsw_ef_construct")
    oversampling: float = _table_default("oversampling")
    # False when neither --model nor CLIPSEARCH_MODEL named the model: a command that
    # opens an existing collection then uses the model it records (index/adopt.py).
    model_named: bool = field(default=True, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Settings(...) built by hand refuses what resolve() refuses: an empty index,
        collection or model (an index "" was the current directory, a collection "" the
        index folder itself, whose damage message then advised deleting it whole)."""
        for name in ("index", "collection", "model"):
            _given_place(name, getattr(self, name))
        if not valid_collection_name(self.collection):
            raise UsageError(f"collection name {self.collection!r} is not valid (--collection / "
                                  "CLIPSEARCH_COLLECTION)")

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None, **flags: Any) -> "Settings":
        """Build settings from explicit flags (None = not given), then env, then defaults."""
        names = [f.name for f in fields(cls) if f.name in BY_NAME]
        unknown = set(flags) - set(names)
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        flags = {name: _given_place(name, given) if name in NAMED_PLACES else given for name, given in flags.items()}
        values = {name: value(name, flags.get(name), env) for name in names}
        from_env = _first_set(BY_NAME["index"], env)
        refuse_host_port(values["index"], "--index" if flags.get("index") is not None or from_env is None
                         else from_env[0])
        named = flags.get("model") is not None or env_value("model", env) is not None
        return cls(**values, model_named=named).validated()

    def validated(self) -> "Settings":
        """Checks what the table's parsers cannot see (a flag or a caller may give any
        value) and puts an embedded index's path in its one absolute spelling."""
        checks = {"device": parse_device, "retry_seconds": parse_interval, "grpc_port": parse_port}
        changes: dict[str, Any] = {}
        for name, parse in checks.items():
            given = getattr(self, name)
            try:
                changes[name] = parse(str(given))
            except ValueError as exc:
                variable = BY_NAME[name].env[0]
                flag = BY_NAME[name].flag
                where = f"{flag} / {variable}" if flag else variable
                raise UsageError(f"{name.replace('_', ' ')} {given!r} {exc} ({where})") from None
        if isinstance(self.grpc, str):
            try:
                changes["grpc"] = parse_bool(self.grpc)
            except ValueError as exc:
                raise UsageError(f"CLIPSEARCH_GRPC={self.grpc!r} {exc}") from None
        if not valid_collection_name(self.collection):
            raise UsageError(
                f"collection name {self.collection!r} is not valid (--collection / CLIPSEARCH_COLLECTION)"
            )
        settings = replace(self, **changes)
        if settings.backend == "edge":
            settings = replace(settings, index=str(Path(settings.index).expanduser().resolve()))
        return settings

    @property
    def backend(self) -> str:
        """`server` for http(s) URLs, `memory` for :memory:, else `edge` (a folder)."""
        if self.index.startswith(("http://", "https://")):
            return "server"
        if self.index == MEMORY_INDEX:
            return "memory"
        return "edge"

    def with_overrides(self, **changes: Any) -> "Settings":
        if "model" in changes:
            changes.setdefault("model_named", True)
        return replace(self, **changes).validated()
