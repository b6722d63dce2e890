"""The state a sidecar's connection flows share: config, credentials, revocations, the live
connection table, the record sink and the metrics. Built once by the composition root."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from netshield.agent.credentials import CredentialHolder
from netshield.agent.revocations import RevocationState
from netshield.record import ConnectionRecord, Proxy
from netshield.recordlog import RecordSink
from netshield.sidecar.config import SidecarConfig
from netshield.sidecar.livetable import ConnectionTable
from netshield.sidecar.metrics import SidecarMetrics
from netshield.sidecar.wafroutes import WafRoutes


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

    def emit(self, record: ConnectionRecord, handshake_seconds: float | None) -> None:
        """One record per connection: to the sink, and to the metrics."""
        self.sink.write(record)
        self.metrics.connection_closed(record, handshake_seconds)

    def spawn(self, coro: object) -> None:
        """Run a connection flow as a task owned by the sidecar (cancelled at shutdown)."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
