"""Ingress WAF routes: a native HTTP client (no sidecar, no mesh certificate) calls a confidential
service through this sidecar. The sidecar terminates plain HTTP (``tls: off``) or server-only
TLS with its own mesh certificate (``tls: server``: the client verifies the mesh CA, presents
nothing), runs every request through the route's WAF (`netshield.sidecar.httproute`), and
forwards what passes over mesh mutual TLS to the destination service's sidecar, checking that
the server is that service and that this sidecar may call it (the same checks as an outbound
listener), on pooled keep-alive connections.

Guarantees: nothing is forwarded before the sidecar holds credentials and the policy lets this
service call the destination (else one deny record, no byte forwarded); a pooled connection is
reused only while its peer is still authorized and unrevoked; records have direction
``inbound`` and listener ``ingress:<service>``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from datetime import UTC, datetime
from typing import Any

from netshield.authz import authorize_outbound, may_call_decision
from netshield.net.callers import caller_of
from netshield.netaddr import HostPort
from netshield.reasons import Reason
from netshield.sidecar.connection import Attempt, admit, close_socket
from netshield.sidecar.httproute import HttpRoute, serve_http_route
from netshield.sidecar.native import _address
from netshield.sidecar.runtime import Runtime
from netshield.sidecar.upstreampool import Upstream
from netshield.sidecar.wafconfig import IngressConfig
from netshield.tls.contexts import TlsContexts
from netshield.tls.credentials import MeshCredentials
from netshield.tls.failures import translate
from netshield.tls.material import load_cert_chain_in_memory
from netshield.tls.peer import peer_info
from netshield.waf.crs import Exchange
from netshield.waf.engine import WafUnavailable

log = logging.getLogger("netshield.sidecar")


def server_only_context(creds: MeshCredentials, cache: dict[int, Any]) -> ssl.SSLContext:
    """A TLS server context presenting the sidecar's mesh certificate and asking for no client
    certificate (TLS 1.2+, no tickets); cached per credentials."""
    cached = cache.get(id(creds))
    if cached is not None and cached[0] is creds:
        context: ssl.SSLContext = cached[1]
        return context
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_NONE
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    load_cert_chain_in_memory(ctx, creds.chain_pem, creds.key)
    cache.clear()
    cache[id(creds)] = (creds, ctx)
    return ctx


async def dial_mesh(
    rt: Runtime, contexts: TlsContexts, service: str, target: HostPort
) -> Upstream | tuple[Reason, str]:
    """Mesh mTLS to `service`'s sidecar at `target`, checked like an outbound listener's."""
    limits = rt.config.limits
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                target.host,
                target.port,
                ssl=contexts.client,
                server_hostname="",
                ssl_handshake_timeout=limits.handshake_timeout.total_seconds(),
            ),
            limits.connect_timeout.total_seconds() + limits.handshake_timeout.total_seconds(),
        )
    except TimeoutError:
        return Reason.CONNECT_TIMEOUT, f"{service} at {target} did not answer in time"
    except ssl.SSLError as err:
        failure = translate(err, server_side=False)
        return failure.reason, f"{service} at {target}: {failure.detail}"
    except OSError as err:
        return Reason.UPSTREAM_UNREACHABLE, f"{target}: {err.strerror or err}"
    peer = peer_info(writer.get_extra_info("ssl_object"))
    creds = contexts.credentials
    decision = authorize_outbound(
        creds.policy,
        service,
        peer,
        rt.revocations.check,
        policy_version=creds.policy_version,
        now=datetime.now(UTC),
        feed_epoch=rt.revocations.min_epoch,
    )
    if not decision.allowed:
        writer.transport.abort()
        return decision.reason, decision.detail
    return Upstream(reader, writer, peer=peer)


async def ingress_flow(rt: Runtime, sock: socket.socket, ingress: IngressConfig) -> None:
    """One native client connection on an ingress route."""
    caller = caller_of(sock)
    attempt = Attempt(rt, "inbound", listener=ingress.name, src=caller.address, dst=ingress.service)
    try:
        await _serve(rt, attempt, sock, ingress)
    except asyncio.CancelledError:
        attempt.abandon()
        raise


async def _serve(
    rt: Runtime, attempt: Attempt, sock: socket.socket, ingress: IngressConfig
) -> None:
    contexts = admit(rt, attempt, sock)
    if contexts is None:
        return
    creds = contexts.credentials
    pre = may_call_decision(creds.policy, ingress.service, policy_version=creds.policy_version)
    target = ingress.address or creds.policy.address_of(ingress.service)
    if not pre.allowed or target is None:
        attempt.deny(
            pre.reason if not pre.allowed else Reason.DESTINATION_UNKNOWN,
            pre.detail if not pre.allowed else f"no address for {ingress.service} in the registry",
        )
        close_socket(sock)
        return
    attempt.dst = str(target)
    settings = ingress.waf
    engine = None
    if settings.mode != "off":
        try:
            engine = await rt.http.engine(settings, ingress.name)
        except WafUnavailable as err:
            attempt.deny(Reason.WAF_BLOCKED, str(err))
            close_socket(sock)
            return
    exchange = Exchange(client=_address(sock, "peer"), server=_address(sock, "local"))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16)
    protocol = asyncio.StreamReaderProtocol(reader)
    try:
        if ingress.tls == "server":
            ctx = server_only_context(creds, rt.http.tls_cache)
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=ctx,
                ssl_handshake_timeout=rt.config.limits.handshake_timeout.total_seconds(),
            )
        else:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    except (OSError, TimeoutError) as err:
        failure = translate(err, server_side=True) if isinstance(err, ssl.SSLError) else None
        attempt.deny(
            failure.reason if failure else Reason.PEER_RESET,
            failure.detail if failure else f"the client went away before the request ({err})",
        )
        close_socket(sock)
        return
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None:
        attempt.peer = peer_info(ssl_object)

    def recheck(conn: Upstream) -> bool:
        current = rt.holder.current()
        if current is None or conn.peer is None:
            return False
        return authorize_outbound(
            current.credentials.policy,
            ingress.service,
            conn.peer,
            rt.revocations.check,
            policy_version=current.credentials.policy_version,
            now=datetime.now(UTC),
            feed_epoch=rt.revocations.min_epoch,
        ).allowed

    route = HttpRoute(
        name=f"ingress to {ingress.service}",
        settings=settings,
        engine=engine,
        pool=rt.http.pool(("ingress", ingress.service, target)),
        dial=lambda: _dial_current(rt, ingress.service, target),
        exchange=exchange,
        recheck=recheck,
    )
    await serve_http_route(rt, attempt, reader, writer, route, pre)


async def _dial_current(
    rt: Runtime, service: str, target: HostPort
) -> Upstream | tuple[Reason, str]:
    contexts = rt.holder.current()
    if contexts is None:
        return Reason.NO_CREDENTIALS, "this sidecar holds no valid certificate"
    return await dial_mesh(rt, contexts, service, target)


__all__ = ["dial_mesh", "ingress_flow", "server_only_context"]
