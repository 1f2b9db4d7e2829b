"""Connections: a deadline for a request's headers, and a cap on open connections
derived from the process's file-descriptor limit.

uvicorn's keep-alive timeout covers only the wait between requests, is not armed on a
new connection, and the first byte of a request cancels it: a client that sent part of
its headers and then nothing held a connection, and a descriptor, forever, before the
token was even checked. 1,100 of them under `ulimit -n 1024` stopped serve answering,
and asyncio's accept loop logged EMFILE 120,000 times in 12 s.

So each connection has HEADER_SECONDS, from its accept or from its last response, to
complete a request's headers, or it is closed; a request's body must keep arriving,
no pause longer than HEADER_SECONDS while serve is ready to read it (a wait of serve's
own, as an upload waiting for the decoder, does not count), and in all within
HEADER_SECONDS plus a second for each MIN_BODY_RATE bytes received (Apache's
mod_reqtimeout rule: a byte every 29 seconds never paused long enough, and held a
connection for days on an endpoint open without the token, the login); and a response given
before the body was read (a 401, a 413) ends the connection, whose unread body a
client could otherwise trickle in forever, out of every timer's reach. And at most
`cap` connections are open:
the next one closes the connection that has waited longest for headers (a slow or idle
client; a request being answered is never cut), or, where every one is in a request,
is itself closed at once. The cap leaves room under the limit for the connections one
accept burst takes (the backlog), the descriptors requests open (originals,
thumbnails), the index's own files and those already open at the start.

uvicorn's limit_concurrency is not used: it answers 503 only once a request's headers
arrive, and accepts regardless, so it bounds no descriptors.
"""

from __future__ import annotations

import asyncio
import os
import resource

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_SECONDS = 30.0
MIN_BODY_RATE = 500  # bytes a second a body averages once HEADER_SECONDS are spent: a phone on a bad link does more
# Tests only (a deadline of seconds, not minutes): not a setting, so not in the table.
HEADER_SECONDS_VARIABLE = "_CLIPSEARCH_HEADER_SECONDS"


def header_seconds() -> float:
    raw = os.environ.get(HEADER_SECONDS_VARIABLE, "")
    return float(raw) if raw else HEADER_SECONDS


def descriptor_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def backlog_for(limit: int) -> int:
    """The listen backlog, which is also how many connections asyncio accepts in one go,
    before any of them is seen here: a burst the cap must leave room for."""
    return min(2048, max(16, limit // 8))


def connection_cap(limit: int, in_use: int) -> int:
    """Connections allowed open at once, `in_use` descriptors being open already."""
    reserve = backlog_for(limit) + max(128, limit // 8)  # an accept burst; requests' files, the index's growth
    return max(16, limit - in_use - reserve)


def descriptors_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64  # no /proc: a guess at what an open index and model hold


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header deadline and the connection cap above.
    `deadline` and `cap` are set on the subclass `protocol_class` makes."""

    deadline = HEADER_SECONDS
    cap = 1 << 20
    _timer: asyncio.TimerHandle | None = None
    waiting_since: float | None = None  # loop time this connection began waiting for headers
    _body_since: float | None = None  # loop time the request's headers were in, its body to come
    _body_bytes = 0
    _body_excused = 0.0  # seconds the body waited on serve (reading paused), not on the client
    _armed_at = 0.0

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.SEND_BODY:
            self._body_bytes += len(data)
        super().data_received(data)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()
        if len(self.connections) > self.cap:
            self._make_room()

    def handle_events(self) -> None:
        super().handle_events()
        state = self.conn.their_state
        if state is h11.SEND_BODY:  # headers in, the body arriving: each piece re-arms its timer
            if self._body_since is None:
                self._body_since, self._body_bytes, self._body_excused = self.loop.time(), 0, 0.0
            self._await_body()
        elif state is not h11.IDLE:  # the whole request is in (or the connection ends)
            self._stop_waiting()
            self._body_since = None

    def on_response_complete(self) -> None:
        self._body_since = None
        if self.conn.their_state is h11.SEND_BODY:  # answered before its body was read (401, 413)
            self._stop_waiting()
            super().on_response_complete()
            if not self.transport.is_closing():
                self.transport.close()  # after the response is written: close() flushes first
            return
        # Armed before uvicorn reads a pipelined request, whose headers then disarm it.
        if not self.transport.is_closing():
            self._await_headers()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._stop_waiting()
        self.waiting_since = self.loop.time()
        self._timer = self.loop.call_later(self.deadline, self._too_slow)

    def _await_body(self) -> None:
        self._stop_waiting()  # not waiting for headers: a request in progress is never the one cut for room
        now = self.loop.time()
        left = (self._body_since or now) + self.deadline + self._body_bytes / MIN_BODY_RATE + self._body_excused - now
        self._armed_at = now
        self._timer = self.loop.call_later(max(0.0, min(self.deadline, left)), self._body_stalled)

    def _body_stalled(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        if self.flow.read_paused:  # serve is not reading it yet (the app has not asked): not the client's pause
            now = self.loop.time()
            self._body_excused += now - self._armed_at
            self._armed_at = now
            self._timer = self.loop.call_later(self.deadline, self._body_stalled)
            return
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot read (a request line or headers too long, malformed):
        answered as every error is, one line of JSON with the security headers, where
        uvicorn sends plain text."""
        import json

        from .app import CONTENT_POLICY, NO_STORE, SECURITY_HEADERS

        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):  # an answer has begun: too late for one
            self.transport.close()
            return
        body = json.dumps({"error": "the request cannot be read as HTTP/1.1 (malformed, or its request line or "
                                    "headers longer than serve reads)"}).encode()
        named = {**SECURITY_HEADERS, "Cache-Control": NO_STORE, "Content-Security-Policy": CONTENT_POLICY}
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close"), *((name.lower().encode(), value.encode()) for name, value in
                                                  named.items())]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.waiting_since = None

    def _too_slow(self) -> None:
        # No request was read, so there is none to answer: the connection just ends.
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _make_room(self) -> None:
        waiting = [c for c in self.connections if c is not self and getattr(c, "waiting_since", None) is not None
                   and not c.transport.is_closing()]
        if waiting:
            oldest = min(waiting, key=lambda c: c.waiting_since)
            oldest._stop_waiting()
            oldest.transport.close()
        else:  # every other connection is in a request: this one waits for none of them
            self._stop_waiting()
            self.transport.close()


def protocol_class(deadline: float, cap: int) -> type[DeadlineH11Protocol]:
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"deadline": deadline, "cap": cap})
