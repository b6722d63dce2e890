"""The state a sidecar's connection flows share: config, credentials, revocations, the live
connection table, the pending handshakes, the record sink and the metrics. Built once by the
composition root."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from netshield.agent.credentials import CredentialHolder
from netshield.agent.revocations import RevocationState
from netshield.record import ConnectionRecord, Proxy
from netshield.recordlog import RecordSink
from netshield.sidecar.config import SidecarConfig
from netshield.sidecar.denials import DenialFolder
from netshield.sidecar.handshakes import PendingHandshakes
from netshield.sidecar.livetable import ConnectionTable
from netshield.sidecar.metrics import SidecarMetrics
from netshield.sidecar.wafroutes import WafRoutes
from netshield.tunnel.pool import TunnelPool


@dataclass
class Runtime:
    config: SidecarConfig
    holder: CredentialHolder
    revocations: RevocationState
    table: ConnectionTable
    sink: RecordSink
    metrics: SidecarMetrics
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    proxy: Proxy = "sidecar"  # what the records say wrapped the connections
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    http: WafRoutes = field(default_factory=WafRoutes)  # WAF engines, threads, upstream pools
    handshakes: PendingHandshakes = field(init=False)
    denials: DenialFolder = field(init=False)
    refusing: int = 0  # refused sockets lingering so that the peer reads why
    tunnels: TunnelPool = field(default_factory=TunnelPool)  # outbound tunnels by destination

    def __post_init__(self) -> None:
        limits = self.config.limits
        self.handshakes = PendingHandshakes(
            limits.max_handshakes,
            limits.handshake_timeout.total_seconds(),
            limits.handshake_timeout_min.total_seconds(),
            limits.max_handshakes_per_source,
        )
        self.denials = DenialFolder(self.config.records.aggregate_denials.total_seconds())

    def apply_limits(self, config: SidecarConfig) -> None:
        """SIGHUP: the connection and handshake budgets of `config` from now on."""
        limits = config.limits
        self.table.limit = limits.max_connections
        self.handshakes.configure(
            limits.max_handshakes,
            limits.handshake_timeout.total_seconds(),
            limits.handshake_timeout_min.total_seconds(),
            limits.max_handshakes_per_source,
        )

    def emit(self, record: ConnectionRecord, handshake_seconds: float | None) -> bool:
        """One record per connection: to the metrics, and to the sink unless a flood's denials
        fold it into an aggregate (`write_due_denials` writes those); True if written now."""
        self.metrics.connection_closed(record, handshake_seconds)
        out = self.denials.offer(record, time.monotonic())
        if out is None:
            return False
        self.sink.write(out)
        return True

    def write_due_denials(self, *, final: bool = False) -> None:
        """Write the aggregates whose interval ended (all of them when `final`)."""
        due = self.denials.flush() if final else self.denials.due(time.monotonic())
        for record in due:
            self.sink.write(record)

    def spawn(self, coro: object) -> None:
        """Run a connection flow as a task owned by the sidecar (cancelled at shutdown)."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
