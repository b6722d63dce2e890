"""The HTTP/1.1 route of a WAF route: serve a caller's connection request by request, inspect
each request with the route's `Engine`, and forward what passes to the service behind the route
over a pooled keep-alive connection. It talks to the WAF only through
`netshield.waf.engine.Engine`; egress (`netshield.sidecar.native`) and ingress
(`netshield.sidecar.ingress`) routes differ only in how they dial the service.

Per request, in order (pipelined requests are answered in the order they came):
1. read it whole (head and body) within ``waf.request_timeout``; ``Expect: 100-continue`` is
   answered once the head passed the parser's checks (a too-large Content-Length gets 413
   instead); between requests the connection may idle for ``waf.keepalive_timeout``;
2. a request the parser refuses (malformed, smuggling-shaped, over the limits) gets its 4xx and
   the connection closes: nothing after it can be framed safely;
3. the engine inspects it in the sidecar's WAF threads (`WafRoutes.inspections`), never on the
   event loop; ``block`` answers a blocked request with 403 and a request id, ``detect`` forwards it;
4. it is forwarded re-serialised from what was inspected (de-chunked, trailers dropped,
   hop-by-hop headers replaced) on an idle pooled connection or a new one; a reused connection
   the service had closed is retried once for idempotent methods;
5. the response is relayed as it arrives (buffered up to ``waf.max_response_body`` and inspected
   first when ``waf.inspect_responses`` is on).

Guarantees: no byte of a request reaches the service before the whole request was inspected;
the connection gets exactly one record, whose ``waf`` field lists every request's verdict
with its request id; a block or refusal makes it a deny record (WAF_BLOCKED / HTTP_REFUSED).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from netshield.authz import ConnDecision
from netshield.reasons import Reason
from netshield.record import WAF_REQUESTS_KEPT, WafOutcome, WafRequest
from netshield.sidecar.connection import Attempt
from netshield.sidecar.inspections import Inspections
from netshield.sidecar.runtime import Runtime
from netshield.sidecar.upstreampool import Upstream, UpstreamPool
from netshield.waf.engine import Engine, Exchange
from netshield.waf.http import (
    HttpRequest,
    HttpResponse,
    Limits,
    ParseError,
    RequestParser,
    ResponseHead,
    ResponseParser,
    UpstreamError,
)
from netshield.waf.settings import WafSettings
from netshield.waf.verdict import Verdict, refusal

log = logging.getLogger("netshield.sidecar")

_READ = 65536
_SHORT_BODY = 8192  # a request with a body up to this size is inspected in a few ms (CRS, PL1)
_HIGH_WATER = 256 * 1024  # bytes buffered towards a peer before the route waits for it
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

T = TypeVar("T")
Dial = Callable[[], Awaitable["Upstream | tuple[Reason, str]"]]


@dataclass(frozen=True)
class HttpRoute:
    name: str  # for records and logs: "native service inventory", "ingress to orders"
    settings: WafSettings
    engine: Engine | None  # None: mode off
    pool: UpstreamPool
    dial: Dial  # a fresh connection to the service, or why not
    exchange: Exchange = field(default_factory=Exchange)
    recheck: Callable[[Upstream], bool] = lambda _u: True  # may a pooled connection be reused?


def answer(status: int, text: str, *, close: bool) -> bytes:
    """A short text/plain response from the route itself."""
    body = (text + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode() + body


def _path(target: str) -> str:
    return target.partition("?")[0][:200]


async def _within(aw: Awaitable[T], seconds: float) -> T:
    """`aw`, or TimeoutError after `seconds` (asyncio.timeout: cancellation is never lost)."""
    async with asyncio.timeout(seconds):
        return await aw


class _Timeout(Exception):
    pass


class _UpstreamFailed(Exception):
    def __init__(self, reason: Reason, detail: str, *, retry: bool = False) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.retry = reason, detail, retry


@dataclass
class _State:
    """What one caller connection did so far (turned into its record at the end)."""

    requests: list[WafRequest] = field(default_factory=list)
    count: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    blocked: int = 0
    refused: int = 0
    detected: int = 0
    rule_ids: dict[str, None] = field(default_factory=dict)
    detail: str = ""
    close_reason: Reason = Reason.CLOSED

    def note(self, entry: WafRequest) -> None:
        self.count += 1
        self.rule_ids.update(dict.fromkeys(entry.rule_ids))
        notable = entry.rule_ids or entry.action != "pass"
        kept = len(self.requests)
        if kept < WAF_REQUESTS_KEPT or (notable and kept < 10 * WAF_REQUESTS_KEPT):
            self.requests.append(entry)


class HttpConnection:
    """One caller connection on a WAF route."""

    def __init__(
        self,
        rt: Runtime,
        attempt: Attempt,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        route: HttpRoute,
        inspections: Inspections,
    ) -> None:
        self.rt, self.attempt, self.route = rt, attempt, route
        self.reader, self.writer = reader, writer
        self.inspections = inspections
        s = route.settings
        self.parser = RequestParser(Limits(s.max_head, s.max_headers, s.max_body))
        self.state = _State()
        self.pending_error: ParseError | None = None
        self.io_timeout = rt.config.limits.idle_timeout.total_seconds()

    # --- reading requests ---------------------------------------------------------------------
    async def next_request(self) -> HttpRequest | ParseError | None:
        """The next request, the parser's refusal, or None when the caller closed or idled."""
        s, parser = self.route.settings, self.parser
        deadline: float | None = None
        continued = False
        while not parser.requests:
            if self.pending_error is not None:
                return self.pending_error
            now = time.monotonic()
            if parser.idle:
                timeout = s.keepalive_timeout.total_seconds()
            else:
                deadline = deadline or now + s.request_timeout.total_seconds()
                timeout = deadline - now
                if timeout <= 0:
                    raise _Timeout
            try:
                data = await _within(self.reader.read(_READ), timeout)
            except TimeoutError:
                if parser.idle:
                    self.state.close_reason = Reason.IDLE_TIMEOUT
                    return None
                raise _Timeout from None
            except OSError:
                self.state.close_reason = Reason.PEER_RESET
                return None
            if not data:
                return None
            if deadline is None:
                deadline = time.monotonic() + s.request_timeout.total_seconds()
            try:
                parser.feed(data)
            except ParseError as err:
                self.pending_error = err
            head = parser.head
            if head is not None and head.expect_continue and not continued:
                continued = True
                self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await self.drain()
        return parser.requests.popleft()

    async def drain(self) -> None:
        await _within(self.writer.drain(), self.io_timeout)

    async def send(self, data: bytes) -> None:
        """Write to the caller; wait for it to read only when its buffer is full."""
        self.writer.write(data)
        self.state.bytes_out += len(data)
        if self.writer.transport.get_write_buffer_size() > _HIGH_WATER:
            await self.drain()

    # --- inspection ---------------------------------------------------------------------------
    async def inspect(self, request: HttpRequest) -> Verdict | None:
        engine = self.route.engine
        if engine is None:
            return None
        verdict: Verdict = await self.inspections.run(
            engine.inspect_request,
            request,
            self.route.exchange,
            short=len(request.body) <= _SHORT_BODY,
        )
        return verdict

    # --- the connection -----------------------------------------------------------------------
    async def serve(self) -> None:
        n = 0
        while True:
            try:
                got = await self.next_request()
            except _Timeout:
                await self._refuse_timeout()
                break
            if got is None:
                break
            n += 1
            request_id = f"{self.attempt.conn_id}-{n}"
            if isinstance(got, ParseError):
                await self._refuse(got, request_id)
                break
            if not await self._one(got, request_id):
                break
            if not got.keep_alive:
                break

    async def _refuse_timeout(self) -> None:
        s = self.route.settings
        self.state.close_reason = Reason.REQUEST_TIMEOUT
        self.state.detail = (
            f"no whole request within waf.request_timeout ({s.request_timeout.total_seconds():g} s)"
        )
        with contextlib.suppress(OSError, TimeoutError):
            await self.send(answer(408, "request timeout", close=True))

    async def _refuse(self, error: ParseError, request_id: str) -> None:
        verdict = refusal(error)
        self.state.refused += 1
        self.state.note(
            WafRequest(
                request_id=request_id,
                method="",
                path="",
                action="refuse",
                status=error.status,
                rule_ids=verdict.rule_ids,
                matched=((error.rule_id, "request framing"),),
            )
        )
        self.state.detail = f"request {request_id}: {verdict.detail}"
        with contextlib.suppress(OSError, TimeoutError):
            await self.send(
                answer(
                    error.status,
                    f"refused by the netshield WAF (request id {request_id})",
                    close=True,
                )
            )

    async def _one(self, request: HttpRequest, request_id: str) -> bool:
        """Inspect and answer one request; False when the connection must close."""
        verdict = await self.inspect(request)
        mode = self.route.settings.mode
        blocked = verdict is not None and verdict.action == "block"
        action = "pass"
        if blocked:
            action = "block" if mode == "block" else "detect"
        entry = dict(
            request_id=request_id,
            method=request.method,
            path=_path(request.target),
            rule_ids=verdict.rule_ids if verdict else (),
            anomaly_score=verdict.anomaly_score if verdict else 0,
            matched=tuple((m.rule_id, m.where) for m in verdict.matches) if verdict else (),
        )
        if action == "block":
            assert verdict is not None
            self.state.blocked += 1
            self.state.note(WafRequest(action="block", status=verdict.status, **entry))  # type: ignore[arg-type]
            self.state.detail = (
                f"request {request_id} ({request.method} {entry['path']}): {verdict.detail}"
            )
            close = not request.keep_alive
            with contextlib.suppress(OSError, TimeoutError):
                await self.send(
                    answer(
                        verdict.status,
                        f"blocked by the netshield WAF (request id {request_id})",
                        close=close,
                    )
                )
                return not close
            return False
        if action == "detect":
            self.state.detected += 1
            assert verdict is not None
            log.info("conn=%s WAF detect %s: %s", self.attempt.conn_id, request_id, verdict.detail)
        status, ok = await self.forward(request, request_id)
        self.state.note(WafRequest(action=action, status=status, **entry))  # type: ignore[arg-type]
        return ok

    # --- forwarding ---------------------------------------------------------------------------
    async def forward(self, request: HttpRequest, request_id: str) -> tuple[int, bool]:
        """Send `request` to the service and relay its response: (status, may continue)."""
        data = request.to_bytes(close=False)
        for attempt_no in (0, 1):
            conn = self._take() or await self.route.dial()
            if isinstance(conn, tuple):
                reason, detail = conn
                self.state.close_reason = reason
                self.state.detail = detail
                status = 504 if reason is Reason.CONNECT_TIMEOUT else 502
                with contextlib.suppress(OSError, TimeoutError):
                    await self.send(answer(status, "the service is unreachable", close=True))
                return status, False
            try:
                conn.writer.write(data)
                if conn.writer.transport.get_write_buffer_size() > _HIGH_WATER:
                    await _within(conn.writer.drain(), self.io_timeout)
                self.state.bytes_in += len(data)
                status, reusable, ok = await self.relay_response(conn, request)
            except _UpstreamFailed as err:
                conn.close()
                if err.retry and conn.reused and attempt_no == 0 and request.method in _IDEMPOTENT:
                    continue
                self.state.close_reason, self.state.detail = err.reason, err.detail
                return 502, False
            except (OSError, TimeoutError) as err:
                conn.close()
                if conn.reused and attempt_no == 0 and request.method in _IDEMPOTENT:
                    continue
                self.state.close_reason = (
                    Reason.IDLE_TIMEOUT if isinstance(err, TimeoutError) else Reason.UPSTREAM_RESET
                )
                return 502, False
            if reusable:
                self.route.pool.give_back(conn)
            else:
                conn.close()
            return status, ok
        return 502, False  # pragma: no cover - the loop always returns

    def _take(self) -> Upstream | None:
        while True:
            conn = self.route.pool.take()
            if conn is None or self.route.recheck(conn):
                return conn
            conn.close()

    async def relay_response(self, conn: Upstream, request: HttpRequest) -> tuple[int, bool, bool]:
        """Relay one response: (status, upstream reusable, caller connection may continue)."""
        parser = ResponseParser()
        inspect = self.route.settings.inspect_responses and self.route.engine is not None
        relay = _ResponseRelay(self, request, buffer=inspect)
        received = 0
        while True:
            try:
                data = await _within(conn.reader.read(_READ), self.io_timeout)
            except TimeoutError:
                raise _UpstreamFailed(
                    Reason.IDLE_TIMEOUT, "the service sent no response within limits.idle_timeout"
                ) from None
            except OSError as err:
                raise _UpstreamFailed(
                    Reason.UPSTREAM_RESET,
                    f"the service reset the connection ({err})",
                    retry=received == 0,
                ) from None
            try:
                events = parser.feed(data) if data else parser.feed_eof()
            except UpstreamError as err:
                raise _UpstreamFailed(Reason.UPSTREAM_RESET, str(err)) from None
            received += len(data)
            for kind, value in events:
                if relay.ended:  # bytes after the response we asked for: not reusable
                    relay.reusable = False
                    break
                await relay.event(kind, value)
            await relay.flush()
            if relay.buffer_full():
                await relay.release(conn)
            if relay.ended:
                if relay.buffered:
                    await relay.release(conn)
                return relay.status, relay.reusable and bool(data), relay.ok
            if relay.head_only_done:
                return relay.status, False, relay.ok
            if not data:
                if relay.sent_head:
                    self.state.close_reason = Reason.UPSTREAM_RESET
                    return relay.status, False, False
                raise _UpstreamFailed(
                    Reason.UPSTREAM_RESET,
                    "the service closed the connection before it answered",
                    retry=received == 0,
                )


