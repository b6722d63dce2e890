"""`netshield sidecar --config FILE`: compose a sidecar and run it until SIGTERM.

Start-up: validate the config, raise the file descriptor limit (`netshield.net.fdlimit`), load the
platform, measure the workload, start the admin listener,
learn the trust domain from the CAS, attest (retrying until the CAS answers), then bind the inbound
and outbound listeners and print one JSON ready line. Running: the agent renews and follows
revocations; revoked or stale peers are cut off; if the sidecar's own certificate expires, live
connections are closed and new ones refused (fail closed). SIGHUP reloads the config (the old one
stays on any problem); SIGTERM drains: stop accepting, let live connections finish up to
limits.drain_timeout, close the rest, flush the records, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from netshield.agent.agent import Agent
from netshield.agent.attest import InProcessQuoter, Quoter, Workload
from netshield.agent.credentials import CredentialHolder
from netshield.agent.revocations import RevocationState
from netshield.agent.rotation import backoff
from netshield.agent.witness import CasWitness
from netshield.attestation.measurement import measure
from netshield.attestation.platform import load_platform
from netshield.casclient import CasClient, CasUnreachable
from netshield.errors import ConfigError, NetshieldError
from netshield.net.fdlimit import descriptors_needed, raise_fd_limit
from netshield.net.listeners import accept_loop, bind_tcp, bind_unix, bound_address
from netshield.netaddr import HostPort
from netshield.quoting.client import PlatformSocket
from netshield.quoting.tsm import TsmQuoter
from netshield.reasons import Reason
from netshield.recordlog import RecordSink
from netshield.sidecar.admin import AdminProviders, AdminServer
from netshield.sidecar.config import (
    OutboundConfig,
    SidecarConfig,
    TransparentConfig,
    load_sidecar_config,
)
from netshield.sidecar.flows import inbound_flow, outbound_flow
from netshield.sidecar.ingress import ingress_flow
from netshield.sidecar.livetable import ConnectionTable
from netshield.sidecar.metrics import SidecarMetrics
from netshield.sidecar.runtime import Runtime
from netshield.sidecar.transparent import transparent_inbound_flow, transparent_outbound_flow
from netshield.sidecar.tunnels import retire_tunnels
from netshield.sidecar.wafconfig import IngressConfig
from netshield.sidecar.wafroutes import WafRoutes
from netshield.tls.material import cas_client_context
from netshield.waf.engine import WafUnavailable

log = logging.getLogger("netshield.sidecar")

HOUSEKEEPING_SECONDS = 1.0
RESTART_ONLY = ("service", "cas", "platform", "workload", "admin", "records")


@dataclass
class Listeners:
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for sock in self.sockets.values():
            with contextlib.suppress(OSError):
                sock.close()


async def discover_trust_domain(config: SidecarConfig, stop: asyncio.Event) -> str | None:
    """Ask the CAS which trust domain it serves (retrying with backoff); None if stopped first."""
    ctx = cas_client_context(ca_pem=config.cas.ca.read_bytes())
    attempt = 0
    while not stop.is_set():
        try:
            async with CasClient(config.cas.urls, ssl_context=ctx, timeout=10) as cas:
                ready = await cas.ready()
            return str(ready["trust_domain"])
        except (CasUnreachable, KeyError, NetshieldError) as err:
            delay = backoff(attempt, rand=0.5).total_seconds()
            attempt += 1
            log.warning(
                "CAS %s not reachable yet (%s); retrying in %.1f s",
                ", ".join(config.cas.urls),
                err,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return None


def bind_listeners(rt: Runtime, config: SidecarConfig) -> Listeners:
    listeners = Listeners()
    try:
        if config.inbound is not None:
            inbound = config.inbound
            sock = bind_tcp(inbound.listen, what="inbound.listen")
            listeners.sockets["inbound"] = sock
            listeners.tasks.append(
                asyncio.create_task(
                    accept_loop(sock, lambda s: rt.spawn(inbound_flow(rt, s, inbound)))
                )
            )
        for index, out in enumerate(config.outbound):
            name = f"outbound:{out.service}"
            n = 2
            base = name
            while name in listeners.sockets:  # several listeners for one destination
                name = f"{base}#{n}"
                n += 1
            if out.unix is not None:
                sock = bind_unix(
                    out.unix,
                    what=name,
                    mode=out.unix_mode,
                    owner=out.unix_owner,
                    group=out.unix_group,
                )
            else:
                assert out.listen is not None
                sock = bind_tcp(out.listen, what=name)
            listeners.sockets[name] = sock
            listeners.tasks.append(
                asyncio.create_task(accept_loop(sock, _outbound_acceptor(rt, index, out)))
            )
        for index, ingress in enumerate(config.ingress):
            sock = bind_tcp(ingress.listen, what=f"ingress[{index}].listen")
            name, n = ingress.name, 2
            while name in listeners.sockets:  # several ingress routes to one service
                name, n = f"{ingress.name}#{n}", n + 1
            listeners.sockets[name] = sock
            listeners.tasks.append(
                asyncio.create_task(accept_loop(sock, _ingress_acceptor(rt, ingress)))
            )
        if config.transparent is not None:
            bind_transparent(rt, config.transparent, listeners)
    except BaseException:
        listeners.close()
        raise
    return listeners


def bind_transparent(rt: Runtime, t: TransparentConfig, listeners: Listeners) -> None:
    """The capture listeners: outbound on loopback (IPv4 and IPv6), inbound on every address
    when the service has ports. An IPv6 listener the host cannot bind is skipped with a warning
    (its redirected connections are then refused: fail closed)."""
    plan = [
        ("transparent:outbound", HostPort("127.0.0.1", t.outbound_port), transparent_outbound_flow),
        ("transparent:outbound6", HostPort("::1", t.outbound_port), transparent_outbound_flow),
    ]
    if t.service_ports:
        plan += [
            ("transparent:inbound", HostPort("0.0.0.0", t.inbound_port), transparent_inbound_flow),  # noqa: S104
            ("transparent:inbound6", HostPort("::", t.inbound_port), transparent_inbound_flow),
        ]
    for name, address, flow in plan:
        try:
            sock = bind_tcp(address, what=name)
        except NetshieldError as err:
            if not name.endswith("6"):
                raise
            log.warning("%s; IPv6 connections will not be captured", err)
            continue
        listeners.sockets[name] = sock
        listeners.tasks.append(asyncio.create_task(accept_loop(sock, _capture_acceptor(rt, flow))))


def _capture_acceptor(
    rt: Runtime, flow: Callable[[Runtime, socket.socket], Coroutine[Any, Any, None]]
) -> Callable[[socket.socket], None]:
    return lambda sock: rt.spawn(flow(rt, sock))


def _ingress_acceptor(rt: Runtime, ingress: IngressConfig) -> Callable[[socket.socket], None]:
    return lambda sock: rt.spawn(ingress_flow(rt, sock, ingress))


def _outbound_acceptor(
    rt: Runtime, index: int, out: OutboundConfig
) -> Callable[[socket.socket], None]:
    return lambda sock: rt.spawn(outbound_flow(rt, sock, index, out))


def reload_config(rt: Runtime, path: Path) -> None:
    """SIGHUP: validate, then swap what can change live; keep the old config on any problem."""
    try:
        new = load_sidecar_config(path)
    except (ConfigError, NetshieldError, OSError) as err:
        log.error("SIGHUP: kept the old configuration: %s", err)
        return
    old = rt.config
    restart = [name for name in RESTART_ONLY if getattr(new, name) != getattr(old, name)]
    if (new.inbound is None) != (old.inbound is None) or (
        new.inbound and old.inbound and new.inbound.listen != old.inbound.listen
    ):
        restart.append("inbound.listen")
    if [o.listener for o in new.outbound] != [o.listener for o in old.outbound]:
        restart.append("outbound listeners")
    if _capture_ports(new.transparent) != _capture_ports(old.transparent):
        restart.append("transparent capture ports")
    if restart:
        log.error(
            "SIGHUP: kept the old configuration: changing %s needs a restart", ", ".join(restart)
        )
        return
    rt.config = new
    rt.apply_limits(new)
    log.warning(
        "SIGHUP: reloaded configuration from %s (limits, inbound.upstream, outbound addresses, "
        "transparent mode and service ports)",
        path,
    )


def make_quoter(config: SidecarConfig) -> Quoter:
    """Where this sidecar's quotes come from, exactly as the config chose (never a fallback)."""
    if config.platform.socket is not None:
        log.info(
            "quotes from the host's platform service at %s (it measures the workload itself)",
            config.platform.socket,
        )
        return PlatformSocket(config.platform.socket)
    if config.platform.tsm is not None:
        log.info("quotes from the hardware through configfs-tsm at %s", config.platform.tsm)
        return TsmQuoter(config.platform.tsm)
    assert config.platform.in_process is not None and config.workload is not None  # the parser
    platform = load_platform(config.platform.in_process)
    w = config.workload
    measurement = measure(w.path, list(w.cmd))
    log.warning(
        "platform %s held in process (platform.in_process): this sidecar holds the platform key "
        "and measures its workload itself -- for tests and demos, not a deployment",
        platform.platform_id,
    )
    log.info("workload %s measures %s", config.service, measurement)
    return InProcessQuoter(
        platform, Workload(config.service, measurement, w.signer, w.product_id, w.svn)
    )


