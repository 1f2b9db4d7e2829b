"""Start, run and stop one serve process: open the index, warm the encoder, bind,
watch, answer until told to stop, and leave everything committed."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import sys
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from clipsearch import config
from clipsearch.config import Settings
from clipsearch.errors import ClipsearchError, Terminated

from .security import check_bind, choose_token


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    watch: list[str] = field(default_factory=list)
    exclude: tuple[str, ...] = ()  # --watch skips these, as ingest --exclude does
    cors_origins: tuple[str, ...] = ()
    upload_megabytes: float = 20.0
    thumbnail_megabytes: float = 2000.0
    workers: int = 1
    batch_size: int = 32
    allow_missing: bool = False  # the first scan's prune: ingest --allow-missing
    rescan_minutes: float = 60.0  # --watch walks its folders again this often (0: never)
    quiet: bool = False


def say(message: str) -> None:
    print(f"clipsearch serve: {message}", file=sys.stderr, flush=True)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is a one-line error."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio turns Nagle off only on connections of a socket
    # that says it is TCP; without it every response on a kept-alive connection waited
    # 40 ms for the client's delayed ACK. TCP_NODELAY here too, which accepted
    # connections inherit.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ClipsearchError(f"cannot listen on {host}:{port} (--host/--port): {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def thumbnail_folder(settings: Settings) -> Path:
    key = hashlib.sha256(f"{settings.index}\0{settings.collection}".encode()).hexdigest()[:16]
    return config.cache_root() / "thumbnails" / key


def run(settings: Settings, options: ServeOptions) -> None:
    # Before torch loads (the watcher's model, an uploaded query image): its OpenMP
    # threads sleep at barriers instead of spinning, so that queries, decoding and
    # the HTTP server get the cores they wait for (2 cores: spinning threads of two
    # runtimes starve each other).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from clipsearch.index import collection_precision, open_index, with_collection_model

    from .files import Thumbnails
    from .security import Guard
    from .service import SearchService, load_encoder
    from .uploads import UploadDecoder

    token, generated = choose_token(options.host, options.token)
    check_bind(options.host, token, options.cors_origins)
    roots = []
    if options.watch:
        from clipsearch.ingest.pipeline import resolve_roots

        roots = resolve_roots(options.watch)
    index = open_index(settings, create=bool(roots), pin=True)
    service: SearchService | None = None
    uploads: UploadDecoder | None = None
    sweeper: ThumbnailSweeper | None = None
    try:
        if not roots and not index.exists():
            raise ClipsearchError(f"collection {settings.collection!r} does not exist at {index.location}; "
                                  "ingest a folder first, or give --watch DIR")
        stored = index.stored_identity()  # None where a watched ingest is to make the collection
        settings = with_collection_model(settings, stored, say if not options.quiet else None)
        # CLIPSEARCH_PRECISION where set (checked against the collection below, as ingest
        # checks it: never a silent switch to the other precision); else an existing
        # collection's; else the default.
        precision = config.env_value("precision") or collection_precision(stored, config.value("precision"),
                                                                           settings.collection)
        encoder = load_encoder(settings, say if not options.quiet else (lambda _: None), busy=bool(roots),
                               precision=precision)
        if index.exists():
            index.check_identity(encoder.identity)
        sock = bind(options.host, options.port)
        url = url_of(options.host, sock.getsockname()[1])
        service = SearchService(settings, index, encoder, watching=bool(roots))
        if hasattr(index, "announce"):  # others opening this embedded index are told where to ask instead
            # Said to every command that finds the index taken: search, status and duplicates take --server.
            index.announce(f"held by `clipsearch serve` (pid {os.getpid()}); search it, see its status or find "
                           f"duplicates with --server {url} (or CLIPSEARCH_SERVER={url}); to ingest, reindex or "
                           "migrate, stop serve first (serve --watch FOLDER ingests a folder as it changes)")
        uploads = UploadDecoder(config.value("max_megapixels"))
        from importlib.metadata import version

        from .app import create_app

        thumbnails = Thumbnails(thumbnail_folder(settings), int(options.thumbnail_megabytes * 1e6))
        port = sock.getsockname()[1]
        guard = Guard(token, port, store=thumbnail_folder(settings).parent.parent / "sessions" / f"{port}.json")
        app = create_app(service, guard, thumbnails, uploads,
                         int(options.upload_megabytes * 1e6), options.cors_origins, version("clipsearch"))
        # The thumbnails of photos deleted or changed while serve was down go, in the background.
        sweeper = ThumbnailSweeper(service, thumbnails, every=None if roots else options.rescan_minutes * 60,
                                   quiet=options.quiet).start()
        if roots:
            service.watcher = start_watcher(service, roots, options, thumbnails, sweeper)
        points = service.status().get("points", 0)
        # Bound to every address, the machine's name is what another machine opens;
        # 127.0.0.1 works on this one.
        wildcard = options.host in ("0.0.0.0", "::", "")
        outside = url_of(socket.gethostname(), sock.getsockname()[1]) if wildcard else url
        said = f"{outside}/ (every address of this machine; {url}/ on it)" if wildcard else f"{url}/"
        say(f"serving collection {settings.collection!r} at {index.location} ({points} images) on {said}")
        if generated:
            # Printed once, here: the token is in no log and no page.
            say(f"open {outside}/login?token={token} (a token was generated, a new one each start: give --token "
                "or CLIPSEARCH_TOKEN to keep one" + (f"; on this machine {url} in place of {outside}" if wildcard
                                                     else "") + ")")
        serve_forever(app, sock)
    finally:
        if sweeper is not None:
            sweeper.stop()
        if service is not None and service.watcher is not None:
            # The batch being encoded is committed; an HNSW build in a child process
            # is not waited for: it dies with this process, and the next start cleans
            # up its copy and builds again.
            service.watcher.stop(timeout=30)
        if uploads is not None:
            uploads.close()
        with (service.lock if service is not None else nullcontext()):
            index.close()


def start_watcher(service, roots: list[str], options: ServeOptions, thumbnails=None, sweeper=None):
    from clipsearch.ingest import IngestOptions, Ingestor

    from .files import ForgettingIndex
    from .watch import FolderWatcher

    # The points the ingest deletes or writes anew take their thumbnails with them.
    index = ForgettingIndex(service.index, thumbnails) if thumbnails is not None else service.index
    # prune: a live index forgets the files deleted while it was down.
    ingestor = Ingestor(service.encoder, index,
                        IngestOptions(batch_size=options.batch_size, workers=options.workers, exclude=options.exclude,
                                      max_megapixels=config.value("max_megapixels"), quiet=options.quiet,
                                      optimize=False, prune=True, allow_missing=options.allow_missing,
                                      shard=None))  # a live index is all of the library, CLIPSEARCH_SHARD or not
    walks = [0]

    def idle(watcher) -> None:
        if sweeper is not None and watcher.rescans != walks[0]:
            # After a walk: what another writer deleted or changed (a Qdrant server's
            # other clients) loses its thumbnails too.
            walks[0] = watcher.rescans
            sweeper.request()
        build_search_index(service, watcher)

    watcher = FolderWatcher(roots, ingestor, on_idle=idle, rescan_every=options.rescan_minutes * 60)
    watcher.start()
    return watcher


class ThumbnailSweeper:
    """Removes, on a thread of its own, the cached thumbnails of points the index no
    longer holds or holds for a newer version of the photo (Thumbnails.sweep): at
    start, at request (after each walk of --watch), and every `every` seconds if given
    (serve without --watch: another writer may change the index). The index is asked
    a batch of ids at a time, each call taking the engine's lock briefly: queries go on."""

    def __init__(self, service, thumbnails, every: float | None = None, quiet: bool = False):
        self.service = service
        self.thumbnails = thumbnails
        self.every = every or None
        self.quiet = quiet
        self.sweeps = 0  # finished, for tests
        self.removed = 0
        self._asked = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "ThumbnailSweeper":
        self._asked.set()  # the first sweep at once
        self._thread = threading.Thread(target=self._run, name="clipsearch-thumbnails", daemon=True)
        self._thread.start()
        return self

    def request(self) -> None:
        self._asked.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._asked.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _lookup(self, ids: list[str]) -> dict[str, dict]:
        if self._stopping.is_set():
            raise _Stopping
        index = self.service.index
        if not index.exists():  # no collection (yet): none of these points is there
            return {}
        return {record.id: record.payload for record in index.retrieve(ids)}

    def _run(self) -> None:
        while True:
            self._asked.wait(self.every)
            self._asked.clear()
            if self._stopping.is_set():
                return
            try:
                removed = self.thumbnails.sweep(self._lookup)
            except _Stopping:
                return
            except Exception as exc:  # the index unreachable now: nothing is removed, the next sweep tries
                say(f"could not check the thumbnail cache against the index: {type(exc).__name__}: {exc}")
                continue
            self.removed += removed
            self.sweeps += 1
            if removed and not self.quiet:
                say(f"removed {removed} cached thumbnail{'s' * (removed != 1)} of photos no longer in the index "
                    "or changed since")