class _ResponseRelay:
    """Writes one response to the caller as the events arrive (or after inspection)."""

    def __init__(self, conn: HttpConnection, request: HttpRequest, *, buffer: bool) -> None:
        self.conn, self.request = conn, request
        self.buffered = buffer
        self.events: list[tuple[str, Any]] = []
        self.head: ResponseHead | None = None
        self.size = 0
        self.status = 0
        self.chunked = False
        self.close = not request.keep_alive
        self.sent_head = False
        self.ended = False
        self.reusable = True
        self.ok = True
        self.head_only_done = False
        self.out: list[bytes] = []

    def buffer_full(self) -> bool:
        return self.buffered and self.size > self.conn.route.settings.max_response_body

    async def event(self, kind: str, value: Any) -> None:
        if kind == "head":
            self.head = value
            self.status = value.status
            framed = value.length is not None or value.chunked or value.status in (204, 304)
            self.reusable = value.keep_alive and framed
        if kind == "end":
            self.ended = True
        if kind == "body":
            self.size += len(value)
        if self.buffered:
            self.events.append((kind, value))
            return
        await self._write(kind, value)

    async def _write(self, kind: str, value: Any) -> None:
        """Queue the bytes of one event for the caller (`flush` sends them)."""
        if kind == "head":
            head: ResponseHead = value
            bodyless = head.status in (204, 304) or self.request.method == "HEAD"
            self.chunked = not bodyless and head.length is None
            self.out.append(head.to_bytes(close=self.close, chunked=self.chunked))
            self.sent_head = True
            if self.request.method == "HEAD":  # llhttp would wait for a body: do not reuse
                self.ended = self.head_only_done = True
                self.reusable = False
        elif kind == "body" and value:
            if self.chunked:
                self.out.append(b"%x\r\n%b\r\n" % (len(value), value))
            else:
                self.out.append(value)
        elif kind == "end" and self.chunked:
            self.out.append(b"0\r\n\r\n")
        if kind == "end" and self.close:
            self.ok = False

    async def flush(self) -> None:
        if self.out:
            data, self.out = b"".join(self.out), []
            await self.conn.send(data)

    async def release(self, upstream: Upstream) -> None:
        """Inspect the buffered response, then send it (or 403) and stream the rest."""
        self.buffered = False
        c = self.conn
        engine = c.route.engine
        assert engine is not None and self.head is not None
        body = b"".join(v for k, v in self.events if k == "body")
        response = HttpResponse(self.head.status, self.head.headers, body)
        _, verdict = await c.inspections.run(
            engine.inspect_exchange, self.request, response, c.route.exchange
        )
        if verdict.action == "block" and c.route.settings.mode == "block":
            upstream.close()
            self.reusable = False
            self.ended = True
            self.ok = False
            self.status = 403
            c.state.blocked += 1
            c.state.rule_ids.update(dict.fromkeys(verdict.rule_ids))
            c.state.detail = f"response blocked: {verdict.detail}"
            await c.send(answer(403, "blocked by the netshield WAF (response)", close=True))
            self.events = []
            return
        events, self.events = self.events, []
        for kind, value in events:
            await self._write(kind, value)
        await self.flush()


