"""Who may talk to serve: loopback by default, a token for anything else.

The token travels as `Authorization: Bearer TOKEN` (thin clients, scripts) or, for
the page, as an HttpOnly, SameSite=Strict cookie set by a login. The cookie holds a
random session id, not the token nor anything derived from it: the server keeps its
sessions (each secret's hash, never the secret) in a file of its own (mode 0600), so a
logout ends one for good (a copy of the cookie opens nothing after it), a restart with
the same token keeps them (a NAS that reboots does not log the family out), and a new
token ends them all. Every
comparison is constant-time (hmac.compare_digest), and the token is never logged,
echoed or put in a page: the access log is off (uvicorn's would print
/login?token=...), and errors never repeat what the client sent in a header.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
import time
from pathlib import Path

from clipsearch.errors import ClipsearchError

COOKIE = "clipsearch_session"
# Paths anyone may reach: health for load balancers, the login itself, and the session
# (whether a token is needed, and whether this request has it: what a 401 says anyway).
OPEN_PATHS = frozenset({"/api/health", "/login", "/api/login", "/api/session"})
SESSION_SECONDS = 30 * 24 * 3600
# Logins need the token, so only its holders add sessions; the oldest go beyond this.
MAX_SESSIONS = 1000
_NO_SESSION = (b"\0" * 32, 0.0)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def host_name(header: str) -> str:
    """The host a Host header names, without its port: `[::1]:8765` -> `::1`."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def choose_token(host: str, given: str | None) -> tuple[str | None, bool]:
    """(token, generated): the given token; a new one for a non-loopback address
    without one; None on loopback without one (no token asked)."""
    if given:
        return given, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(24), True


class Guard:
    def __init__(self, token: str | None, port: int | None = None, store: Path | None = None):
        """`port`: serve's, in the cookie's name. Browsers keep one cookie jar per host,
        not per port: two serves on one machine would otherwise overwrite each other's
        login. (Each still receives the other's cookie, which opens nothing there. Two
        containers that both bind 8765 inside still share the name.) `store`: the file
        that keeps the sessions across restarts (None: in memory only)."""
        self.token = token
        self.cookie = COOKIE if port is None else f"{COOKIE}_{port}"
        # A session id is "SELECTOR.SECRET": the selector finds the session, the secret's
        # hash is compared in constant time, so how long a lookup takes tells nothing of
        # a secret. selector -> (sha256 of the secret, when it expires).
        self._sessions: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        self._store = store
        self._load()

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def host_allowed(self, host: str | None) -> bool:
        """Without a token, only requests addressed to a loopback name (localhost,
        127.0.0.1, [::1]). A web page whose own name an attacker rebinds to 127.0.0.1
        (DNS rebinding) is same-origin with serve, so CORS does not stop it, but its
        browser still sends that name. With a token the token guards every name. No
        Host header (HTTP/1.0) is no browser's request."""
        return self.token is not None or not host or is_loopback(host_name(host).lower().rstrip("."))

    def token_matches(self, candidate: str | None) -> bool:
        if self.token is None or not candidate:
            return False
        return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), self.token.encode())

    def new_session(self) -> str:
        """A new session's cookie value, after a login with the token."""
        selector, secret = secrets.token_urlsafe(12), secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            for old in [s for s, (_, expires) in self._sessions.items() if expires <= now]:
                del self._sessions[old]
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]  # the oldest login
            self._sessions[selector] = (_digest(secret), now + SESSION_SECONDS)
            self._save()
        return f"{selector}.{secret}"

    def session_valid(self, cookie: str | None) -> bool:
        if not cookie:
            return False
        selector, _, secret = cookie.partition(".")
        with self._lock:
            digest, expires = self._sessions.get(selector, _NO_SESSION)
        return hmac.compare_digest(_digest(secret), digest) and time.time() < expires

    def end_session(self, cookie: str | None) -> None:
        """A logout: this session opens nothing from now on, wherever its cookie was copied."""
        if self.session_valid(cookie):
            with self._lock:
                self._sessions.pop(str(cookie).partition(".")[0], None)
                self._save()

    # The file names the token it belongs to by a keyed hash of it: sessions of another
    # token are not this one's. A file that cannot be read or written costs only the
    # keeping of logins across a restart, never a login.
    def _token_key(self) -> str:
        return hmac.new((self.token or "").encode("utf-8", "surrogateescape"), b"clipsearch-sessions",
                        hashlib.sha256).hexdigest()

    def _load(self) -> None:
        if self._store is None:
            return
        if self.token is None:  # no token now: any sessions kept belong to an old one, and end
            try:
                self._store.unlink(missing_ok=True)
            except OSError:
                pass
            return
        try:
            kept = json.loads(self._store.read_text())
            if kept.get("token") != self._token_key():
                # Another token's sessions: dropped now, not only ignored, or going back
                # to that token would open them again.
                self._save()
                return
            now = time.time()
            self._sessions = {selector: (bytes.fromhex(digest), float(expires))
                              for selector, (digest, expires) in kept["sessions"].items() if float(expires) > now}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            self._sessions = {}

    def _save(self) -> None:
        if self._store is None or self.token is None:
            return
        sessions = {selector: [digest.hex(), expires] for selector, (digest, expires) in self._sessions.items()}
        data = {"token": self._token_key(), "sessions": sessions}
        tmp = self._store.with_name(self._store.name + ".tmp")
        try:
            self._store.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(data, out)
            os.replace(tmp, self._store)
        except OSError:
            tmp.unlink(missing_ok=True)

    def allows(self, authorization: str | None, cookie: str | None) -> bool:
        return self.refusal(authorization, cookie) is None

    def refusal(self, authorization: str | None, cookie: str | None) -> str | None:
        """Why a request with these credentials is refused, in one line; None when it
        is not. A Bearer token that was sent and is wrong is told apart from none sent."""
        if self.token is None or self.session_valid(cookie):
            return None
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            if self.token_matches(value.strip()):
                return None
            return "the token sent (Authorization: Bearer) is wrong"
        return "a token is needed: log in, or send Authorization: Bearer TOKEN"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def check_bind(host: str, token: str | None, cors_origins: tuple[str, ...] = ()) -> None:
    if not is_loopback(host) and not token:
        raise ClipsearchError(f"binding {host} (not loopback) needs a token: give --token or CLIPSEARCH_TOKEN")
    if "*" in cors_origins and not token:
        # Every web page the user opens could then read the library from 127.0.0.1: the
        # Host check does not stop a page that names serve's own address.
        raise ClipsearchError("--cors-origin '*' without a token lets any web page you open read the whole "
                              "library: name the origins allowed, or give --token (or CLIPSEARCH_TOKEN) too")