def _capture_ports(t: TransparentConfig | None) -> tuple[int, int, bool] | None:
    """What of the transparent section is bound at start (mode and service_ports reload live)."""
    return None if t is None else (t.outbound_port, t.inbound_port, bool(t.service_ports))


def seconds_to_expiry(holder: CredentialHolder) -> float | None:
    """Seconds until the held certificate expires (negative once it has), None without one."""
    creds = holder.credentials
    return (creds.not_after - datetime.now(UTC)).total_seconds() if creds else None


def identity_of(holder: CredentialHolder) -> dict[str, Any] | None:
    """The public facts of the valid certificate held, for /identity; None without one."""
    creds = holder.credentials
    if creds is None or holder.current() is None:
        return None
    return {
        "spiffe_id": str(creds.spiffe_id),
        "serial": format(creds.serial, "x"),
        "not_after": creds.not_after.isoformat(),
        "measurement": creds.measurement,
        "epoch": creds.epoch,
        "policy_version": creds.policy_version,
    }


def make_agent(
    config: SidecarConfig,
    quoter: Quoter,
    trust_domain: str,
    holder: CredentialHolder,
    revocations: RevocationState,
    min_version: ssl.TLSVersion,
    witness: CasWitness | None = None,
    tunnels: bool = False,
) -> Agent:
    """The agent that attests `config.service` and keeps its credentials, as `config` says
    (its rollback witness read from `cas.witness_file` unless given); with `tunnels` its
    contexts accept and offer the tunnel ALPN id (the sidecar's, not the in-process shield's)."""
    return Agent(
        config.cas.urls,
        config.cas.ca.read_bytes(),
        quoter,
        config.service,
        trust_domain,
        holder,
        revocations,
        min_version=min_version,
        resumption=config.tls.resumption,
        tunnels=tunnels,
        fraction=config.renewal.fraction,
        jitter=config.renewal.jitter,
        witness=witness if witness is not None else CasWitness.load(config.cas.witness_file),
    )


