"""The sidecar's Prometheus metrics, in a registry of its own (never the process-global one).

Connection metrics change twice per connection (opened; closed, with its record), never per
read or write: the relay counts bytes in plain ints and the record carries the totals. The
counts here are plain ints too, turned into Prometheus families only when scraped. State that
lives elsewhere (certificate expiry, renewals, readiness) is read through callbacks at scrape
time, so it is never stale.

| metric | type | labels |
|---|---|---|
| netshield_connections_total | counter | direction, decision, reason |
| netshield_active_connections | gauge | direction |
| netshield_bytes_total | counter | direction, flow (in: from the caller, out: back to it) |
| netshield_handshake_seconds | histogram | direction |
| netshield_certificate_expiry_seconds | gauge (no sample without a certificate) | |
| netshield_renewals_total, netshield_renewal_failures_total | counter | |
| netshield_ready | gauge (1 ready, 0 not) | |
| netshield_cas_rolled_back | gauge (1 while the CAS presents an older history than seen) | |
| netshield_peer_connections_total | counter | direction, peer, decision |
| netshield_peer_bytes_total | counter | direction, peer, flow |
| netshield_pending_handshakes | gauge: inbound connections in their TLS handshake | |
| netshield_records_written_total | counter: records handed to the sink | |
| netshield_records_dropped_total | counter: record writes that failed (disk full, ...) | |
| netshield_records_aggregated_total | counter: denials folded into an aggregate record | reason |

`peer` is the other party's service name (else its SPIFFE id, else its host; see
`netshield.logs.parties`); after `MAX_PEERS` distinct peers the rest count as "other", so a
scan from many addresses cannot grow the label set without bound.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from netshield.logs.parties import parties
from netshield.record import DIRECTIONS, ConnectionRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of `render()`: the Prometheus text format, version 0.0.4."""

HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""TLS handshakes on a LAN take about a millisecond; the top buckets catch stalled peers."""

MAX_PEERS = 256
"""Distinct `peer` label values kept; later peers are counted as "other"."""
OTHER_PEER = "other"


def _none() -> float | None:
    return None


def _zero() -> int:
    return 0


def _false() -> bool:
    return False


def _no_counts() -> Mapping[str, int]:
    return {}


class _Histogram:
    """Per-bucket counts (not cumulative; the last slot is +Inf), a sum and nothing else."""

    def __init__(self) -> None:
        self.counts = [0] * (len(HANDSHAKE_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(HANDSHAKE_BUCKETS, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        bounds = [*(str(b) for b in HANDSHAKE_BUCKETS), "+Inf"]
        running, out = 0, []
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class SidecarMetrics(Collector):
    """A sidecar's metrics. Pair every `connection_opened` with one `connection_closed`.

    The callbacks are called at scrape time: `seconds_to_expiry` (None without a certificate),
    `renewals` and `renewal_failures` (the agent's counters), `ready`, `pending_handshakes`,
    `records_written` and `records_dropped` (the record sink's counters) and `records_aggregated`
    (denials folded into aggregates, by reason).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        seconds_to_expiry: Callable[[], float | None] = _none,
        renewals: Callable[[], int] = _zero,
        renewal_failures: Callable[[], int] = _zero,
        ready: Callable[[], bool] = _false,
        cas_rolled_back: Callable[[], bool] = _false,
        pending_handshakes: Callable[[], int] = _zero,
        records_written: Callable[[], int] = _zero,
        records_dropped: Callable[[], int] = _zero,
        records_aggregated: Callable[[], Mapping[str, int]] = _no_counts,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._expiry = seconds_to_expiry
        self._renewals = renewals
        self._renewal_failures = renewal_failures
        self._ready = ready
        self._cas_rolled_back = cas_rolled_back
        self._pending_handshakes = pending_handshakes
        self._records_written = records_written
        self._records_dropped = records_dropped
        self._records_aggregated = records_aggregated
        self._connections: Counter[tuple[str, str, str]] = Counter()
        self._active: Counter[str] = Counter({d: 0 for d in DIRECTIONS})
        self._bytes: Counter[tuple[str, str]] = Counter(
            {(d, flow): 0 for d in DIRECTIONS for flow in ("in", "out")}
        )
        self._handshakes = {d: _Histogram() for d in DIRECTIONS}
        self._waf_requests: Counter[tuple[str, str]] = Counter()  # (engine, action)
        self._waf_rules: Counter[str] = Counter()  # requests each WAF rule matched
        self._peer_connections: Counter[tuple[str, str, str]] = Counter()
        self._peer_bytes: Counter[tuple[str, str, str]] = Counter()
        self._peers: set[str] = set()
        self.registry.register(self)

    # --- updates (the data plane) ----------------------------------------------------------------

    def connection_opened(self, direction: str) -> None:
        """A connection was accepted on a listener of `direction`."""
        self._active[direction] += 1

    def connection_moved(self, old: str, new: str) -> None:
        """An accepted connection turned out to be of another direction (a tunnel)."""
        self._active[old] -= 1
        self._active[new] += 1

    def connection_closed(
        self, record: ConnectionRecord, handshake_seconds: float | None = None
    ) -> None:
        """The connection that `record` describes is over (allowed or denied)."""
        direction = record.direction
        self._active[direction] -= 1
        self._connections[direction, record.decision, record.reason] += 1
        self._bytes[direction, "in"] += record.bytes_in
        self._bytes[direction, "out"] += record.bytes_out
        if handshake_seconds is not None:
            self._handshakes.setdefault(direction, _Histogram()).observe(handshake_seconds)
        peer = self._peer_label(record)
        self._peer_connections[direction, peer, record.decision] += 1
        self._peer_bytes[direction, peer, "in"] += record.bytes_in
        self._peer_bytes[direction, peer, "out"] += record.bytes_out
        if record.waf is not None:
            waf = record.waf
            counted = len(waf.requests)
            for request in waf.requests:
                self._waf_requests[waf.engine, request.action] += 1
                self._waf_rules.update(request.rule_ids)
            if waf.request_count > counted:  # requests the record summarised without a verdict
                self._waf_requests[waf.engine, "pass"] += waf.request_count - counted

    def _peer_label(self, record: ConnectionRecord) -> str:
        ends = parties(record)
        peer = ends.caller if record.direction == "inbound" else ends.callee
        if peer not in self._peers:
            if len(self._peers) >= MAX_PEERS:
                return OTHER_PEER
            self._peers.add(peer)
        return peer

    # --- scraping --------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The registry in the Prometheus text format (`CONTENT_TYPE`)."""
        return bytes(generate_latest(self.registry))

    def describe(self) -> Iterable[Metric]:
        return self._families(sample=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(sample=True)

    def _families(self, *, sample: bool) -> Iterator[Metric]:
        connections = CounterMetricFamily(
            "netshield_connections",
            "Connections by direction, decision and reason code (counted when they close).",
            labels=["direction", "decision", "reason"],
        )
        active = GaugeMetricFamily(
            "netshield_active_connections", "Connections open now.", labels=["direction"]
        )
        relayed = CounterMetricFamily(
            "netshield_bytes",
            "Bytes relayed by closed connections; flow in: from the caller, out: back to it.",
            labels=["direction", "flow"],
        )
        handshakes = HistogramMetricFamily(
            "netshield_handshake_seconds", "TLS handshake duration.", labels=["direction"]
        )
        expiry = GaugeMetricFamily(
            "netshield_certificate_expiry_seconds",
            "Seconds until the sidecar's certificate expires (no sample: no certificate).",
        )
        renewals = CounterMetricFamily(
            "netshield_renewals", "Successful certificate renewals (each a fresh attestation)."
        )
        failures = CounterMetricFamily(
            "netshield_renewal_failures",
            "Failed renewal attempts (the old certificate stays in use until it expires).",
        )
        ready = GaugeMetricFamily(
            "netshield_ready",
            "1 while the sidecar holds valid credentials and its listeners are bound, else 0.",
        )
        rolled_back = GaugeMetricFamily(
            "netshield_cas_rolled_back",
            "1 while the CAS presents an older audit head or policy version than this sidecar "
            "saw (CAS_ROLLED_BACK), else 0.",
        )
        peer_connections = CounterMetricFamily(
            "netshield_peer_connections",
            "Connections by direction, peer (service name, else identity or host) and decision.",
            labels=["direction", "peer", "decision"],
        )
        peer_bytes = CounterMetricFamily(
            "netshield_peer_bytes",
            "Bytes relayed by closed connections, by direction, peer and flow.",
            labels=["direction", "peer", "flow"],
        )
        waf_requests = CounterMetricFamily(
            "netshield_waf_requests",
            "Requests on WAF routes by engine and action (pass, block, detect, refuse).",
            labels=["engine", "action"],
        )
        waf_rules = CounterMetricFamily(
            "netshield_waf_rule_matches",
            "Requests on WAF routes each rule matched (CRS ids, NS-9xxxxx for netshield's own).",
            labels=["rule"],
        )
        pending = GaugeMetricFamily(
            "netshield_pending_handshakes",
            "Inbound connections in their TLS handshake (limits.max_handshakes bounds them).",
        )
        written = CounterMetricFamily(
            "netshield_records_written", "Connection records handed to the record sink."
        )
        dropped = CounterMetricFamily(
            "netshield_records_dropped",
            "Connection record writes that failed (disk full, unwritable file): the connections "
            "were proxied but their records are lost.",
        )
        aggregated = CounterMetricFamily(
            "netshield_records_aggregated",
            "Denials folded into an aggregate record (records.aggregate_denials) instead of "
            "written one by one, by reason.",
            labels=["reason"],
        )
        if sample:
            pending.add_metric([], self._pending_handshakes())
            written.add_metric([], self._records_written())
            dropped.add_metric([], self._records_dropped())
            for reason, count in sorted(self._records_aggregated().items()):
                aggregated.add_metric([reason], count)
            for (engine, action), count in sorted(self._waf_requests.items()):
                waf_requests.add_metric([engine, action], count)
            for rule, count in sorted(self._waf_rules.items()):
                waf_rules.add_metric([rule], count)
            for labels, count in sorted(self._peer_connections.items()):
                peer_connections.add_metric(list(labels), count)
            for labels, count in sorted(self._peer_bytes.items()):
                peer_bytes.add_metric(list(labels), count)
            for (direction, decision, reason), count in sorted(self._connections.items()):
                connections.add_metric([direction, decision, reason], count)
            for direction, count in sorted(self._active.items()):
                active.add_metric([direction], count)
            for (direction, flow), count in sorted(self._bytes.items()):
                relayed.add_metric([direction, flow], count)
            for direction, hist in sorted(self._handshakes.items()):
                handshakes.add_metric([direction], hist.cumulative(), hist.total)
            seconds = self._expiry()
            if seconds is not None:
                expiry.add_metric([], seconds)
            renewals.add_metric([], self._renewals())
            failures.add_metric([], self._renewal_failures())
            ready.add_metric([], 1.0 if self._ready() else 0.0)
            rolled_back.add_metric([], 1.0 if self._cas_rolled_back() else 0.0)
        yield from (connections, active, relayed, handshakes, expiry, renewals, failures, ready)
        yield rolled_back
        yield from (peer_connections, peer_bytes, waf_requests, waf_rules)
        yield from (pending, written, dropped, aggregated)


__all__ = ["CONTENT_TYPE", "HANDSHAKE_BUCKETS", "MAX_PEERS", "SidecarMetrics"]