def finish_record(
    attempt: Attempt, state: _State, route: HttpRoute, decision: ConnDecision
) -> None:
    """The connection's one record, with every request's verdict."""
    engine = route.engine.name if route.engine is not None else ""
    action = "pass"
    if state.detected:
        action = "detect"
    if state.refused:
        action = "refuse"
    if state.blocked:
        action = "block"
    attempt.waf = WafOutcome(
        action,
        tuple(state.rule_ids),
        engine=engine,
        mode=route.settings.mode,
        requests=tuple(state.requests),
        request_count=state.count,
    )
    summary = f"{state.count} request(s)"
    if state.blocked or state.refused:
        reason = Reason.WAF_BLOCKED if state.blocked else Reason.HTTP_REFUSED
        attempt.close_denied(
            reason,
            f"{route.name}: {state.detail} ({summary}, {state.blocked} blocked, "
            f"{state.refused} refused)",
            bytes_in=state.bytes_in,
            bytes_out=state.bytes_out,
            close_reason=state.close_reason,
        )
        return
    detail = summary + (f", {state.detected} detected" if state.detected else "")
    if state.detail:
        detail += f"; {state.detail}"
    attempt.finish(
        decision,
        bytes_in=state.bytes_in,
        bytes_out=state.bytes_out,
        close_reason=state.close_reason,
        detail=detail,
    )


async def serve_http_route(
    rt: Runtime,
    attempt: Attempt,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    route: HttpRoute,
    decision: ConnDecision,
) -> None:
    """Serve one caller connection on `route` until it closes; record it once."""
    conn = HttpConnection(rt, attempt, reader, writer, route, rt.http.inspections)
    closing: list[Reason] = []

    def close(reason: Reason) -> None:  # revocation or drain, from the live table
        closing.append(reason)
        writer.transport.abort()

    if attempt.live is not None:
        attempt.live.closer = close
        attempt.live.counters = lambda: (conn.state.bytes_in, conn.state.bytes_out)
        if attempt.live.close_reason is not None:
            close(attempt.live.close_reason)
    try:
        await conn.serve()
    except (OSError, TimeoutError):
        conn.state.close_reason = Reason.PEER_RESET
    finally:
        with contextlib.suppress(Exception):
            writer.close()
    if closing:
        conn.state.close_reason = closing[0]
    finish_record(attempt, conn.state, route, decision)


__all__ = ["HttpConnection", "HttpRoute", "answer", "finish_record", "serve_http_route"]