class _Stopping(Exception):
    pass


def build_search_index(service, watcher) -> None:
    """After the first scan and after each batch: build the HNSW graph once many points
    lack it, in a child process on a copy of the shard (queries go on meanwhile)."""
    inner = service.index.inner
    if inner.backend != "edge" or not hasattr(inner, "optimize_offline"):
        return
    from clipsearch.index.edge import hnsw_min_points

    least = hnsw_min_points()

    with service.lock:
        facts = inner.describe()
    unindexed = facts["points"] - facts.get("indexed_vectors", 0)
    if facts["points"] >= least and unindexed >= max(least // 4, facts["points"] // 10):
        say(f"building the HNSW search index over {facts['points']} images (queries go on meanwhile)...")
        inner.optimize_offline(exclusive=service.lock)


def serve_forever(app, sock: socket.socket) -> None:
    import uvicorn

    from . import connections

    # Measured now, with the index, the model and the watcher open: what the cap leaves room for.
    limit = connections.descriptor_limit()
    protocol = connections.protocol_class(connections.header_seconds(),
                                          connections.connection_cap(limit, connections.descriptors_in_use()))
    # No access log: uvicorn's prints the query string, which carries /login's token.
    config_ = uvicorn.Config(app, access_log=False, log_level="warning", timeout_graceful_shutdown=5,
                             server_header=False, date_header=True, http=protocol,
                             backlog=connections.backlog_for(limit))
    logging.getLogger("clipsearch.serve").setLevel(logging.INFO)
    # A malformed upload is the client's 400; the parser's own account of it is no server event.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    server = uvicorn.Server(config_)
    hung_up = _HangupStops(server)
    try:
        server.run(sockets=[sock])
    finally:
        hung_up.restore()
    if hung_up:
        raise Terminated(signal.SIGHUP)  # after the graceful stop: the CLI says it and exits 129


class _HangupStops:
    """uvicorn stops gracefully on SIGINT and SIGTERM only; the terminal or SSH session
    closing (SIGHUP) would end serve where it stood, with a watched batch in hand. Here
    SIGHUP asks uvicorn to stop as for SIGTERM, unless it is ignored (`nohup`).
    True once it came."""

    def __init__(self, server):
        self.came = False
        self.previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGHUP) not in (signal.SIG_IGN, None):
            def hang_up(signum, frame):
                self.came = True
                server.handle_exit(signum, frame)  # uvicorn raises it again once stopped: back here

            self.previous = signal.signal(signal.SIGHUP, hang_up)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGHUP, self.previous)

    def __bool__(self) -> bool:
        return self.came
