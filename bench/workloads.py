"""The workloads, the figures taken from each run, and the targets.

A workload is one `nsload` mode with its parameters and the set-ups it runs on. A run yields a
`Sample`: the load generator's JSON, plus the CPU seconds each proxy process (and the backend,
and the load generator) used during it, read from /proc. Figures are functions of a sample.

To add a workload: append a `Workload` to `WORKLOADS` (and, if it has one, a `Target`). To add a
set-up to a workload, name it in `setups` (topologies.py knows the names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STANDARD = ("direct", "netshield", "haproxy", "stunnel")
TUNNELED = (*STANDARD, "netshield-tunnel")
"""The workloads that also run through tunnels: new connections, ping-pong, bulk over one."""
"""Set-ups of the standard rows: resumption off everywhere."""


@dataclass
class Sample:
    """One run of one workload through one set-up."""

    result: dict[str, Any]  # what nsload printed
    cpu: dict[str, float]  # CPU seconds during the run: outbound, inbound, backend, load
    elapsed: float  # wall seconds of the load generator's measured interval

    def count(self) -> float:
        """Requests (ping-pong), connections (connect) or MB (bulk) moved."""
        r = self.result
        return float(r.get("requests") or r.get("connections") or r.get("bytes", 0) / 1e6)

    def share(self, who: str) -> float:
        """Fraction of one core `who` used during the run."""
        return self.cpu.get(who, 0.0) / self.elapsed if self.elapsed else 0.0


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    get: Callable[[Sample], float | None]
    higher_is_better: bool = True


def _field(name: str) -> Callable[[Sample], float | None]:
    return lambda s: float(s.result[name]) if name in s.result else None


def _cpu_per_unit(side: str, scale: float = 1e6) -> Callable[[Sample], float | None]:
    """CPU µs per request/connection of one side (or of "pair": both proxy processes)."""

    def get(s: Sample) -> float | None:
        n = s.count()
        if side == "pair":
            if "outbound" not in s.cpu:
                return None
            cpu = s.cpu["outbound"] + s.cpu.get("inbound", 0.0)
        elif side in s.cpu:
            cpu = s.cpu[side]
        else:
            return None
        return cpu / n * scale if n else None

    return get


def _per_core(side: str) -> Callable[[Sample], float | None]:
    """MB/s per core of CPU used by one proxy process."""

    def get(s: Sample) -> float | None:
        share = s.share(side)
        return float(s.result["mb_per_s"]) / share if share > 0.01 else None

    return get


BULK = (
    Figure("mb_s", "MB/s", "MB/s", _field("mb_per_s")),
    Figure("mb_core_out", "MB/s per core, outbound", "MB/s", _per_core("outbound")),
    Figure("mb_core_in", "MB/s per core, inbound", "MB/s", _per_core("inbound")),
)
PINGPONG = (
    Figure("rps", "requests/s", "1/s", _field("rps")),
    Figure("p50_us", "p50", "µs", _field("p50_us"), higher_is_better=False),
    Figure("p99_us", "p99", "µs", _field("p99_us"), higher_is_better=False),
    Figure("cpu_out", "CPU per request, outbound", "µs", _cpu_per_unit("outbound"), False),
    Figure("cpu_in", "CPU per request, inbound", "µs", _cpu_per_unit("inbound"), False),
    Figure("cpu_pair", "CPU per request, both sides", "µs", _cpu_per_unit("pair"), False),
)
CONNECT = (
    Figure("cps", "connections/s", "1/s", _field("cps")),
    Figure("p50_us", "p50", "µs", _field("p50_us"), higher_is_better=False),
    Figure("p99_us", "p99", "µs", _field("p99_us"), higher_is_better=False),
    Figure("cpu_out", "CPU per connection, outbound", "µs", _cpu_per_unit("outbound"), False),
    Figure("cpu_in", "CPU per connection, inbound", "µs", _cpu_per_unit("inbound"), False),
)


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    mode: str  # nsload mode: bulk, pingpong, connect
    n: int  # connections (bulk, ping-pong) or concurrency (connect)
    figures: tuple[Figure, ...]
    size: int = 64
    setups: tuple[str, ...] = STANDARD
    shown: tuple[str, ...] = field(default=())  # figure keys in the short table ( = all)

    def args(self, port: int, seconds: float) -> list[str]:
        return [self.mode, "127.0.0.1", str(port), str(self.n), f"{seconds:g}", str(self.size)]


WORKLOADS: tuple[Workload, ...] = (
    Workload("bulk-1", "bulk upload, 1 connection", "bulk", 1, BULK, setups=TUNNELED),
    Workload("bulk-8", "bulk upload, 8 connections", "bulk", 8, BULK),
    Workload("pp-1", "64-byte ping-pong, 1 connection", "pingpong", 1, PINGPONG, setups=TUNNELED),
    Workload("pp-32", "64-byte ping-pong, 32 connections", "pingpong", 32, PINGPONG, setups=TUNNELED),
    Workload("conn-1", "new connection per request, concurrency 1", "connect", 1, CONNECT, setups=TUNNELED),
    Workload("conn-16", "new connection per request, concurrency 16", "connect", 16, CONNECT, setups=TUNNELED),
    Workload(
        "conn-16-resume",
        "new connection per request, concurrency 16, resumption on",
        "connect",
        16,
        CONNECT,
        setups=("netshield+resume", "haproxy+resume"),
    ),
)


@dataclass(frozen=True)
class Target:
    """`ours` figure / `theirs` figure (same round), compared with `ratio`."""

    label: str
    figure: str
    ours: tuple[str, str]  # (workload, set-up)
    theirs: tuple[str, str]
    ratio: float
    at_least: bool = True  # ratio >= target (else <=)

    def passes(self, value: float) -> bool:
        return value >= self.ratio if self.at_least else value <= self.ratio

    @property
    def text(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.ratio:g}×"


TARGETS: tuple[Target, ...] = (
    Target("bulk MB/s, 1 connection", "mb_s", ("bulk-1", "netshield"), ("bulk-1", "haproxy"), 1.2),
    Target("bulk MB/s, 8 connections", "mb_s", ("bulk-8", "netshield"), ("bulk-8", "haproxy"), 1.2),
    Target(
        "ping-pong 32 conns, requests/s", "rps", ("pp-32", "netshield"), ("pp-32", "haproxy"), 1.0
    ),
    Target(
        "ping-pong 32 conns, CPU per request (both sides)",
        "cpu_pair",
        ("pp-32", "netshield"),
        ("pp-32", "haproxy"),
        1.0,
        at_least=False,
    ),
    Target(
        "ping-pong 1 conn, p50 latency",
        "p50_us",
        ("pp-1", "netshield"),
        ("pp-1", "haproxy"),
        1.15,
        at_least=False,
    ),
    Target(
        "new connections/s, concurrency 16 (netshield resumes, HAProxy as configured above)",
        "cps",
        ("conn-16-resume", "netshield+resume"),
        ("conn-16", "haproxy"),
        1.5,
    ),
)

TUNNEL_TARGETS: tuple[Target, ...] = (
    Target(
        "new connections/s, concurrency 16, through tunnels (HAProxy: a handshake each)",
        "cps", ("conn-16", "netshield-tunnel"), ("conn-16", "haproxy"), 5.0,
    ),
    Target(
        "bulk MB/s over one tunnel stream (netshield's own mTLS connection: 1×)",
        "mb_s", ("bulk-1", "netshield-tunnel"), ("bulk-1", "netshield"), 0.8,
    ),
)
"""Targets of the tunnels (issue 13), reported beside the others."""
TARGETS = TARGETS + TUNNEL_TARGETS

IDLE_RSS_MB = 50.0
"""Target: a sidecar's resident memory after start-up (attested, listening, idle)."""
HOLD_CONNS = 1000
HOLD_RSS_MB = 30.0
"""Target: a sidecar's extra resident memory while holding `HOLD_CONNS` idle connections."""
