"""qdrant-client backend: a Qdrant server (a shared index) or ':memory:' (tests).

Every call to a server is retried with exponential backoff for at most `retry_seconds`
(10 s until the server has answered once), then fails with one line naming the URL.
The budget is the outage's, not each call's: calls that fail together (an ingest's
queued writes) share it, and once one has given up the next fails at its first refused
try. An outage of a server that had answered is said on stderr while it is waited for.
A refused API key, and an answer that no retry changes (TLS to a plain-HTTP port, the
gRPC port given as the REST URL), are not retried. The key is handed to the client and
never appears in a message.

Writes (upsert, copied points) go to the collection the name meant at the first write,
and each is confirmed after it by one read of that collection: a `clipsearch reindex`
that is switching the name away marks it first (prepare_switch), so a write the
confirmation passes went in before the reindex's last catch-up, which copies it; one
that finds the mark, or the collection gone, fails with one line, and the command run
again writes into the collection the name means then.
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from ..encoders.identity import ModelIdentity
from ..encoders.vectors import l2_normalize
from ..errors import ClipsearchError
from ..photo_facts import joined_parts
from ..progress import stderr_line
from .base import DEFAULT_HNSW_EF, PAYLOAD_INDEXES, Hit, Index, Record, Where, under_value
from .layout import Layout, cluster_facts, layout_facts
from .versions import is_version_of, version_name

T = TypeVar("T")
METADATA_KEY = "clipsearch"
# How long calls are retried before the server has answered once (see _call).
FIRST_CONTACT_SECONDS = 10.0
# Qdrant's default optimizer indexing_threshold (KB of vectors per segment).
QDRANT_INDEXING_THRESHOLD = 10_000
# How long an outage lasts before a run says it is waiting: a lone 503 retried at once is no news.
ANNOUNCE_AFTER_SECONDS = 1.0
# Why a TLS handshake fails where the port answers plain HTTP (OpenSSL's reasons, old and new).
PLAIN_HTTP_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                                "UNKNOWN_PROTOCOL"})

# ':memory:' collections live as long as the process: every Index opened on
# ':memory:' in one process shares this client, so an ingest and a later search in
# the same process (a notebook, click's CliRunner) see the same points.
_memory_client = None
_memory_lock = threading.Lock()


def _shared_memory_client():
    global _memory_client
    with _memory_lock:
        if _memory_client is None:
            from qdrant_client import QdrantClient

            _memory_client = QdrantClient(location=":memory:")
        return _memory_client


_warned_plain_http: set[str] = set()


def _warn_if_key_unencrypted(location: str) -> None:
    """One line on stderr, once per URL, when the API key would cross a network in
    clear text: an http:// URL to another machine (loopback is fine: the compose setup)."""
    from urllib.parse import urlparse

    parsed = urlparse(location)
    if parsed.scheme != "http" or location in _warned_plain_http:
        return
    host = parsed.hostname or ""
    if host == "localhost" or host.startswith("127.") or host == "::1":
        return
    _warned_plain_http.add(location)
    sys.stderr.write(f"clipsearch: warning: the API key is sent unencrypted to {location}; "
                     "use an https:// URL (README: Share an index)\n")


def _server_error_detail(exc) -> str:
    """The server's own reason for refusing a request (Qdrant answers
    {"status": {"error": "..."}}), on one line, or nothing."""
    try:
        detail = exc.structured()["status"]["error"]
    except Exception:  # not JSON, or another shape: the status line is all there is
        return ""
    return f": {' '.join(str(detail).split())[:300]}"


class _Transient(Exception):
    """A failure worth retrying: the server is down, slow or overloaded."""


