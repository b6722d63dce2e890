"""Sidecar metrics: the documented names in Prometheus text, counted per connection from its
record, callbacks read at scrape time, and a registry per sidecar (never the global one)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from netshield.record import ConnectionRecord, Decision, Direction, rfc3339
from netshield.sidecar.metrics import SidecarMetrics

NAMES = (
    "netshield_connections_total",
    "netshield_active_connections",
    "netshield_bytes_total",
    "netshield_handshake_seconds",
    "netshield_certificate_expiry_seconds",
    "netshield_renewals_total",
    "netshield_renewal_failures_total",
    "netshield_ready",
)


def rec(
    direction: Direction = "inbound", decision: Decision = "allow", reason: str = "OK", **kw: Any
) -> ConnectionRecord:
    return ConnectionRecord(
        ts=rfc3339(datetime.now(UTC)),
        conn_id="c1",
        direction=direction,
        listener=direction,
        src="127.0.0.1:1",
        dst="127.0.0.1:2",
        decision=decision,
        reason=reason,
        detail="d",
        **kw,
    )


def samples(metrics: SidecarMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def value(metrics: SidecarMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_every_documented_metric_name_is_in_the_text() -> None:
    text = SidecarMetrics().render().decode()
    for name in NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text or f"# TYPE {name}" in text
        assert name in text
    assert "_created" not in text  # no per-series creation timestamps


def test_connections_are_counted_once_each_from_their_record() -> None:
    m = SidecarMetrics()
    m.connection_opened("inbound")
    m.connection_opened("outbound")
    m.connection_opened("inbound")
    assert value(m, "netshield_active_connections", direction="inbound") == 2
    m.connection_closed(rec(bytes_in=10, bytes_out=300), handshake_seconds=0.003)
    m.connection_closed(rec(decision="deny", reason="PEER_NOT_AUTHORIZED"), handshake_seconds=0.002)
    m.connection_closed(rec("outbound", bytes_in=5), handshake_seconds=None)
    assert value(m, "netshield_active_connections", direction="inbound") == 0
    assert value(m, "netshield_active_connections", direction="outbound") == 0
    allow = {"direction": "inbound", "decision": "allow", "reason": "OK"}
    deny = {"direction": "inbound", "decision": "deny", "reason": "PEER_NOT_AUTHORIZED"}
    assert value(m, "netshield_connections_total", **allow) == 1
    assert value(m, "netshield_connections_total", **deny) == 1
    assert value(m, "netshield_bytes_total", direction="inbound", flow="in") == 10
    assert value(m, "netshield_bytes_total", direction="inbound", flow="out") == 300
    assert value(m, "netshield_bytes_total", direction="outbound", flow="in") == 5
    assert value(m, "netshield_handshake_seconds_count", direction="inbound") == 2
    assert value(m, "netshield_handshake_seconds_count", direction="outbound") == 0
    assert value(m, "netshield_handshake_seconds_bucket", direction="inbound", le="0.0025") == 1
    assert value(m, "netshield_handshake_seconds_bucket", direction="inbound", le="0.005") == 2
    assert value(m, "netshield_handshake_seconds_bucket", direction="inbound", le="+Inf") == 2
    assert (
        abs((value(m, "netshield_handshake_seconds_sum", direction="inbound") or 0) - 0.005) < 1e-9
    )


def test_state_callbacks_are_read_at_scrape_time() -> None:
    state: dict[str, Any] = {"expiry": None, "renewals": 0, "failures": 0, "ready": False}
    m = SidecarMetrics(
        seconds_to_expiry=lambda: state["expiry"],
        renewals=lambda: state["renewals"],
        renewal_failures=lambda: state["failures"],
        ready=lambda: state["ready"],
    )
    assert value(m, "netshield_certificate_expiry_seconds") is None  # no certificate: no sample
    assert value(m, "netshield_ready") == 0
    state.update(expiry=290.5, renewals=4, failures=1, ready=True)
    assert value(m, "netshield_certificate_expiry_seconds") == 290.5
    assert value(m, "netshield_renewals_total") == 4
    assert value(m, "netshield_renewal_failures_total") == 1
    assert value(m, "netshield_ready") == 1


def test_each_sidecar_has_its_own_registry_and_the_global_one_is_untouched() -> None:
    before = generate_latest(REGISTRY)
    a, b = SidecarMetrics(), SidecarMetrics()
    a.connection_opened("inbound")
    a.connection_closed(rec(bytes_in=1))
    assert (
        value(a, "netshield_connections_total", direction="inbound", decision="allow", reason="OK")
        == 1
    )
    assert (
        value(b, "netshield_connections_total", direction="inbound", decision="allow", reason="OK")
        is None
    )
    assert a.registry is not b.registry and a.registry is not REGISTRY
    assert b"netshield_" not in generate_latest(REGISTRY) and b"netshield_" not in before
