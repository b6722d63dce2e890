"""`--summary`: counts by decision, reason and caller → callee pair, top talkers, and duration
quantiles from a DDSketch within 1 % relative error (a property test against exact quantiles);
bounded memory for pairs, exact below capacity and flagged approximate above it."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.logs.sketch import QuantileSketch, TopK
from netshield.logs.summary import Summary
from netshield.record import ConnectionRecord

TD = "spiffe://t.test/svc/"


def rec(caller: str, callee: str = "orders", **kw: Any) -> ConnectionRecord:
    base: dict[str, Any] = {
        "ts": "2025-01-31T11:00:00.000Z",
        "conn_id": "c",
        "direction": "inbound",
        "listener": "l",
        "src": "10.0.0.5:40000",
        "dst": "127.0.0.1:9000",
        "local_identity": TD + callee,
        "peer_identity": TD + caller,
        "decision": "allow",
        "reason": "OK",
        "detail": "ok",
        "close_reason": "CLOSED",
    }
    return ConnectionRecord(**{**base, **kw})


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def test_counts_pairs_talkers_and_durations() -> None:
    summary = Summary(top=5)
    for n in range(100):
        summary.add(rec("frontend", bytes_in=1000, bytes_out=500, duration_ms=float(n + 1)))
    for _ in range(7):
        summary.add(
            rec("intruder", decision="deny", reason="PEER_NOT_AUTHORIZED", close_reason=None)
        )
    summary.add(rec("legacy", mode="audit", reason="PEER_NOT_AUTHORIZED", bytes_in=1))
    summary.add(rec("frontend", close_reason="IDLE_TIMEOUT", ts="2025-01-31T12:00:00.000Z"))
    data = summary.to_dict()
    assert data["records"] == 109
    assert data["decisions"] == {"allow": 101, "audit": 1, "deny": 7}
    assert data["reasons"] == {"PEER_NOT_AUTHORIZED": 8}
    assert data["close_reasons"] == {"CLOSED": 100, "IDLE_TIMEOUT": 1}
    pairs = {(p["caller"], p["callee"]): p for p in data["pairs"]}
    assert pairs["frontend", "orders"]["allow"] == 101
    assert pairs["intruder", "orders"]["deny"] == 7
    assert pairs["legacy", "orders"]["audit"] == 1
    assert data["pairs_exact"] is True
    assert data["last"] == "2025-01-31T12:00:00.000Z"
    text = "\n".join(summary.lines())
    assert "frontend → orders" in text and "decisions: allow 101, deny 7, audit 1" in text
    talkers = text.split("top talkers")[1]
    assert talkers.index("frontend") < talkers.index("legacy") and "intruder" not in talkers
    p50 = data["duration_ms"]["p50"]
    durations = [float(n + 1) for n in range(100)] + [0.0] * 9
    assert p50 is not None and abs(p50 - exact_quantile(durations, 0.5)) <= 0.01 * 46


def test_an_empty_summary_says_so() -> None:
    assert Summary().lines() == ["no records"]
    assert Summary().to_dict()["duration_ms"]["p50"] is None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(min_value=0.001, max_value=1e7, allow_nan=False), min_size=1, max_size=400),
    st.sampled_from([0.5, 0.9, 0.99]),
)
def test_sketch_quantiles_are_within_relative_error(values: list[float], q: float) -> None:
    sketch = QuantileSketch(alpha=0.01)
    for v in values:
        sketch.add(v)
    got = sketch.quantile(q)
    assert got is not None
    want = exact_quantile(values, q)
    assert abs(got - want) <= 0.01 * want + 1e-9
    assert sketch.quantile(0) == min(values) and sketch.quantile(1) == max(values)


def test_sketch_memory_is_bounded_whatever_the_spread() -> None:
    sketch = QuantileSketch(alpha=0.01, max_buckets=256)
    rng = random.Random(7)
    for _ in range(50_000):
        sketch.add(10 ** rng.uniform(-5, 9))
    assert sketch.buckets <= 257 and sketch.count == 50_000
    p99 = sketch.quantile(0.99)
    assert p99 is not None and 10**8.5 < p99 < 10**9  # the top stays accurate after collapsing


def test_sketch_refuses_values_it_cannot_place() -> None:
    sketch = QuantileSketch()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="non-negative"):
            sketch.add(bad)
    sketch.add(0.0)
    assert sketch.quantile(0.5) == 0.0


def test_topk_is_exact_below_capacity_and_flags_itself_above() -> None:
    exact: TopK[str, list[int]] = TopK(lambda: [0], lambda v: v[0], capacity=8)
    for key in "aabbbc":
        exact.get(key)[0] += 1
    assert exact.exact and [k for k, _ in exact.top(2)] == ["b", "a"]
    bounded: TopK[str, list[int]] = TopK(lambda: [0], lambda v: v[0], capacity=8)
    for n in range(1000):
        bounded.get("heavy")[0] += 1
        bounded.get(f"noise-{n}")[0] += 1
    assert len(bounded) <= 8 and not bounded.exact
    assert bounded.top(1)[0][0] == "heavy" and bounded.top(1)[0][1][0] == 1000


def test_summary_of_many_distinct_pairs_stays_bounded_and_says_approximate() -> None:
    summary = Summary(capacity=64)
    for n in range(2000):
        summary.add(rec("frontend"))
        summary.add(rec("x", peer_identity=None, src=f"198.51.{n // 250}.{n % 250}:1"))
    assert len(summary.pairs) <= 64 and not summary.to_dict()["pairs_exact"]
    assert "approximate" in "\n".join(summary.lines())
    assert summary.to_dict()["pairs"][0]["caller"] == "frontend"