async def run_sidecar(
    config_path: Path, *, out: TextIO | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run until SIGTERM/SIGINT (or until `stop` is set, for embedding: then no signal handlers)."""
    config = load_sidecar_config(config_path)
    raise_fd_limit(descriptors_needed(config.limits.max_connections, config.limits.max_handshakes))
    quoter = make_quoter(config)
    witness = CasWitness.load(config.cas.witness_file)
    holder = CredentialHolder()
    revocations = RevocationState()
    table = ConnectionTable(limit=config.limits.max_connections)
    agent_box: list[Agent] = []
    bound: dict[str, str] = {}

    def ready() -> tuple[bool, str]:
        if agent_box and agent_box[0].cas_rolled_back is not None:
            return False, agent_box[0].cas_rolled_back  # "CAS_ROLLED_BACK: <why>", the cause
        state = holder.state()
        if not state.ready:
            return False, state.reason.value if state.reason else state.detail
        if not agent_box or not agent_box[0].synced.is_set():
            return False, "revocation feed not synced yet"
        if "inbound" not in bound and not any(
            k.startswith(("outbound", "transparent", "ingress")) for k in bound
        ):
            return False, "listeners not bound yet"
        return True, ""

    sink = RecordSink(
        config.records.file,
        stdout=config.records.stdout,
        max_bytes=config.records.max_bytes,
        keep=config.records.keep,
    )
    rt_box: list[Runtime] = []
    metrics = SidecarMetrics(
        seconds_to_expiry=functools.partial(seconds_to_expiry, holder),
        renewals=lambda: agent_box[0].renewals if agent_box else 0,
        renewal_failures=lambda: agent_box[0].renewal_failures if agent_box else 0,
        ready=lambda: ready()[0],
        cas_rolled_back=lambda: bool(agent_box and agent_box[0].cas_rolled_back is not None),
        pending_handshakes=lambda: len(rt_box[0].handshakes) if rt_box else 0,
        records_written=lambda: sink.written,
        records_dropped=lambda: sink.dropped,
        records_aggregated=lambda: rt_box[0].denials.folded if rt_box else {},
    )
    rt = Runtime(
        config=config,
        holder=holder,
        revocations=revocations,
        table=table,
        sink=sink,
        metrics=metrics,
        http=WafRoutes(config.waf, config.ingress),
    )
    rt_box.append(rt)

    def status() -> dict[str, Any]:
        agent_status = agent_box[0].status() if agent_box else {}
        return {
            "service": rt.config.service,
            "agent": agent_status,
            "listen": bound,
            "connections": table.count(),
            "records_written": sink.written,
        }

    providers = AdminProviders(
        ready=ready,
        metrics=metrics.render,
        connections=table.snapshot,
        identity=functools.partial(identity_of, holder),
        status=status,
    )
    loop = asyncio.get_running_loop()
    # The WAF engines load (CRS: ~0.3 s of CPU) in a thread while the sidecar attests; no
    # listener is bound before they all loaded, and one that cannot load stops the sidecar.
    waf_loading = loop.run_in_executor(rt.http.executor, rt.http.load_configured)
    signals = stop is None
    stop = stop or asyncio.Event()
    if signals:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: reload_config(rt, config_path))
    admin: AdminServer | None = None
    listeners: Listeners | None = None
    agent_task: asyncio.Task[None] | None = None
    housekeeping: asyncio.Task[None] | None = None
    expiring: asyncio.Task[None] | None = None
    try:
        try:
            admin = await AdminServer.start(providers, config.admin.listen)
        except OSError as err:
            raise NetshieldError(
                f"admin.listen {config.admin.listen}: cannot listen ({err.strerror})"
            ) from None
        bound["admin"] = str(admin.address)
        trust_domain = await discover_trust_domain(config, stop)
        if trust_domain is None:
            return
        min_version = (
            ssl.TLSVersion.TLSv1_2
            if config.inbound and config.inbound.tls_min_version == "1.2"
            else ssl.TLSVersion.TLSv1_3
        )
        agent = make_agent(
            config,
            quoter,
            trust_domain,
            holder,
            revocations,
            min_version,
            witness=witness,
            tunnels=config.tunnels.enabled,
        )
        agent_box.append(agent)
        agent.on_revocation(lambda _event: _recheck(rt))
        agent.on_epoch(lambda _epoch: _recheck(rt))
        agent_task = asyncio.create_task(agent.run())
        if not await _first_credentials(holder, agent, agent_task, stop):
            return
        try:
            waf_lines = await waf_loading
        except WafUnavailable as err:
            raise NetshieldError(str(err), hint="") from None
        for line in waf_lines:
            log.info("WAF route %s", line)
        expiring = asyncio.create_task(_expire_handshakes(rt))
        listeners = bind_listeners(rt, config)
        bound.update({name: bound_address(sock) for name, sock in listeners.sockets.items()})
        housekeeping = asyncio.create_task(_housekeeping(rt))
        creds = holder.credentials
        ready_line: dict[str, Any] = {
            "event": "ready",
            "component": "sidecar",
            "service": config.service,
            "spiffe_id": str(creds.spiffe_id) if creds else None,
            "listen": bound,
        }
        if waf_lines:
            ready_line["waf"] = waf_lines
        print(json.dumps(ready_line), file=out or sys.stdout, flush=True)
        log.info("sidecar %s ready: %s", config.service, bound)
        await stop.wait()
        await _drain(rt, listeners)
    finally:
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        if listeners is not None:
            listeners.close()
        for task in (housekeeping, expiring, agent_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for task in list(rt.tasks):
            task.cancel()
        if rt.tasks:
            await asyncio.wait(list(rt.tasks), timeout=5)
        if admin is not None:
            await admin.close()
        if not waf_loading.done():
            waf_loading.cancel()
        elif not waf_loading.cancelled():
            waf_loading.exception()  # retrieved: a failure was raised above, or never reached
        rt.http.close()
        rt.write_due_denials(final=True)
        sink.close()
        for o in config.outbound:
            if o.unix is not None:
                with contextlib.suppress(OSError):
                    o.unix.unlink()


def _recheck(rt: Runtime) -> None:
    closed = rt.table.recheck(rt.revocations.check)
    if closed:
        log.warning("closed %d live connection(s) of revoked or stale peers", closed)
    contexts = rt.holder.current()
    if contexts is None:
        return
    creds = contexts.credentials
    if rt.revocations.revoked(
        serial=creds.serial, service=creds.spiffe_id.service, platform_id=None
    ):
        contexts.tickets.clear()  # this sidecar itself is revoked: resume nothing
    else:
        contexts.tickets.purge(lambda peer: rt.revocations.check(peer) is not None)


async def _first_credentials(
    holder: CredentialHolder, agent: Agent, agent_task: asyncio.Task[None], stop: asyncio.Event
) -> bool:
    """Wait for the first attestation (and the first feed answer); False if stopped first."""
    while holder.current() is None or not agent.synced.is_set():
        if stop.is_set():
            return False
        if agent_task.done():
            agent_task.result()  # surfaces the agent's error
            return False
        await asyncio.sleep(0.05)
    return True


async def _housekeeping(rt: Runtime) -> None:
    """Fail closed when the sidecar's own certificate expires, close a live connection when its
    peer's certificate does, retire tunnels of older credentials (each within
    HOUSEKEEPING_SECONDS), and write due denial aggregates."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
        rt.write_due_denials()
        if rt.holder.current() is None and rt.table.count():
            closed = rt.table.close_all(Reason.CREDENTIALS_EXPIRED)
            log.error("own certificate expired: closed %d live connection(s)", closed)
        closed = rt.table.close_expired_peers(datetime.now(UTC))
        if closed:
            log.warning("closed %d live connection(s) whose peer's certificate expired", closed)
        if len(rt.tunnels):
            retired = retire_tunnels(rt)
            if retired:
                log.info(
                    "credentials renewed: %d tunnel(s) drain, new streams get new ones", retired
                )


HANDSHAKE_SWEEP_SECONDS = 0.1


async def _expire_handshakes(rt: Runtime) -> None:
    """Drop pending handshakes past their deadline, which shrinks as the budget fills."""
    while True:
        wait = rt.handshakes.next_expiry(time.monotonic())
        await asyncio.sleep(
            HANDSHAKE_SWEEP_SECONDS if wait is None else min(wait, HANDSHAKE_SWEEP_SECONDS)
        )
        rt.handshakes.expire(time.monotonic())


async def _drain(rt: Runtime, listeners: Listeners) -> None:
    rt.stopping.set()
    listeners.close()
    timeout = rt.config.limits.drain_timeout.total_seconds()
    live = rt.table.count()
    log.warning("draining: %d live connection(s), up to %g s", live, timeout)
    if not await rt.table.wait_empty(timeout):
        closed = rt.table.close_all(Reason.DRAINED)
        log.warning("drain timeout: closed %d connection(s)", closed)
        await rt.table.wait_empty(5)
    if rt.tasks:
        await asyncio.wait(list(rt.tasks), timeout=5)
