"""Native routes (DESIGN §4): plaintext HTTP/1.1 from the local service to a native
(non-attested) service named in the policy's ``native_services``, through the WAF when the
entry says ``waf: true``.

The native service is reached directly (no mTLS: it has no sidecar). With the WAF on, the route
reads one request, parses it (`netshield.waf.http`) and inspects it (`netshield.waf.inspect`)
before dialling: a blocked or unparsable request gets a 403 (or 4xx) naming the rule ids and a
deny record ``WAF_BLOCKED`` with ``waf: {action: block, rule_ids}``; no byte of it reaches the
native service. An allowed request is forwarded as parsed, with ``Connection: close``, and the
response relayed until the native service closes; then the route closes the connection (one
request per connection, which HTTP/1.1 allows), so every request is inspected and pipelined
bytes are never forwarded unseen. With ``waf: false`` the route is a plain TCP relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

from netshield.authz import ConnDecision
from netshield.netaddr import HostPort
from netshield.policyslice import PolicySlice
from netshield.reasons import Reason
from netshield.record import WafOutcome
from netshield.sidecar.connection import Attempt, accept_plain, relay_plain_to
from netshield.sidecar.runtime import Runtime
from netshield.waf import HttpRequest, ParseError, RequestParser, Verdict, inspect, refusal

log = logging.getLogger("netshield.sidecar")

_READ = 65536
_LINGER = 2.0  # seconds to wait for the caller to close after the response
_STATUS_TEXT = {
    400: "Bad Request",
    403: "Forbidden",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True)
class NativeRoute:
    name: str
    address: HostPort
    waf: bool


def native_route(policy: PolicySlice, service: str) -> NativeRoute | None:
    """The policy slice's native service `service`, or None when it is not one."""
    entry = policy.native_services.get(service)
    if entry is None:
        return None
    return NativeRoute(service, entry.address, entry.waf)


def refusal_response(status: int, verdict: Verdict) -> bytes:
    """The answer to a refused request: a short text body naming the rule ids."""
    body = f"blocked by the netshield WAF: {' '.join(verdict.rule_ids)}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Forbidden')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def read_request(
    reader: asyncio.StreamReader, parser: RequestParser, timeout: float
) -> HttpRequest | ParseError | None:
    """The first request on the connection, the parser's refusal, or None if the caller closed
    (or went idle for `timeout`) before sending a whole request."""
    while not parser.requests:
        try:
            data = await asyncio.wait_for(reader.read(_READ), timeout)
        except (TimeoutError, OSError):
            return None
        if not data:
            return None
        try:
            parser.feed(data)
        except ParseError as err:
            return err
    return parser.requests.popleft()


async def native_outbound(
    rt: Runtime,
    attempt: Attempt,
    sock: socket.socket,
    route: NativeRoute,
    policy_version: int | None,
) -> None:
    """Serve one admitted connection on a native route (see the module docstring). `attempt` is
    the flow's record-to-be."""

    attempt.dst = str(route.address)
    decision = ConnDecision(
        True,
        Reason.OK,
        f"{route.name} is a native service (native_services.{route.name}, "
        f"waf {'on' if route.waf else 'off'}, policy version {policy_version})",
    )
    if not route.waf:
        plain = await accept_plain(attempt, sock)
        if plain is not None:
            await relay_plain_to(rt, attempt, decision, plain, route.address)
        return
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except OSError as err:
        attempt.deny(Reason.PEER_RESET, f"the local caller went away ({err})")
        with contextlib.suppress(OSError):
            sock.close()
        return
    closing: list[Reason] = []

    def close(reason: Reason) -> None:  # revocation or drain, from the live table
        closing.append(reason)
        writer.transport.abort()

    if attempt.live is not None:
        attempt.live.closer = close
        if attempt.live.close_reason is not None:
            close(attempt.live.close_reason)
    try:
        await _serve(rt, attempt, reader, writer, route, decision, closing)
    finally:
        writer.close()


async def _finish_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close towards the caller and discard what it still sends (briefly), so closing
    does not reset the connection before the caller has read the response."""
    with contextlib.suppress(OSError):
        writer.write_eof()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(_LINGER):
            while await reader.read(_READ):
                pass


async def _serve(
    rt: Runtime,
    attempt: Attempt,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    route: NativeRoute,
    decision: ConnDecision,
    closing: list[Reason],
) -> None:
    limits = rt.config.limits
    idle = limits.idle_timeout.total_seconds()
    got = await read_request(reader, RequestParser(), idle)
    if got is None:
        attempt.finish(
            decision,
            bytes_in=0,
            bytes_out=0,
            close_reason=closing[0] if closing else Reason.CLOSED,
            detail="the caller sent no complete request",
        )
        return
    if isinstance(got, ParseError):
        verdict, status = refusal(got), got.status
    else:
        verdict, status = inspect(got), 403
    if verdict.action == "block":
        attempt.waf = WafOutcome("block", verdict.rule_ids)
        with contextlib.suppress(OSError):
            writer.write(refusal_response(status, verdict))
            await asyncio.wait_for(writer.drain(), idle)
            await _finish_reading(reader, writer)
        attempt.deny(Reason.WAF_BLOCKED, f"native service {route.name}: {verdict.detail}")
        return
    assert isinstance(got, HttpRequest)
    attempt.waf = WafOutcome("pass", ())
    timeout = limits.connect_timeout.total_seconds()
    try:
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(route.address.host, route.address.port), timeout
        )
    except TimeoutError:
        attempt.finish(
            decision,
            bytes_in=0,
            bytes_out=0,
            close_reason=Reason.CONNECT_TIMEOUT,
            detail=f"{route.address} did not accept the connection within {timeout:g} s",
        )
        return
    except OSError as err:
        attempt.finish(
            decision,
            bytes_in=0,
            bytes_out=0,
            close_reason=Reason.UPSTREAM_UNREACHABLE,
            detail=f"{route.address}: {err.strerror or err}",
        )
        return
    forwarded = got.to_bytes()
    bytes_out = 0
    close_reason = Reason.CLOSED
    try:
        up_writer.write(forwarded)
        await asyncio.wait_for(up_writer.drain(), idle)
        while True:
            data = await asyncio.wait_for(up_reader.read(_READ), idle)
            if not data:
                break
            writer.write(data)
            await asyncio.wait_for(writer.drain(), idle)
            bytes_out += len(data)
        await _finish_reading(reader, writer)
    except TimeoutError:
        close_reason = Reason.IDLE_TIMEOUT
    except OSError:
        close_reason = (
            Reason.UPSTREAM_RESET if not writer.transport.is_closing() else Reason.PEER_RESET
        )
    finally:
        up_writer.transport.abort()
    if closing:
        close_reason = closing[0]
    attempt.finish(
        decision, bytes_in=len(forwarded), bytes_out=bytes_out, close_reason=close_reason
    )


__all__ = ["NativeRoute", "native_outbound", "native_route", "read_request", "refusal_response"]
