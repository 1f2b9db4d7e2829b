"""Who may talk to serve: loopback by default, a token for anything else.

The token travels as `Authorization: Bearer TOKEN` (thin clients, scripts) or, for
the page, as an HttpOnly, SameSite=Strict cookie set by a login. The cookie holds a
value derived from the token, not the token. Every comparison is constant-time
(hmac.compare_digest), and the token is never logged, echoed or put in a page: the
access log is off (uvicorn's would print /login?token=...), and errors never repeat
what the client sent in a header.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from clipsearch.errors import ClipsearchError

COOKIE = "clipsearch_session"
# Paths anyone may reach: health for load balancers and the login itself.
OPEN_PATHS = frozenset({"/api/health", "/login", "/api/login"})


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
    def __init__(self, token: str | None, port: int | None = None):
        """`port`: serve's, in the cookie's name. Browsers keep one cookie jar per host,
        not per port: two serves on one machine would otherwise overwrite each other's
        login. (Each still receives the other's cookie, which opens nothing there. Two
        containers that both bind 8765 inside still share the name.)"""
        self.token = token
        self.cookie = COOKIE if port is None else f"{COOKIE}_{port}"
        self.session = (hmac.new(token.encode(), b"clipsearch-session", hashlib.sha256).hexdigest()
                        if token else None)

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

    def allows(self, authorization: str | None, cookie: str | None) -> bool:
        if self.token is None:
            return True
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and self.token_matches(value.strip()):
                return True
        if cookie and self.session is not None:
            return hmac.compare_digest(cookie.encode("utf-8", "surrogateescape"), self.session.encode())
        return False


def check_bind(host: str, token: str | None, cors_origins: tuple[str, ...] = ()) -> None:
    if not is_loopback(host) and not token:
        raise ClipsearchError(f"binding {host} (not loopback) needs a token: give --token or CLIPSEARCH_TOKEN")
    if "*" in cors_origins and not token:
        # Every web page the user opens could then read the library from 127.0.0.1: the
        # Host check does not stop a page that names serve's own address.
        raise ClipsearchError("--cors-origin '*' without a token lets any web page you open read the whole "
                              "library: name the origins allowed, or give --token (or CLIPSEARCH_TOKEN) too")