class _NotFound(ClipsearchError):
    """The server answered that the collection (or point route) is not there."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it was raised from, innermost last."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


class ClientIndex(Index):
    def __init__(self, location: str, collection: str, api_key: str | None = None,
                 retry_seconds: float = 30.0, timeout: int = 30, grpc: bool = False, grpc_port: int = 6334,
                 layout: Layout | None = None, oversampling: float = 2.0):
        super().__init__(location, collection)
        self.retry_seconds = retry_seconds
        self.layout = layout or Layout()  # how a collection this index creates is laid out
        self.oversampling = oversampling
        self._layout_checked = False
        if location == ":memory:":
            self.backend = "memory"
            self.client = _shared_memory_client()
        else:
            from qdrant_client import QdrantClient

            self.backend = "server"
            with warnings.catch_warnings():
                # qdrant-client's two-line UserWarning for any key over http; ours below
                # is one line, and only where the key leaves this machine.
                warnings.filterwarnings("ignore", message="Api key is used with an insecure connection")
                # A URL without a port means Qdrant's REST port, not 80/443.
                self.client = QdrantClient(url=location, api_key=api_key, timeout=timeout, prefer_grpc=grpc,
                                           grpc_port=grpc_port, check_compatibility=False)
            if api_key:
                _warn_if_key_unencrypted(location)
        self.grpc = grpc
        # What messages name: over gRPC the URL's port is not the one being talked to.
        self.where = f"{location} (gRPC port {grpc_port})" if grpc and self.backend == "server" else location
        self.grpc_port = grpc_port
        self._key_given = bool(api_key)
        self._exists: bool | None = None
        self._reached = False  # the server has answered a call of this process
        self._closed = False  # by close(): every later call says so (:memory:'s client stays open for others)
        self._last_info: tuple[float, Any] | None = None  # (when, the collection info read last): _recent_info
        # The outage under way: when its first call failed, when one failed last, whether it was said.
        self._outage_lock = threading.Lock()
        self._outage_since: float | None = None
        self._outage_last = 0.0
        self._outage_said = False
        self._writes_to: str | None = None  # the collection writes go to (_write_target)
        self._writer_identity: ModelIdentity | None = None  # the model of the vectors this index writes
        self._switch_marked: str | None = None  # a collection this index marked as switching (prepare_switch)
        # The command that finishes the reindex preparing a switch (ingest/reindex.py): the
        # switching mark names it, for the ingests it refuses should that reindex be killed.
        self.switch_command: str | None = None
        self.points_written = 0  # by this index, confirmed: what a failure says is kept

    # -- retries ----------------------------------------------------------------
    def _require_open(self) -> None:
        if self._closed:
            raise ClipsearchError(f"index {self.where} (collection {self.name!r}) is closed: open it again "
                                  "(open_index) to use it")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        self._require_open()
        if self.backend == "memory":
            return fn()
        # Until the server has answered once, a wrong URL or a server that is not up is
        # the likely cause: say so within seconds. Once it has answered, a failure is a
        # server restarting or a network blip mid-run: wait for it as long as allowed.
        patience = self.retry_seconds if self._reached else min(self.retry_seconds, FIRST_CONTACT_SECONDS)
        attempt = 0
        while True:
            try:
                result = fn()
            except Exception as exc:
                error = self._classify(exc)
                if not isinstance(error, _Transient):
                    raise error from exc
                attempt += 1
                time.sleep(self._wait_out(what, error, patience, attempt))
                continue
            self._answered()
            return result

    def _wait_out(self, what: str, error: _Transient, patience: float, attempt: int) -> float:
        """How long to wait before the next try of a call that failed; raises once the
        outage has lasted `patience`. The outage, not the call, holds the clock: a call
        that fails within `patience` of another's failure is part of the same one, so
        an ingest's queued write does not wait the whole budget again after the first
        has given up."""
        detail = str(error).splitlines()[0] if str(error) else type(error.__cause__ or error).__name__
        now = time.monotonic()
        with self._outage_lock:
            if self._outage_since is None or now - self._outage_last > patience:
                self._outage_since, self._outage_said = now, False
            self._outage_last = now
            lasted = now - self._outage_since
            say = self._reached and not self._outage_said and lasted >= ANNOUNCE_AFTER_SECONDS
            if say:
                self._outage_said = True
        if lasted >= patience:
            raise ClipsearchError(
                f"Qdrant server {self.where} is unreachable ({what} failed after {patience:g} s of retries: "
                f"{detail}); {self._what_is_kept()}") from None
        if say:  # a progress line that stops moving says nothing of why
            stderr_line(f"waiting for Qdrant server {self.where}: {what} failed ({detail}); retrying for up to "
                 f"{patience:g} s")
        backoff = min(8.0, 0.25 * 2 ** (attempt - 1))
        return min(backoff, patience - lasted)  # the last wait ends at the deadline, not up to 8 s past it

    def _answered(self) -> None:
        self._reached = True
        if self._outage_since is None:
            return
        with self._outage_lock:
            said, self._outage_since, self._outage_said = self._outage_said, None, False
        if said:
            stderr_line(f"Qdrant server {self.where} answers again")

    def _what_is_kept(self) -> str:
        if self.points_written:
            return (f"the {self.points_written} points this run wrote before are kept: run it again once the server "
                    "answers to go on from there")
        return "run it again once the server answers"

    def _classify(self, exc: Exception) -> Exception:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        if isinstance(exc, UnexpectedResponse):
            status = exc.status_code or 0
            if status in (401, 403):
                return ClipsearchError(self._key_refused(f"HTTP {status}"))
            if status == 429 or status >= 500:
                return _Transient(str(exc))
            kind = _NotFound if status == 404 else ClipsearchError
            return kind(f"Qdrant server {self.location}: HTTP {status} {exc.reason_phrase}"
                        + _server_error_detail(exc))
        wrong = self._wrong_protocol(exc)
        if wrong is not None:
            return wrong
        if isinstance(exc, ResponseHandlingException):
            source = getattr(exc, "source", None)
            if source is not None and not self._is_transport_error(source):
                return self._unreadable_answer(source)
            return _Transient(str(exc))
        if isinstance(exc, json.JSONDecodeError):
            return self._unreadable_answer(exc)
        if self._is_transport_error(exc):
            return _Transient(str(exc))
        grpc_error = self._classify_grpc(exc)
        return exc if grpc_error is None else grpc_error

    def _key_refused(self, how: str) -> str:
        if not self._key_given:
            return (f"Qdrant server {self.where} asks for an API key and none was given ({how}); set "
                    "QDRANT_API_KEY")
        return f"Qdrant server {self.where} refused the API key ({how}); check QDRANT_API_KEY"

    def _wrong_protocol(self, exc: Exception) -> ClipsearchError | None:
        """A port that answers in another protocol than the URL asks for: no retry
        changes that. An https:// URL to a plain-HTTP port fails the TLS handshake; an
        http:// URL to Qdrant's gRPC port (HTTP/2 only) gets bytes that are no HTTP/1.1
        status line; a certificate that is not trusted stays so."""
        import ssl

        from h11 import RemoteProtocolError as NotHttp11  # h11 comes with httpx

        for link in _causes(exc):
            if isinstance(link, ssl.SSLCertVerificationError):
                return ClipsearchError(f"{self.location}: the server's TLS certificate was not accepted "
                                       f"({link.verify_message}); check the host name in the URL and the certificate")
            if isinstance(link, ssl.SSLError) and link.reason in PLAIN_HTTP_REASONS:
                plain = "http://" + self.location.split("://", 1)[-1]
                return ClipsearchError(f"{self.location} does not answer TLS (SSL {link.reason}): that port speaks "
                                       f"plain HTTP; use {plain} instead of https://")
            if isinstance(link, NotHttp11) and str(link).startswith(("illegal", "no response line")):
                return ClipsearchError(f"{self.location} answered, but not in the HTTP/1.1 of Qdrant's REST API "
                                       f"({str(link).split(':')[0]}): is that Qdrant's gRPC port (6334)? Give the "
                                       "REST port (6333) in the URL, or --grpc to talk gRPC")
        return None

    def _unreadable_answer(self, source: Exception) -> ClipsearchError:
        """A 200 whose body is not what Qdrant sends: another web service on that port,
        or a server too old for this client. Retrying cannot help."""
        return ClipsearchError(f"{self.location} answered, but not as a Qdrant server this client can read "
                               f"({type(source).__name__}); check the URL and the server's version")

    @staticmethod
    def _is_transport_error(exc: Exception) -> bool:
        """The request did not get through: worth another try."""
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return True
        try:
            import httpx
        except ImportError:  # pragma: no cover - httpx comes with qdrant-client
            return False
        return isinstance(exc, httpx.TransportError)

    def _classify_grpc(self, exc: Exception) -> Exception | None:
        try:
            import grpc
        except ImportError:  # pragma: no cover - grpcio comes with qdrant-client
            return None
        if not isinstance(exc, grpc.RpcError) or not hasattr(exc, "code"):
            return None
        code = exc.code()
        details = str(exc.details() or "")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return ClipsearchError(self._key_refused(f"gRPC {code.name}"))
        if code == grpc.StatusCode.UNAVAILABLE and any(
                sign in details for sign in ("Failed parsing HTTP/2", "Trying to connect an http1.x server")):
            # an HTTP/1.1 server on that port (Qdrant's REST API): no retry changes that
            return ClipsearchError(f"Qdrant server {self.where} answered, but not in the HTTP/2 of gRPC: is port "
                                   f"{self.grpc_port} Qdrant's REST port (6333)? gRPC is on 6334 "
                                   "(CLIPSEARCH_GRPC_PORT where it is mapped elsewhere), or use --rest")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED):
            return _Transient(f"gRPC {code.name}: {details}")
        kind = _NotFound if code == grpc.StatusCode.NOT_FOUND else ClipsearchError
        return kind(f"Qdrant server {self.where}: gRPC {code.name}: {details}")

    # -- collection -------------------------------------------------------------
    def exists(self) -> bool:
        self._require_open()  # the answer is kept: a closed index would give it without a call
        if self._exists is None or not self._exists:
            self._exists = bool(self._call("collection lookup", lambda: self.client.collection_exists(self.collection)))
            if not self._exists and self.collection == self.name:
                self._exists = self._finish_switch()
        return self._exists

    def _finish_switch(self) -> bool:
        """A server's first switch of a name drops the collection that bore it before the
        name can become its version's alias (switch()). A reindex killed in between
        left the name on nothing; the version it was switching to says so in its
        metadata (`completes`), and whichever client finds the name missing first makes
        the alias. True when the name now exists."""
        from qdrant_client import models

        answer = self._call("list collections", lambda: self.client.get_collections())
        for candidate in sorted(c.name for c in answer.collections if is_version_of(c.name, self.name)):
            info = self._call("collection info", functools.partial(self.client.get_collection, candidate))
            if self._clipsearch_metadata(info).get("completes") != self.name:
                continue
            create = models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=candidate,
                                                                                 alias_name=self.name))
            try:
                self._call("finish a switch", functools.partial(self.client.update_collection_aliases,
                                                                change_aliases_operations=[create]))
                sys.stderr.write(f"clipsearch: {self.name!r} at {self.where} now means {candidate!r}, finishing "
                                 "a reindex that was stopped while it switched\n")
            except ClipsearchError:
                pass  # another client made it first
            return bool(self._call("collection lookup", lambda: self.client.collection_exists(self.name)))
        return False

    def stored_identity(self) -> ModelIdentity | None:
        if not self.exists():
            return None
        metadata = self._clipsearch_metadata(self._info())
        if "model" not in metadata:
            return None
        return ModelIdentity.from_dict(metadata["model"])

    def _info(self):
        info = self._call("collection info", lambda: self.client.get_collection(self.collection))
        self._last_info = (time.monotonic(), info)
        return info

    def _recent_info(self, seconds: float = 2.0):
        """The collection info read within `seconds` (the open's model check read it), else read now:
        a search asks for the unfinished-copy mark without one more request."""
        last = self._last_info
        return last[1] if last is not None and time.monotonic() - last[0] < seconds else self._info()

    @staticmethod
    def _clipsearch_metadata(info) -> dict:
        """A copy of what clipsearch keeps in the collection's metadata ({} if none)."""
        return dict((info.config.metadata or {}).get(METADATA_KEY) or {})

    def _create(self, identity: ModelIdentity) -> None:

        def create():
            self.client.create_collection(
                self.collection, **self.layout.create_arguments(identity.dim),
                metadata={METADATA_KEY: {"format": 1, "model": identity.to_dict()}},
            )
            self._create_payload_indexes(PAYLOAD_INDEXES)

        try:
            self._call("create collection", create)
            if self._pin_requested and self.collection == self.name:  # made by a pinned process (serve --watch)
                self._pinned, self._pin_checked = identity, time.monotonic()
        except Exception:  # the server's refusal arrives as a ClipsearchError naming its reason
            # Another writer created it between our check and our create ("already
            # exists"): fine if its model matches, which check_identity decides.
            self._exists = None
            if not self.exists():
                raise
            self.check_identity(identity)
            self.warn_if_layout_differs()
        self._exists = True

    # -- versions: a Qdrant alias is the name (versions.py) --------------------------
    def _aliases(self) -> dict[str, str]:
        answer = self._call("list aliases", lambda: self.client.get_aliases())
        return {alias.alias_name: alias.collection_name for alias in answer.aliases}

    def meant(self) -> str:
        return self._aliases().get(self.name, self.name)

    # How often a pinned index whose collection bears the name itself checks that the
    # name was not switched over to another model's vectors (see pin()).
    PIN_CHECK_SECONDS = 5.0
    _pinned: ModelIdentity | None = None
    _pin_checked = 0.0

    _pin_requested = False

    def pin(self) -> None:
        """Keep the collection the name means now (open_index(pin=True)). A version is
        kept by its own name, which no switch moves. A collection that bears the name
        itself cannot be kept so: the first switch of a name on a server replaces the
        collection with an alias (a collection cannot be renamed). So its model is
        noted, and every few seconds a search or write (require_collection) checks
        that it is still the one there: another model's vectors are refused, not
        searched with this model's queries or mixed with its writes."""
        self._pin_requested = True
        self.collection = self.meant()
        if self.collection == self.name and self.exists():
            self._pinned = self.stored_identity()
            self._pin_checked = time.monotonic()

    def require_collection(self) -> None:
        super().require_collection()
        self._check_pin()

    def _check_pin(self, always: bool = False) -> None:
        """Searches check every PIN_CHECK_SECONDS; writes (always) before each batch:
        another model's vectors must never be mixed with this one's."""
        if self._pinned is not None and (always or time.monotonic() - self._pin_checked >= self.PIN_CHECK_SECONDS):
            self._pin_checked = time.monotonic()
            now = self.stored_identity()
            if now is not None and not now.is_compatible_with(self._pinned):
                raise ClipsearchError(
                    f"collection {self.name!r} at {self.where} now holds {now.short()}'s vectors (switched by "
                    f"clipsearch reindex); this process runs {self._pinned.short()}: restart it with the new "
                    "model (--model, or neither --model nor CLIPSEARCH_MODEL: the collection's own)")

    def versions(self) -> list[str]:
        answer = self._call("list collections", lambda: self.client.get_collections())
        meant = self.meant()
        return sorted(c.name for c in answer.collections if c.name != meant and is_version_of(c.name, self.name))

    def version_facts(self) -> list[dict]:
        facts = []
        for name in self.versions():
            info = self._call("collection info", functools.partial(self.client.get_collection, name))
            ours = self._clipsearch_metadata(info)
            model, copy = ours.get("model"), ours.get("copying")
            facts.append({"collection": name, "model": model.get("name") if isinstance(model, dict) else None,
                          "image_fingerprint": model.get("image_fingerprint") if isinstance(model, dict) else None,
                          "unfinished": copy if isinstance(copy, dict) else None})
        return facts

    def point_name_at(self, target: str) -> None:
        from qdrant_client import models

        try:
            if self.exists():
                raise ClipsearchError(f"{self.name!r} at {self.where} exists; `clipsearch reindex` switches it")
            self._unmark_switching(target)  # a kept version, marked when the name was switched away from it
            create = models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=target,
                                                                                 alias_name=self.name))
            self._call("make the alias", lambda: self.client.update_collection_aliases(
                change_aliases_operations=[create]))
            self._exists = None
        finally:
            self.close()

    def unfinished_copy(self) -> dict | None:
        copy = self._clipsearch_metadata(self._recent_info()).get("copying") if self.exists() else None
        return copy if isinstance(copy, dict) else None

    def record_unfinished_copy(self, copy: dict | None) -> None:
        self._mark(copying=copy)

    def finished_copies(self) -> dict:
        """The migrates into the collection that finished, by source (edge.COPIED)."""
        copies = self._clipsearch_metadata(self._info()).get("copied") if self.exists() else None
        return copies if isinstance(copies, dict) else {}

    def record_finished_copies(self, copies: dict) -> None:
        self._mark(copied=copies or None)

    def record_identity(self, identity: ModelIdentity) -> None:
        ours = self._clipsearch_metadata(self._info())
        ours["model"] = identity.to_dict()
        meant = self.meant()
        self._call("record the model", lambda: self.client.update_collection(meant, metadata={METADATA_KEY: ours}))

    def prepare_switch(self, keep_old: bool, old_identity: ModelIdentity, progress=None) -> None:
        """Before the catch-up: a collection that bears the name itself, to be kept, is
        copied to its version name now (vectors as they are, nothing embedded), since
        the switch must drop it (an alias cannot share a collection's name, nor can a
        collection be renamed). What is ingested during the copy is caught up into the
        new version after it.

        Then the collection the name means is marked as switching: from here on a
        write to it fails its confirmation (_confirm_write), so every write another
        client counts went in before the mark, and the last catch-up, which reads the
        collection after it, copies it. The mark goes with the collection at a first
        switch, stays on a kept one (an old writer holding it must still fail), and is
        taken back when this index closes without switching (stopped, failed)."""
        from .migrate import migrate

        if keep_old and self.name not in self._aliases():
            kept = self._sibling(version_name(self.name, old_identity), self.current_layout() or Layout())
            # The old collection's copy is a version being made by this reindex: status
            # must not list it as kept while it is partial.
            migrate(self, kept, progress=progress, resume="run the same reindex again", reindex=self.name)
        meant = self.meant()
        self._sibling(meant, Layout())._mark(switching={
            "name": self.name, "since": datetime.now().astimezone().isoformat(timespec="seconds"),
            **({"command": self.switch_command} if self.switch_command else {})})
        self._switch_marked = meant

    def _unmark_switching(self, collection: str) -> None:
        sibling = self._sibling(collection, Layout())
        if isinstance(self._clipsearch_metadata(sibling._info()).get("switching"), dict):
            sibling._mark(switching=None)

    def switch(self, target: str, keep_old: bool, old_identity: ModelIdentity) -> str | None:
        """One alias update moves the name, atomically for every client. The first
        switch of a name finds it a collection, which must go first: the version is
        marked as completing the name before, so that a kill between the drop and the
        alias leaves a name that the next open finishes (_finish_switch)."""
        from qdrant_client import models

        old = self._aliases().get(self.name)
        create = models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=target,
                                                                             alias_name=self.name))
        version = self._sibling(target, Layout())
        kept = None
        try:
            # The version may be a kept one, marked when the name was switched away from it.
            self._unmark_switching(target)
            if old is None:
                if keep_old:
                    kept = version_name(self.name, old_identity)
                    if not self._call("collection lookup", functools.partial(self.client.collection_exists, kept)):
                        self.prepare_switch(keep_old, old_identity)  # a caller that did not prepare: copied now
                version._mark(completes=self.name)
                self._call("drop the old collection", lambda: self.client.delete_collection(self.name))
                self._switch_marked = None  # gone with the collection
                actions: list = [create]
            else:
                actions = [models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.name)), create]
            self._call("switch the alias", lambda: self.client.update_collection_aliases(
                change_aliases_operations=actions))
            self._switch_marked = None  # kept on the old collection: a writer still holding it must fail
            self._exists = None
            if old is None:
                version._mark(completes=None)
            elif keep_old:
                kept = old
            else:
                self.drop(old)
            return kept
        finally:
            self.close()

    def _mark(self, **fields) -> None:
        """Set (or, with None, remove) fields of clipsearch's metadata of the collection."""
        ours = self._clipsearch_metadata(self._info())
        for name, value in fields.items():
            if value is None:
                ours.pop(name, None)
            else:
                ours[name] = value
        collection = self.collection
        self._call("record in the collection", lambda: self.client.update_collection(
            collection, metadata={METADATA_KEY: ours}))
        self._last_info = None  # what _recent_info() would give is out of date now

    def drop(self, collection: str) -> None:
        if collection == self.name:
            raise ClipsearchError(f"collection {collection!r} is the one in use; refusing to drop it")
        self._call("drop a collection", lambda: self.client.delete_collection(collection))

    def current_layout(self) -> Layout | None:
        """The layout the server reports for the collection (None in :memory:, which keeps none)."""
        return Layout.of_collection(self._info()) if self.backend == "server" else None

    def _sibling(self, collection: str, layout: Layout) -> "ClientIndex":
        """Another collection over this connection (not to be closed on its own)."""
        import copy

        sibling = copy.copy(self)
        sibling.name = sibling.collection = collection
        sibling.layout = layout
        sibling._exists = None
        sibling._layout_checked = True
        # What this index wrote, and the mark it holds, are its own.
        sibling._writes_to = sibling._writer_identity = sibling._switch_marked = None
        sibling.points_written = 0
        return sibling

    def warn_if_layout_differs(self) -> None:
        """Where the collection exists and its layout is not the one asked for: one line
        on stderr, and the collection used as it is. Never recreated: that would drop
        every point, and Qdrant cannot reshard one in place. qdrant-client's local engine
        (:memory:) keeps no layout to compare."""
        if self._layout_checked or self.backend != "server" or not self.layout.asked() or not self.exists():
            return
        self._layout_checked = True
        differences = self.layout.differences(Layout.of_collection(self._info()))
        if differences:
            sys.stderr.write(f"clipsearch: collection {self.collection!r} at {self.where} exists with another "
                             f"layout; using it as it is, without {', '.join(differences)} (a layout is set "
                             "only when a collection is created)\n")

    def _create_payload_indexes(self, fields: dict[str, str]) -> None:
        """Payload indexes of the given kinds (base.PAYLOAD_INDEXES); a server makes an
        index that exists again as a no-op. Local mode has no payload indexes."""
        from qdrant_client import models

        if self.backend != "server":
            return
        kinds = {"keyword": models.PayloadSchemaType.KEYWORD, "datetime": models.PayloadSchemaType.DATETIME,
                 "geo": models.PayloadSchemaType.GEO}
        for name, kind in fields.items():
            self.client.create_payload_index(self.collection, name, kinds[kind])

    def ensure_collection(self, identity: ModelIdentity) -> None:
        """As every backend does; a server collection made before a payload index was
        added (fingerprint, the photo facts) gets it here, on the first write-side open."""
        existed = self.exists()
        super().ensure_collection(identity)
        self._writer_identity = identity
        if existed and self.backend == "server":
            schema = self._info().payload_schema or {}
            missing = {name: kind for name, kind in PAYLOAD_INDEXES.items() if name not in schema}
            if missing:
                self._call("create payload indexes", lambda: self._create_payload_indexes(missing))

    # -- points -----------------------------------------------------------------
    @staticmethod
    def _filter(under: str | None = None, exclude_ids: Sequence[str] = (), where: Where | None = None):
        from qdrant_client import models

        must: list[models.Condition] = []
        must_not: list[models.Condition] = []
        if under:
            must.append(models.FieldCondition(key="dirs", match=models.MatchValue(value=under_value(under))))
        if where:
            must += _where_conditions(where)
        if exclude_ids:
            must_not.append(models.HasIdCondition(has_id=list(exclude_ids)))
        if not must and not must_not:
            return None
        return models.Filter(must=must or None, must_not=must_not or None)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        from qdrant_client import models

        self.require_collection()
        self._check_pin(always=True)

        vectors = np.asarray(vectors, dtype=np.float32)
        batch = models.Batch(ids=list(ids), vectors=vectors.tolist(), payloads=list(payloads))
        if len(batch.ids):
            self._write([str(i) for i in batch.ids], vectors,
                        lambda target: self.client.upsert(target, points=batch, wait=True))

    # -- writes: confirmed against a reindex's switch (the module's docstring) -----------
    def _write_target(self) -> str:
        """The collection this index writes to: the one the name meant at its first
        write (pinned: the one pin() kept). Not the name itself, which a reindex may
        make mean another model's collection between two batches."""
        if self._writes_to is None:
            self._writes_to = self.collection if self._pin_requested else self.meant()
        return self._writes_to

    def _write(self, ids: list[str], vectors: np.ndarray, send: Callable[[str], Any]) -> None:
        target = self._write_target()
        try:
            self._call("upsert", functools.partial(send, target))
        except _NotFound:
            self._confirm_write(target, ids, vectors)  # gone: a switch dropped it, said as such
            raise
        self._confirm_write(target, ids, vectors)
        self.points_written += len(ids)

    def _confirm_write(self, target: str, ids: list[str], vectors: np.ndarray) -> None:
        """One read of the collection just written: still there, not being switched
        away from this name, and holding this model's vectors. A write it passes went
        in before any reindex marked the collection (prepare_switch), so that
        reindex's last catch-up copies it; else it raises, and the command run again
        writes into what the name means then."""
        try:
            info = self._call("confirm the write", functools.partial(self.client.get_collection, target))
        except _NotFound:
            raise self._switched_error(target, gone=True) from None
        ours = self._clipsearch_metadata(info)
        switching = ours.get("switching")
        if isinstance(switching, dict) and switching.get("name") == self.name:
            raise self._switched_error(target, marked=switching.get("command") or True)
        stored = ours.get("model")
        if not isinstance(stored, dict):
            return
        if self._writer_identity is None:
            self._writer_identity = ModelIdentity.from_dict(stored)
        elif not ModelIdentity.from_dict(stored).is_compatible_with(self._writer_identity):
            # The name was this very collection, and a reindex's first switch made it the
            # alias of another model's version just before this write: take it back.
            self._take_back(target, ids, vectors)
            raise self._switched_error(target)

    def _take_back(self, target: str, ids: list[str], vectors: np.ndarray) -> None:
        """Delete the points of `ids` whose vector is still the one this index wrote:
        another model's vectors must not stay among the version's. Points the reindex
        wrote after them keep theirs; the command run again adds what is missing."""
        from qdrant_client import models

        ours = dict(zip(ids, l2_normalize(vectors)))
        records = self._call("retrieve", lambda: self.client.retrieve(target, ids=ids, with_payload=False,
                                                                      with_vectors=True))
        mine = [str(r.id) for r in records if r.vector is not None and str(r.id) in ours
                and np.allclose(l2_normalize(r.vector)[0], ours[str(r.id)], atol=1e-4)]
        if mine:
            self._call("delete", lambda: self.client.delete(
                target, points_selector=models.PointIdsList(points=list(mine)), wait=True))

    def _switched_error(self, target: str, gone: bool = False, marked: bool | str = False) -> ClipsearchError:
        """`marked`: the collection carries a reindex's switching mark (the command that
        finishes that reindex, where the mark names it)."""
        what = (f"collection {target!r} at {self.where} is gone (`clipsearch reindex` switched {self.name!r} away "
                "from it, or it was dropped)" if gone
                else f"`clipsearch reindex` switched (or is switching) {self.name!r} at {self.where} away from "
                     f"{target!r}" if marked
                else f"`clipsearch reindex` switched {self.name!r} at {self.where} away from {target!r}")
        # A reindex killed between its mark and its switch leaves the mark, and nothing
        # finishes that reindex but the reindex itself run again: said, with its command.
        finish = f"`{marked}`" if isinstance(marked, str) else "the same `clipsearch reindex` run again"
        stopped = (f"; if no reindex is running (one stopped while switching leaves the mark), {finish} finishes "
                   "the switch" if marked else "")
        return ClipsearchError(
            f"{what} while this wrote to it, so the last batch may be missing from what the name means now: run "
            "the same command again once that reindex has finished, without --model (it then uses the "
            f"collection's new one), and it adds what is missing{stopped}")

    def query(self, vector, k, under=None, exclude_ids=(), exact=False, hnsw_ef=DEFAULT_HNSW_EF,
              where=None) -> list[Hit]:
        from qdrant_client import models

        self.require_collection()
        response = self._call("query", lambda: self.client.query_points(
            self.collection,
            query=np.asarray(vector, dtype=np.float32).ravel().tolist(),
            limit=k,
            query_filter=self._filter(under, exclude_ids, where),
            with_payload=True,
            search_params=(models.SearchParams(exact=exact, hnsw_ef=None if exact else max(hnsw_ef or 0, k) or None,
                                               quantization=self._rescoring(exact))
                           if self.backend == "server" else None),  # local mode always scans exactly
        ))
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def recommend(self, positives, negatives, k, under=None, exclude_ids=(), hnsw_ef=DEFAULT_HNSW_EF,
                  where=None) -> list[Hit]:
        from qdrant_client import models

        self.require_collection()

        def listed(vectors):
            return [np.asarray(v, dtype=np.float32).ravel().tolist() for v in vectors]

        query = models.RecommendQuery(recommend=models.RecommendInput(
            positive=listed(positives), negative=listed(negatives) or None,
            strategy=models.RecommendStrategy.BEST_SCORE))
        response = self._call("recommend", lambda: self.client.query_points(
            self.collection, query=query, limit=k, query_filter=self._filter(under, exclude_ids, where),
            with_payload=True,
            search_params=(models.SearchParams(hnsw_ef=max(hnsw_ef or 0, k) or None,
                                               quantization=self._rescoring(False))
                           if self.backend == "server" else None),
        ))
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def _rescoring(self, exact: bool):
        """How a search uses quantized vectors, where the collection has them (the server
        ignores this otherwise, which spares asking the collection's layout per query):
        oversampling x k candidates by the quantized vectors, ranked again by the
        originals; an exact search reads the originals alone."""
        from qdrant_client import models

        if exact:
            return models.QuantizationSearchParams(ignore=True)
        return models.QuantizationSearchParams(rescore=True, oversampling=self.oversampling)

    def count(self, under: str | None = None) -> int:
        self.require_collection()
        result = self._call("count", lambda: self.client.count(self.collection, count_filter=self._filter(under),
                                                               exact=True))
        return int(result.count)

    def delete(self, ids: Sequence[str] = (), under: str | None = None) -> None:
        from qdrant_client import models

        self.require_collection()
        self._check_pin(always=True)

        if ids:
            by_id = models.PointIdsList(points=list(ids))
            self._call("delete", lambda: self.client.delete(self.collection, points_selector=by_id, wait=True))
        if under:
            by_folder = models.FilterSelector(filter=self._filter(under))
            self._call("delete", lambda: self.client.delete(self.collection, points_selector=by_folder, wait=True))

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        self.require_collection()
        if not ids:
            return []
        records = self._call("retrieve", lambda: self.client.retrieve(
            self.collection, ids=list(ids), with_payload=True, with_vectors=with_vectors))
        return [Record(str(r.id), dict(r.payload or {}),
                       np.asarray(r.vector, dtype=np.float32) if with_vectors and r.vector is not None else None)
                for r in records]

    def scroll(self, batch_size=1000, with_vectors=False, under=None) -> Iterator[Record]:
        return self._scroll(self._filter(under), batch_size, with_vectors)

    # A copy reads the vectors alone (no payloads) and writes them back as the server gave them.
    def _vectors_to_copy(self, ids: list[str]) -> dict:
        self.require_collection()
        records = self._call("retrieve", lambda: self.client.retrieve(
            self.collection, ids=ids, with_payload=False, with_vectors=True)) if ids else []
        return {str(r.id): r.vector for r in records if r.vector is not None}

    def _write_copies(self, ids: list[str], vectors: list, payloads: list[dict]) -> None:
        from qdrant_client import models

        self._check_pin(always=True)
        points = [models.PointStruct(id=i, vector=vector, payload=payload)
                  for i, vector, payload in zip(ids, vectors, payloads)]
        self._write([str(i) for i in ids], np.asarray(vectors, dtype=np.float32),
                    lambda target: self.client.upsert(target, points=points, wait=True))

    def find(self, field, values, with_vectors=False, limit=None, fields=None) -> list[Record]:
        from qdrant_client import models

        if values is None:
            matching = models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=field))])
        elif not values:
            return []
        else:
            matching = models.Filter(must=[models.FieldCondition(key=field, match=models.MatchAny(any=list(values)))])
        payload = True if fields is None else list(fields)
        return list(itertools.islice(self._scroll(matching, min(limit or 1000, 1000), with_vectors, payload), limit))

    def _scroll(self, matching, batch_size: int, with_vectors: bool, payload=True) -> Iterator[Record]:
        self.require_collection()
        offset = None
        while True:
            page = functools.partial(self.client.scroll, self.collection, scroll_filter=matching,
                                     limit=batch_size, offset=offset, with_payload=payload, with_vectors=with_vectors)
            records, offset = self._call("scroll", page)
            for r in records:
                yield Record(str(r.id), dict(r.payload or {}),
                             np.asarray(r.vector, dtype=np.float32) if with_vectors and r.vector is not None else None)
            if offset is None or not records:
                return

    @contextmanager
    def bulk_load(self):
        """Qdrant's advice for bulk uploads: no HNSW indexing while loading
        (indexing_threshold=0), then the collection's normal threshold back, after which
        the server builds the index once instead of rebuilding it as segments grow.

        The normal threshold is recorded in the collection's clipsearch metadata before
        the first pause and restored from there, never from what the collection shows
        now: an ingest that died mid-way (killed, or the server lost) leaves 0 behind,
        and one that overlaps another ingest sees the other's 0. Either way the next
        ingest to finish puts the recorded value back."""
        if self.backend != "server":
            yield
            return
        from qdrant_client import models

        normal = self._normal_indexing_threshold()

        def set_threshold(value: int, what: str) -> None:
            self._call(what, lambda: self.client.update_collection(
                self.collection, optimizers_config=models.OptimizersConfigDiff(indexing_threshold=value)))

        set_threshold(0, "pause indexing")
        try:
            yield
        finally:
            set_threshold(normal, "restore indexing")

    def _normal_indexing_threshold(self) -> int:
        info = self._info()
        ours = self._clipsearch_metadata(info)
        if ours.get("indexing_threshold"):
            return int(ours["indexing_threshold"])
        # 0 with nothing recorded: paused by a clipsearch that kept no record; Qdrant's default.
        normal = info.config.optimizer_config.indexing_threshold or QDRANT_INDEXING_THRESHOLD
        ours["indexing_threshold"] = normal
        # The whole clipsearch entry is written: right whether the server merges
        # metadata updates or replaces them.
        self._call("record indexing threshold", lambda: self.client.update_collection(
            self.collection, metadata={METADATA_KEY: ours}))
        return normal

    def describe(self) -> dict:
        facts = super().describe()
        if self.backend == "server":
            facts["protocol"] = "grpc" if self.grpc else "rest"
            facts["server_version"] = self._call("server info", lambda: self.client.info()).version
        if facts["exists"]:
            info = self._info()
            facts["status"] = str(getattr(info.status, "value", info.status))
            facts["indexed_vectors"] = info.indexed_vectors_count or 0
            if self.backend == "server" and info.config.optimizer_config.indexing_threshold == 0:
                facts["indexing_paused"] = True
            switching = self._clipsearch_metadata(info).get("switching")
            if isinstance(switching, dict) and switching.get("name") == self.name:
                facts["switching"] = switching
            if self.backend == "server":
                facts["layout"] = layout_facts(info)
                cluster = self._cluster()
                if cluster is not None:
                    facts["cluster"] = cluster
        return facts

    def _cluster(self) -> dict | None:
        """The cluster's peers and this collection's shard states, or None where the
        server runs without cluster mode or does not answer these calls (the test
        doubles, a proxy that does not pass /cluster): status is facts, never a failure."""
        try:
            status = self._call("cluster status", lambda: self.client.cluster_status())
            if getattr(status, "status", None) != "enabled":
                return None
            shards = self._call("collection cluster info", lambda: self.client.collection_cluster_info(
                self.collection))
        except ClipsearchError:
            return None
        return cluster_facts(status, shards)

    def close(self) -> None:
        if self._switch_marked is not None:  # a reindex stopped (or failed) before its switch
            marked, self._switch_marked = self._switch_marked, None
            try:
                self._unmark_switching(marked)
            except ClipsearchError as exc:  # the server is gone: the next reindex takes it back
                stderr_line(f"could not take back the switching mark of {marked!r} at {self.where} ({exc}); "
                            "ingests into it fail until the same reindex is run again")
        self._closed = True
        if self.backend == "server":
            try:
                self.client.close()
            except Exception:  # closing a dead connection is not worth an error
                pass


def _where_conditions(where: Where) -> list:
    """Where's photo filters as qdrant-client conditions (edge.py says the same)."""
    from qdrant_client import models

    conditions: list = []
    if where.taken_from or where.taken_before:
        moment = (lambda text: datetime.fromisoformat(text) if text else None)  # noqa: E731
        conditions.append(models.FieldCondition(key="taken", range=models.DatetimeRange(
            gte=moment(where.taken_from), lt=moment(where.taken_before))))
    for word in where.camera_words:  # a joined word: itself, or all its parts (photo_facts.joined_parts)
        itself = models.FieldCondition(key="camera_words", match=models.MatchValue(value=word))
        parts: list = [models.FieldCondition(key="camera_words", match=models.MatchValue(value=part))
                 for part in joined_parts(word)]
        conditions.append(models.Filter(should=[itself, models.Filter(must=parts)]) if parts else itself)
    if where.near:
        lat, lon, metres = where.near
        conditions.append(models.FieldCondition(key="location", geo_radius=models.GeoRadius(
            center=models.GeoPoint(lat=lat, lon=lon), radius=metres)))
    return conditions
