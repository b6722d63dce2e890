"""Egress WAF routes (DESIGN §4): HTTP/1.1 from the local service to a native (non-attested)
service named in the policy's ``native_services``, through the WAF when the entry says
``waf: true``.

The native service is reached directly (no mTLS: it has no sidecar). With the WAF on, the
connection is served by `netshield.sidecar.httproute` with the sidecar's WAF settings for that
service (``waf:`` and ``waf.routes.<service>`` in the sidecar config): keep-alive to the caller,
a pooled keep-alive connection to the native service, every request inspected before a byte of
it is forwarded. With ``waf: false`` in the policy the route is a plain TCP relay.
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
from netshield.sidecar.connection import Attempt, accept_plain, relay_plain_to
from netshield.sidecar.httproute import HttpRoute, serve_http_route
from netshield.sidecar.runtime import Runtime
from netshield.sidecar.upstreampool import Upstream
from netshield.waf.crs import Exchange
from netshield.waf.engine import WafUnavailable

log = logging.getLogger("netshield.sidecar")


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


async def dial_plain(rt: Runtime, target: HostPort) -> Upstream | tuple[Reason, str]:
    """A plain TCP connection to a native service, or why not."""
    timeout = rt.config.limits.connect_timeout.total_seconds()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), timeout
        )
    except TimeoutError:
        return (
            Reason.CONNECT_TIMEOUT,
            f"{target} did not accept the connection within {timeout:g} s",
        )
    except OSError as err:
        return Reason.UPSTREAM_UNREACHABLE, f"{target}: {err.strerror or err}"
    return Upstream(reader, writer)


def _address(sock: socket.socket, which: str) -> tuple[str, int]:
    try:
        name = sock.getpeername() if which == "peer" else sock.getsockname()
    except OSError:
        return ("127.0.0.1", 0)
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else ("127.0.0.1", 0)


async def native_outbound(
    rt: Runtime,
    attempt: Attempt,
    sock: socket.socket,
    route: NativeRoute,
    policy_version: int | None,
) -> None:
    """Serve one admitted connection on a native route (see the module docstring)."""
    attempt.dst = str(route.address)
    settings = rt.config.waf.for_native(route.name)
    waf = "off" if not route.waf else settings.mode
    decision = ConnDecision(
        True,
        Reason.OK,
        f"{route.name} is a native service (native_services.{route.name}, "
        f"waf {waf}, policy version {policy_version})",
    )
    if not route.waf:
        plain = await accept_plain(attempt, sock)
        if plain is not None:
            await relay_plain_to(rt, attempt, decision, plain, route.address)
        return
    engine = None
    if settings.mode != "off":
        try:
            engine = await rt.http.engine(settings, f"native service {route.name}")
        except WafUnavailable as err:
            attempt.deny(Reason.WAF_BLOCKED, f"{err}; the route refuses traffic until it loads")
            with contextlib.suppress(OSError):
                sock.close()
            return
    exchange = Exchange(client=_address(sock, "peer"), server=_address(sock, "local"))
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except OSError as err:
        attempt.deny(Reason.PEER_RESET, f"the local caller went away ({err})")
        with contextlib.suppress(OSError):
            sock.close()
        return
    http_route = HttpRoute(
        name=f"native service {route.name}",
        settings=settings,
        engine=engine,
        pool=rt.http.pool(("native", route.address)),
        dial=lambda: dial_plain(rt, route.address),
        exchange=exchange,
    )
    await serve_http_route(rt, attempt, reader, writer, http_route, decision)


__all__ = ["NativeRoute", "dial_plain", "native_outbound", "native_route"]
