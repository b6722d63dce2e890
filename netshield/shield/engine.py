"""The in-process shield's composition: its event loop thread (agent, admin listener, flows) and
the decisions taken on the program's own threads when its sockets meet the network.

`start(config, workload_path=..., cmd=...)` starts a daemon thread running an asyncio loop that
attests this process at the CAS (the sidecar's agent, unchanged: key in memory, renewal by a
fresh attestation, the revocation feed), serves the optional admin listener (/healthz /readyz
/metrics /connections /identity /status) and runs the connection flows; then it installs the
socket hooks (`netshield.shield.sockets`) and waits, up to `startup_timeout`, for the first
attestation to succeed or fail. Either way the program runs: without credentials each of its
connects, listeners' connections and datagrams is refused with NO_CREDENTIALS and one log line
naming the agent's last error (the CAS's reason code), never sent in plaintext.

Guarantees: the shield's own sockets (CAS, admin, the real TCP sockets of the flows) live on its
thread, which the hooks leave alone; `stop()` is idempotent, closes live connections (DRAINED),
flushes the records and removes the hooks; a forked child refuses every network operation with
SHIELD_NOT_INHERITED (threads do not survive fork: the child has no agent and no relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from netshield.agent.agent import Agent
from netshield.agent.attest import Quoter
from netshield.agent.credentials import CredentialHolder
from netshield.agent.revocations import RevocationState
from netshield.errors import NetshieldError
from netshield.netaddr import HostPort
from netshield.policyslice import PolicySlice
from netshield.reasons import Reason
from netshield.recordlog import RecordSink
from netshield.shield.bypass import SCAN_SECONDS, SocketRegistry, cut, find_bypasses, socket_fds
from netshield.shield.config import ShieldConfig
from netshield.shield.extensions import library_of, refusal_text
from netshield.shield.flows import (
    OUTBOUND_LISTENER,
    Listening,
    Outgoing,
    outbound,
    serve_listener,
)
from netshield.shield.plumbing import graft, receive_connection, stall
from netshield.shield.refusals import refusal
from netshield.shield.rules import (
    Native,
    Refused,
    addresses_for_name,
    decide_datagram,
    decide_listen,
    decide_outbound,
    listen_refusal,
    no_credentials,
)
from netshield.shield.sockets import Address, Shielded, SocketHooks
from netshield.sidecar.admin import AdminProviders, AdminServer
from netshield.sidecar.app import (
    _housekeeping,
    _recheck,
    discover_trust_domain,
    identity_of,
    make_agent,
    make_quoter,
    seconds_to_expiry,
)
from netshield.sidecar.config import SidecarConfig
from netshield.sidecar.connection import Attempt
from netshield.sidecar.livetable import ConnectionTable
from netshield.sidecar.metrics import SidecarMetrics
from netshield.sidecar.runtime import Runtime

log = logging.getLogger("netshield.shield")

STARTUP_TIMEOUT = 30.0
RESOLVE_TTL = 30.0
STOP_TIMEOUT = 10.0
EXIT_GRACE = 2.0  # seconds live connections get to finish when the program exits


class ShieldStartError(NetshieldError):
    """The shield could not start (bad config, admin port taken, hooks already installed)."""


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


class Engine:
    """One process's shield. Methods without a leading underscore that take a socket run on the
    program's threads (called by the hooks); the coroutines run on the shield's loop."""

    def __init__(self, config: ShieldConfig, *, workload_path: Path, cmd: tuple[str, ...]) -> None:
        self.config = config
        self.view = config.sidecar_view(workload_path, cmd)
        self.hooks = SocketHooks()
        self.holder = CredentialHolder()
        self.revocations = RevocationState()
        self.agent: Agent | None = None
        self.admin_address: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rt: Runtime | None = None
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._started = threading.Event()
        self._first_outcome = threading.Event()
        self._stopped = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._forked = False
        self._pid = os.getpid()
        self._resolved: tuple[float, dict[str, frozenset[str]]] = (0.0, {})
        self._inbound_reals: dict[str, socket.socket] = {}
        self._reported: set[str] = set()
        self._sockets = SocketRegistry()
        self._preexisting: set[int] = set()
        self._flagged: set[int] = set()

    # --- lifecycle (program thread) --------------------------------------------------------
    def start(self, *, startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self._preexisting = set(socket_fds().values())  # older than the shield: not its business
        sys.addaudithook(self._audit)  # first: every socket object from now on is accounted for
        self._thread = threading.Thread(
            target=self._thread_main, name="netshield-shield", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise ShieldStartError(str(self._failure)) from None
        try:
            self.hooks.install(self)
        except RuntimeError as err:
            self.stop()
            raise ShieldStartError(str(err)) from None
        os.register_at_fork(after_in_child=self._after_fork)
        if not self._first_outcome.wait(startup_timeout):
            log.warning(
                "netshield: not attested after %g s (CAS %s); connections are refused until it is",
                startup_timeout,
                self.config.cas.url,
            )

    def stop(self) -> None:
        """Close live connections, flush the records, remove the hooks (idempotent)."""
        if os.getpid() != self._pid:
            return
        self.hooks.uninstall()
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None and not self._stopped.is_set():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
            self._stopped.wait(STOP_TIMEOUT)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)

    def _after_fork(self) -> None:
        if self.hooks.installed:
            self._forked = True

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        """Account for every Python socket object; refuse (or report once) C extensions with
        sockets of their own, as they import."""
        if event == "socket.__new__" and args:
            self._sockets.add(args[0])
            return
        if event != "import" or not self.hooks.installed or not args:
            return
        module = args[0]
        library = library_of(module) if isinstance(module, str) else None
        if library is None:
            return
        text = refusal_text(module, library)
        first = module not in self._reported
        self._reported.add(module)
        if self.config.c_extensions == "allow":
            if first:
                log.warning("%s (allowed: c_extensions is allow)", text.split(";")[0])
            return
        if first:
            log.warning("%s", text)
        raise ImportError(text, name=module)

    def exempt(self) -> bool:
        return threading.get_ident() == self._thread_id

    # --- the loop thread --------------------------------------------------------------------
    def _thread_main(self) -> None:
        self._thread_id = threading.get_ident()
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported to start(), or logged when already running
            if not self._started.is_set():
                self._failure = err
                self._started.set()
            else:
                log.error("netshield: the shield's loop stopped: %s", err)
        finally:
            self._first_outcome.set()
            self._stopped.set()

    async def _main(self) -> None:
        config = self.view
        self.loop = asyncio.get_running_loop()
        self._stop = stop = asyncio.Event()
        holder = self.holder

        def ready() -> tuple[bool, str]:
            state = holder.state()
            if not state.ready:
                return False, state.reason.value if state.reason else state.detail
            if self.agent is None or not self.agent.synced.is_set():
                return False, "revocation feed not synced yet"
            return True, ""

        metrics = SidecarMetrics(
            seconds_to_expiry=functools.partial(seconds_to_expiry, holder),
            renewals=lambda: self.agent.renewals if self.agent else 0,
            renewal_failures=lambda: self.agent.renewal_failures if self.agent else 0,
            ready=lambda: ready()[0],
        )
        sink = RecordSink(
            config.records.file,
            stdout=config.records.stdout,
            max_bytes=config.records.max_bytes,
            keep=config.records.keep,
        )
        table = ConnectionTable(limit=config.limits.max_connections)
        rt = Runtime(
            config=config,
            holder=holder,
            revocations=self.revocations,
            table=table,
            sink=sink,
            metrics=metrics,
            proxy="in-process",
        )
        self.rt = rt
        admin: AdminServer | None = None
        tasks: list[asyncio.Task[Any]] = []
        try:
            quoter = make_quoter(config)
            if self.config.admin is not None:
                try:
                    admin = await AdminServer.start(
                        self._providers(ready, metrics, table), self.config.admin.listen
                    )
                except OSError as err:
                    raise NetshieldError(
                        f"admin.listen {self.config.admin.listen}: cannot listen ({err.strerror})"
                    ) from None
                self.admin_address = str(admin.address)
            self._started.set()
            tasks.append(asyncio.create_task(self._attest(config, quoter, stop)))
            tasks.append(asyncio.create_task(_housekeeping(rt)))
            tasks.append(asyncio.create_task(self._watch_bypasses()))
            await stop.wait()
        finally:
            rt.stopping.set()
            grace = min(config.limits.drain_timeout.total_seconds(), EXIT_GRACE)
            if table.count() and not await table.wait_empty(grace):
                log.info("netshield: %d connection(s) still open at exit", table.count())
            closed = table.close_all(Reason.DRAINED)
            if closed:
                log.info("netshield: closed %d live connection(s) at exit", closed)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if rt.tasks:
                await asyncio.wait(list(rt.tasks), timeout=5)
            if admin is not None:
                await admin.close()
            sink.close()

    async def _attest(self, config: SidecarConfig, quoter: Quoter, stop: asyncio.Event) -> None:
        trust_domain = await discover_trust_domain(config, stop)
        if trust_domain is None:
            return
        min_version = (
            ssl.TLSVersion.TLSv1_2
            if self.config.inbound.tls_min_version == "1.2"
            else ssl.TLSVersion.TLSv1_3
        )
        agent = make_agent(config, quoter, trust_domain, self.holder, self.revocations, min_version)
        self.agent = agent
        assert self.rt is not None
        rt = self.rt
        agent.on_revocation(lambda _event: _recheck(rt))
        agent.on_epoch(lambda _epoch: _recheck(rt))
        run = asyncio.create_task(agent.run())
        announced = False
        try:
            while not run.done():
                attested = self.holder.current() is not None and agent.synced.is_set()
                if attested and not announced:
                    announced = True
                    self._announce()
                if attested or agent.renewal_failures:
                    self._first_outcome.set()
                await asyncio.sleep(0.05)
            run.result()
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run

    async def _watch_bypasses(self) -> None:
        """Find TCP sockets no Python socket object holds (a C extension's); cut them unless
        c_extensions is allow. One log line and one deny record each."""
        if self._preexisting:
            log.warning(
                "netshield: %d socket(s) opened before the shield started are not shielded",
                len(self._preexisting),
            )
        while True:
            await asyncio.sleep(SCAN_SECONDS)
            known = self._preexisting | self._flagged
            for found in find_bypasses(self._sockets, known=known):
                self._flagged.add(found.inode)
                allowed = self.config.c_extensions == "allow"
                action = "left open (c_extensions: allow)" if allowed else "shut down"
                detail = (
                    f"{found} was opened outside Python's socket module (a C extension or "
                    f"ctypes), past the in-process shield; {action}"
                )
                log.warning("netshield EXTENSION_SOCKETS: %s", detail)
                self._record_refusal(
                    "outbound", found.remote, Reason.EXTENSION_SOCKETS, detail, src=found.local
                )
                if not allowed:
                    cut(found)

    def _announce(self) -> None:
        """One JSON ready line on stderr (stdout is the program's) once attested."""
        creds = self.holder.credentials
        line = {
            "event": "ready",
            "component": "shield",
            "service": self.config.service,
            "spiffe_id": str(creds.spiffe_id) if creds else None,
            "serial": format(creds.serial, "x") if creds else None,
            "pid": os.getpid(),
            "listen": {"admin": self.admin_address} if self.admin_address else {},
        }
        print(json.dumps(line), file=sys.stderr, flush=True)

    def _providers(
        self,
        ready: Any,
        metrics: SidecarMetrics,
        table: ConnectionTable,
    ) -> AdminProviders:
        def status() -> dict[str, Any]:
            return {
                "service": self.config.service,
                "mode": "in-process",
                "pid": os.getpid(),
                "agent": self.agent.status() if self.agent else {},
                "connections": table.count(),
                "records_written": self.rt.sink.written if self.rt else 0,
            }

        return AdminProviders(
            ready=ready,
            metrics=metrics.render,
            connections=table.snapshot,
            identity=functools.partial(identity_of, self.holder),
            status=status,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        loop, rt = self.loop, self.rt
        if loop is None or rt is None or loop.is_closed():
            coro.close()
            raise refusal(Reason.DRAINED, "the shield is not running")
        loop.call_soon_threadsafe(rt.spawn, coro)

    def _record_refusal(
        self, direction: str, dst: str, reason: Reason, detail: str, *, src: str = "in-process"
    ) -> None:
        """A refusal decided off the flows: one deny record, written on the loop."""
        rt, loop = self.rt, self.loop
        if rt is None or loop is None:
            return

        def record() -> None:
            Attempt(
                rt,
                "outbound" if direction == "outbound" else "inbound",
                OUTBOUND_LISTENER,
                src=src,
                dst=dst,
            ).deny(reason, detail)

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(record)

    # --- decisions on the program's threads -------------------------------------------------
    def _slice(self) -> PolicySlice | None:
        contexts = self.holder.current()
        return contexts.credentials.policy if contexts is not None else None

    def _no_credentials(self) -> Refused:
        why = "not attested yet"
        if self.agent is not None and self.agent.last_error:
            why = f"attestation failed: {self.agent.last_error}"
        elif self.holder.credentials is not None:
            why = self.holder.state().detail
        return no_credentials(why)

    def _check_fork(self) -> None:
        if self._forked or os.getpid() != self._pid:
            raise refusal(
                Reason.SHIELD_NOT_INHERITED,
                f"this process (pid {os.getpid()}) was forked from the shielded process "
                f"{self._pid}; threads do not survive fork, so the child has no shield of its own "
                "(no agent, no relay)",
            )

    def _names(self) -> dict[str, frozenset[str]]:
        """Host names of address rules and of the registry, resolved (cached RESOLVE_TTL s)."""
        at, cached = self._resolved
        if time.monotonic() - at < RESOLVE_TTL:
            return cached
        names = {
            rule.address.host
            for rule in self.config.outbound.destinations
            if rule.address is not None and rule.address.is_name
        }
        slice_ = self._slice()
        if slice_ is not None:
            names |= {
                a.host
                for entry in slice_.registry.values()
                for a in entry.addresses
                if HostPort(a.host, a.port).ip is None
            }
        resolved: dict[str, frozenset[str]] = {}
        for name in sorted(names):
            with contextlib.suppress(OSError, UnicodeError):
                infos = self.hooks.getaddrinfo(name, None, type=socket.SOCK_STREAM)
                resolved[name] = frozenset(str(info[4][0]) for info in infos)
        self._resolved = (time.monotonic(), resolved)
        return resolved

    def _destination(self, sock: socket.socket, address: Address) -> HostPort:
        host, port = str(address[0]), int(address[1])
        if HostPort(host, port).ip is None:
            mesh = self.resolve(host, port)
            if mesh:
                return HostPort(*mesh[0])
            infos = self.hooks.getaddrinfo(host, port, sock.family, socket.SOCK_STREAM)
            host, port = str(infos[0][4][0]), int(infos[0][4][1])
        if host.startswith("::ffff:") and "." in host:
            host = host.removeprefix("::ffff:")
        return HostPort(host, port)

    def resolve(self, host: str, port: object) -> list[tuple[str, int]] | None:
        found = addresses_for_name(self.config.outbound, self._slice(), host)
        if found is None:
            return None
        if not found:
            refused = self._no_credentials() if self._slice() is None else None
            why = refused.detail if refused else "the CAS registry has no address for it"
            raise socket.gaierror(
                socket.EAI_NONAME, f"netshield: {host} is a mesh service name, but {why}"
            )
        return [(a.host, a.port) for a in found]

    def connect(self, sock: socket.socket, address: Address) -> None:
        self._check_fork()
        dest = self._destination(sock, address)
        verdict = decide_outbound(self.config.outbound, self._slice(), dest, self._names())
        if isinstance(verdict, Refused):
            if verdict.reason is Reason.NO_CREDENTIALS:
                verdict = self._no_credentials()
            log.warning(
                "netshield: connect to %s refused: %s: %s", dest, verdict.reason, verdict.detail
            )
            self._record_refusal("outbound", str(dest), verdict.reason, verdict.detail)
            raise refusal(verdict.reason, verdict.detail)
        nonblocking = sock.gettimeout() == 0.0
        real = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        real.setblocking(False)
        app_end, relay = socket.socketpair()
        held = stall(app_end) if nonblocking and not isinstance(verdict, Native) else None
        graft(sock, app_end)
        entry = Shielded(inode=_inode(sock))
        self.hooks.register(sock, entry)
        if held is None:
            app_end.close()
        relay.setblocking(False)
        out = Outgoing(entry, sock.family, verdict, real, relay, held)
        self._spawn(outbound(self._rt(), out))
        if nonblocking and held is not None and held.holds:
            raise BlockingIOError(errno.EINPROGRESS, os.strerror(errno.EINPROGRESS))
        if not entry.done.wait(None if nonblocking else sock.gettimeout()):
            raise TimeoutError("timed out")
        if entry.error is not None:
            raise entry.error

    def _rt(self) -> Runtime:
        if self.rt is None:
            raise refusal(Reason.DRAINED, "the shield is not running")
        return self.rt

    def listen(self, sock: socket.socket, backlog: int) -> bool:
        self._check_fork()
        local = self.hooks.original("getsockname")(sock)
        port = int(local[1])
        mode = decide_listen(self.config.inbound, port)
        if mode == "refuse":
            refused = listen_refusal(port)
            log.warning(
                "netshield: listen on %s refused: %s: %s", port, refused.reason, refused.detail
            )
            raise refusal(refused.reason, refused.detail)
        if mode == "unprotected":
            log.info("netshield: port %d listens in plaintext (inbound rule: unprotected)", port)
            return False
        real = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        self.hooks.original("listen")(real, backlog)
        real.setblocking(False)
        app_channel, channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        graft(sock, app_channel)
        app_channel.close()
        channel.setblocking(False)
        label = str(HostPort(str(local[0]), port))
        self.hooks.register(
            sock, Shielded(inode=_inode(sock), local=local, real=real, listener=True)
        )
        listening = Listening(label, real, channel, self._inbound_reals)
        self._spawn(serve_listener(self._rt(), listening))
        log.info("netshield: %s accepts mesh mTLS only (inbound: protected)", label)
        return True

    def accept(self, sock: socket.socket, entry: Shielded) -> tuple[socket.socket, Address]:
        self._check_fork()
        fd, meta = receive_connection(sock)
        if meta is None:
            raise refusal(Reason.DRAINED, "the shield stopped serving this listening socket")
        if fd is None:
            raw = str(meta.get("refused", "NO_CREDENTIALS"))
            reason = Reason(raw) if raw in Reason.__members__ else Reason.NO_CREDENTIALS
            refused = self._no_credentials() if reason is Reason.NO_CREDENTIALS else None
            raise refusal(reason, refused.detail if refused else str(meta.get("detail", "")))
        conn = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
        peer = tuple(meta["peer"])
        self.hooks.register(
            conn,
            Shielded(
                inode=_inode(conn),
                peer=peer,
                local=tuple(meta["local"]),
                real=self._inbound_reals.pop(str(meta["conn"]), None),
            ),
        )
        if socket.getdefaulttimeout() is None and sock.gettimeout():
            conn.setblocking(True)
        return conn, peer

    def datagram(self, sock: socket.socket, address: Address) -> None:
        self._check_fork()
        dest = self._destination(sock, address)
        refused = decide_datagram(self.config.outbound, self._slice(), dest, self._names())
        if refused is None:
            return
        if refused.reason is Reason.NO_CREDENTIALS:
            refused = self._no_credentials()
        log.warning(
            "netshield: datagram to %s refused: %s: %s", dest, refused.reason, refused.detail
        )
        raise refusal(refused.reason, refused.detail)


__all__ = ["STARTUP_TIMEOUT", "Engine", "ShieldStartError"]
