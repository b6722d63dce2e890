"""Transparent-mode flows: connections that netfilter redirected to the sidecar's capture ports.

Outbound: the local service dialled some address as it always did; `netshield iptables install`
sent the connection here. The flow recovers the address (SO_ORIGINAL_DST), looks it up in the
service registry of the policy slice, and then: a mesh service gets mutual TLS to its sidecar,
expecting its identity (the same pipeline as explicit outbound listeners); a native service is
passed through in plaintext; anything else is refused (`transparent.mode: strict`, reason
DESTINATION_NOT_IN_MESH) or passed through in plaintext (`permissive`). Inbound: a connection to
one of the service's ports was redirected to the inbound capture port; the flow recovers the
original port, terminates mTLS, authorizes the caller, and relays plaintext only to
127.0.0.1:<that port>, the local service.

Guarantees: every connection gets exactly one record with `original_dst` set (None only if the
kernel had no original destination); a connection that was not redirected (someone dialled a
capture port directly) is refused before any byte moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from netshield.authz import ConnDecision, may_call_decision
from netshield.capture.destinations import (
    Destination,
    MeshDestination,
    NativeDestination,
    OutsideMesh,
    classify,
    registry_hostnames,
)
from netshield.capture.origdst import original_dst, was_redirected
from netshield.net.callers import caller_of
from netshield.netaddr import HostPort
from netshield.policyslice import PolicySlice
from netshield.reasons import Reason
from netshield.sidecar.connection import (
    Attempt,
    Direction,
    accept_plain,
    admit,
    close_socket,
    relay_plain_to,
)
from netshield.sidecar.flows import local_name, mesh_outbound, serve_inbound
from netshield.sidecar.native import NativeRoute, native_outbound
from netshield.sidecar.runtime import Runtime

log = logging.getLogger("netshield.sidecar")

RESOLVE_TIMEOUT_SECONDS = 2.0
LOCAL_SERVICE_HOST = "127.0.0.1"


def _not_redirected(what: str) -> str:
    return (
        f"the connection reached the transparent {what} port without being redirected (no "
        "SO_ORIGINAL_DST): only connections sent there by `netshield iptables install` are served"
    )


async def _resolve(hosts: set[str]) -> dict[str, frozenset[str]]:
    """Registry names -> their IPs (names that do not resolve in time are left out)."""
    loop = asyncio.get_running_loop()
    resolved: dict[str, frozenset[str]] = {}
    for host in sorted(hosts):
        with contextlib.suppress(OSError, TimeoutError, UnicodeError):
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS
            )
            resolved[host] = frozenset(str(info[4][0]) for info in infos)
    return resolved


async def destination_of(slice_: PolicySlice, original: HostPort) -> Destination:
    """`classify`, resolving registry host names only when no IP literal matched."""
    found = classify(slice_, original)
    if isinstance(found, OutsideMesh):
        names = registry_hostnames(slice_)
        if names:
            found = classify(slice_, original, await _resolve(names))
    return found


def _captured(
    rt: Runtime, sock: socket.socket, direction: Direction
) -> tuple[Attempt, HostPort] | None:
    """The attempt for a captured connection and the address its caller dialled; None (a deny
    record, the socket closed) if netfilter did not redirect it here. Outbound attempts name
    that address as `dst`; inbound ones learn theirs later."""
    caller = caller_of(sock)
    original = original_dst(sock)
    attempt = Attempt(
        rt,
        direction,
        listener=local_name(sock),
        src=caller.address,
        dst=str(original) if original and direction == "outbound" else "unknown",
        original_dst=str(original) if original else None,
    )
    if original is None or not was_redirected(sock, original):
        attempt.deny(Reason.DESTINATION_UNKNOWN, _not_redirected(direction))
        close_socket(sock)
        return None
    return attempt, original


async def transparent_outbound_flow(rt: Runtime, sock: socket.socket) -> None:
    """A captured outbound connection -> mTLS to the mesh service it was going to (or not)."""
    captured = _captured(rt, sock, "outbound")
    if captured is None:
        return
    attempt, original = captured
    try:
        contexts = admit(rt, attempt, sock)
        if contexts is None:
            return
        creds = contexts.credentials
        destination = await destination_of(creds.policy, original)
        if isinstance(destination, MeshDestination):
            pre = may_call_decision(
                creds.policy, destination.service, policy_version=creds.policy_version
            )
            if not pre.allowed:
                attempt.deny(pre.reason, pre.detail)
                close_socket(sock)
                return
            await mesh_outbound(
                rt, attempt, sock, contexts, destination.service, destination.address, pre
            )
            return
        if isinstance(destination, NativeDestination):  # the native route, with its WAF
            route = NativeRoute(destination.service, original, destination.waf)
            await native_outbound(rt, attempt, sock, route, creds.policy_version)
            return
        transparent = rt.config.transparent
        if transparent is None or transparent.mode == "strict":
            attempt.deny(
                Reason.DESTINATION_NOT_IN_MESH,
                f"{original} is no mesh service's address (services.<name>.addresses) and no "
                "native service; transparent.mode is strict, so it is refused",
            )
            close_socket(sock)
            return
        decision = ConnDecision(
            True,
            Reason.DESTINATION_NOT_IN_MESH,
            f"{original} is outside the mesh; transparent.mode is permissive, so it was passed "
            "through in plaintext",
        )
        await _pass_through(rt, attempt, sock, original, decision)
    except asyncio.CancelledError:
        attempt.abandon()
        raise


async def _pass_through(
    rt: Runtime, attempt: Attempt, sock: socket.socket, target: HostPort, decision: ConnDecision
) -> None:
    """Relay plaintext to where the service was going (native services, permissive mode)."""
    log.info("conn=%s outbound %s", attempt.conn_id, decision.detail)
    plain = await accept_plain(attempt, sock)
    if plain is None:
        return
    await relay_plain_to(rt, attempt, decision, plain, target)


async def transparent_inbound_flow(rt: Runtime, sock: socket.socket) -> None:
    """A captured inbound connection -> mTLS, authorize -> plaintext to the local service's port."""
    captured = _captured(rt, sock, "inbound")
    if captured is None:
        return
    attempt, original = captured
    transparent = rt.config.transparent
    ports = transparent.service_ports if transparent else ()
    if original.port not in ports:
        attempt.deny(
            Reason.DESTINATION_UNKNOWN,
            f"port {original.port} is not in transparent.service_ports {list(ports)}; only the "
            "local service's ports are relayed",
        )
        close_socket(sock)
        return
    upstream = HostPort(LOCAL_SERVICE_HOST, original.port)
    attempt.dst = str(upstream)
    await serve_inbound(rt, attempt, sock, lambda: upstream)
