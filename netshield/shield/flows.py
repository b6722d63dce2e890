"""The shield's per-connection flows, on its own event loop thread: the sidecar's pipeline with
an in-process socketpair where the sidecar has a loopback hop.

Outbound: the program's `connect` was decided (`rules`) and its socket grafted onto a pair end;
here the real TCP socket (the program's own, with its bind and options) is connected, mutual TLS
completed and the server checked to be the expected service (`sidecar.handshake.outbound_decision`,
the sidecar's own checks), and only then is the program's connect completed (`Outgoing.succeed`)
or failed with the refusal (`Outgoing.fail`). Inbound: each connection of a shielded listener is
admitted, its mTLS terminated and the caller authorized (`sidecar.handshake.inbound_decision`); only
an authorized caller becomes a pair end passed to the program's `accept`.

Guarantees: exactly one record per connection, the sidecar's (`Attempt`), with `proxy:
in-process`; a refused connection delivers no byte to either side; the program's connect
returns only after the decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field

from netshield.authz import ConnDecision, may_call_decision
from netshield.net.listeners import accept_loop
from netshield.net.streams import PlainStream, TlsStream
from netshield.netaddr import HostPort
from netshield.reasons import Reason
from netshield.shield.plumbing import Stall, discard_filler, pass_connection
from netshield.shield.refusals import refusal
from netshield.shield.rules import Native, Protected, Unprotected
from netshield.shield.sockets import Shielded
from netshield.sidecar.connection import (
    Attempt,
    accept_plain,
    admit,
    close_socket,
    dial,
    relay_connection,
)
from netshield.sidecar.handshake import inbound_decision, outbound_decision
from netshield.sidecar.native import NativeRoute, native_outbound
from netshield.sidecar.runtime import Runtime

log = logging.getLogger("netshield.shield")

OUTBOUND_LISTENER = "connect"  # how records name the program's own connects


def address_tuple(family: int, target: HostPort) -> tuple[str, int] | tuple[str, int, int, int]:
    """`target` as `getpeername` of a socket of `family` reports it."""
    if family == socket.AF_INET6:
        host = target.host if ":" in target.host else f"::ffff:{target.host}"
        return (host, target.port, 0, 0)
    return (target.host, target.port)


def _hostport(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(HostPort(str(address[0]), int(address[1])))
    return str(address)


@dataclass
class Outgoing:
    """One connect of the program being carried out on the shield's loop."""

    entry: Shielded
    family: int
    verdict: Protected | Native | Unprotected
    real: socket.socket  # the program's own TCP socket (a dup of its fd), not yet connected
    relay: socket.socket  # the shield's end of the pair
    stall: Stall | None = None

    def succeed(self, attempt: Attempt, local: object, *, relayed: bool = True) -> None:
        """Complete the program's connect: addresses known, the pair end released. `relayed`:
        the program's own socket carries the connection (not the native route's dial)."""
        entry = self.entry
        entry.peer = address_tuple(self.family, self.verdict.target)
        entry.local = local if isinstance(local, tuple) else None
        entry.real = self.real if relayed else None
        if local is not None:
            attempt.src = _hostport(local)
        if self.stall is not None:
            self.stall.release()
        entry.done.set()

    def fail(self, reason: Reason, detail: str) -> None:
        """Fail the program's connect with the refusal; one log line names the reason."""
        log.warning("netshield: connect to %s refused: %s: %s", self.verdict.target, reason, detail)
        self.entry.error = refusal(reason, detail)
        if self.stall is not None:
            self.stall.release()
        close_socket(self.relay)
        close_socket(self.real)
        self.entry.done.set()


async def outbound(rt: Runtime, out: Outgoing) -> None:
    """Carry out one connect of the program (see the module docstring)."""
    verdict = out.verdict
    attempt = Attempt(rt, "outbound", OUTBOUND_LISTENER, src="in-process", dst=str(verdict.target))
    try:
        contexts = admit(rt, attempt, out.relay)
        if contexts is None:
            reason, detail = attempt.refused or (Reason.NO_CREDENTIALS, "refused")
            out.fail(reason, detail)
            return
        creds = contexts.credentials
        if isinstance(verdict, Native):
            route = NativeRoute(verdict.service, verdict.target, verdict.waf)
            close_socket(out.real)
            out.succeed(attempt, None, relayed=False)  # the native route dials for itself
            await native_outbound(rt, attempt, out.relay, route, creds.policy_version)
            return
        t0 = time.monotonic()
        if isinstance(verdict, Protected):
            decision = may_call_decision(
                creds.policy, verdict.service, policy_version=creds.policy_version
            )
            if not decision.allowed:
                attempt.deny(decision.reason, decision.detail)
                out.fail(decision.reason, decision.detail)
                return
            upstream: TlsStream | PlainStream | tuple[Reason, str] = await dial(
                rt,
                verdict.target,
                lambda: TlsStream(contexts.client, server_side=False),
                sock=out.real,
            )
        else:
            decision = ConnDecision(True, Reason.DESTINATION_NOT_IN_MESH, verdict.detail)
            upstream = await dial(rt, verdict.target, PlainStream, sock=out.real)
        if isinstance(upstream, tuple):
            reason, detail = upstream
            attempt.finish(decision, bytes_in=0, bytes_out=0, close_reason=reason, detail=detail)
            out.fail(reason, detail)
            return
        if isinstance(upstream, TlsStream) and isinstance(verdict, Protected):
            decision = await outbound_decision(
                rt, attempt, upstream, contexts, verdict.service, verdict.target, t0
            )
            if not decision.allowed:
                out.fail(decision.reason, decision.detail)
                return
        local: object = None
        with contextlib.suppress(OSError):
            local = out.real.getsockname()
        out.succeed(attempt, local)
        if out.stall is not None:
            discard_filler(out.relay, out.stall.filler)
        plain = await accept_plain(attempt, out.relay)
        if plain is None:
            upstream.close()
            return
        await relay_connection(rt, attempt, decision, plain, upstream)
    except asyncio.CancelledError:
        attempt.abandon()
        if not out.entry.done.is_set():
            out.fail(Reason.DRAINED, "the shield stopped")
        raise


@dataclass
class Listening:
    """A shielded listening socket of the program, as the shield serves it."""

    label: str  # the bound address, as records name the listener
    real: socket.socket  # the real listening TCP socket
    channel: socket.socket  # the shield's end of the SOCK_SEQPACKET pair
    reals: dict[str, socket.socket]  # conn id -> real TCP socket, for the program's accept
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


async def serve_listener(rt: Runtime, listening: Listening) -> None:
    """Accept on the real socket until the program closes its listening socket."""
    loop = asyncio.get_running_loop()

    def channel_readable() -> None:
        try:
            data = listening.channel.recv(1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            listening.closed.set()

    loop.add_reader(listening.channel.fileno(), channel_readable)
    acceptor = asyncio.create_task(
        accept_loop(listening.real, lambda conn: rt.spawn(inbound(rt, listening, conn)))
    )
    try:
        await listening.closed.wait()
    finally:
        loop.remove_reader(listening.channel.fileno())
        acceptor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acceptor
        close_socket(listening.real)
        close_socket(listening.channel)
        log.info("shielded listener %s closed", listening.label)


async def _deliver(
    listening: Listening, end: socket.socket | None, meta: dict[str, object], timeout: float
) -> bool:
    """Pass one connection (or a refusal) to the program's accept; False if it cannot take it
    (its listening socket closed, or nothing accepted within `timeout`)."""
    loop = asyncio.get_running_loop()
    async with listening.lock:
        deadline = loop.time() + timeout
        while not listening.closed.is_set():
            try:
                pass_connection(listening.channel, end, meta)
                return True
            except BlockingIOError:
                pass
            except OSError:
                return False
            if loop.time() > deadline:
                return False
            writable = loop.create_future()
            loop.add_writer(listening.channel.fileno(), writable.set_result, None)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(writable, 0.5)
            finally:
                loop.remove_writer(listening.channel.fileno())
    return False


async def inbound(rt: Runtime, listening: Listening, conn: socket.socket) -> None:
    """One connection to a shielded listener: mTLS, authorize, then hand it to the program."""
    try:
        peer = conn.getpeername()
        local = conn.getsockname()
    except OSError:
        close_socket(conn)
        return
    attempt = Attempt(rt, "inbound", listening.label, src=_hostport(peer), dst=listening.label)
    accept_wait = rt.config.limits.handshake_timeout.total_seconds()
    try:
        contexts = admit(rt, attempt, conn)
        if contexts is None:
            if attempt.refused and attempt.refused[0] is Reason.NO_CREDENTIALS:
                reason, detail = attempt.refused
                log.warning("netshield: connection from %s refused: %s: %s", peer, reason, detail)
                await _deliver(listening, None, {"refused": reason.value, "detail": detail}, 0)
            return
        loop = asyncio.get_running_loop()
        try:
            _t, tls = await loop.connect_accepted_socket(
                lambda: TlsStream(contexts.server, server_side=True), conn
            )
        except OSError as err:
            attempt.deny(Reason.PEER_RESET, f"the caller went away before the handshake ({err})")
            close_socket(conn)
            return
        decision = await inbound_decision(rt, attempt, tls, contexts)
        if not decision.allowed:
            return
        app_end, relay = socket.socketpair()
        meta: dict[str, object] = {
            "conn": attempt.conn_id,
            "peer": list(peer),
            "local": list(local),
            "identity": str(attempt.peer.spiffe_id) if attempt.peer else None,
        }
        listening.reals[attempt.conn_id] = conn
        try:
            delivered = await _deliver(listening, app_end, meta, accept_wait)
        finally:
            app_end.close()
        if not delivered:
            listening.reals.pop(attempt.conn_id, None)
            relay.close()
            tls.close()
            attempt.finish(
                decision,
                bytes_in=0,
                bytes_out=0,
                close_reason=Reason.UPSTREAM_UNREACHABLE,
                detail="the program did not accept the connection (its listening socket "
                f"closed, or nothing accepted within {accept_wait:g} s)",
            )
            return
        relay.setblocking(False)
        plain = await accept_plain(attempt, relay)
        if plain is None:
            tls.close()
            return
        await relay_connection(rt, attempt, decision, tls, plain)
    except asyncio.CancelledError:
        attempt.abandon()
        raise
    finally:
        listening.reals.pop(attempt.conn_id, None)


__all__ = [
    "OUTBOUND_LISTENER",
    "Listening",
    "Outgoing",
    "address_tuple",
    "inbound",
    "outbound",
    "serve_listener",
]
