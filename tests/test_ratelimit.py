"""The per-source token bucket of the CAS's unauthenticated endpoints (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.cas.ratelimit import SourceRateLimit


def test_a_burst_passes_then_the_rate_applies_with_a_retry_after() -> None:
    limit = SourceRateLimit(rate=10.0, burst=5)
    assert all(limit.acquire("10.0.0.9", 0.0) is None for _ in range(5))
    wait = limit.acquire("10.0.0.9", 0.0)
    assert wait == pytest.approx(0.1) and limit.refused == 1
    assert limit.acquire("10.0.0.9", 0.1) is None  # one token refilled


def test_another_source_keeps_its_own_bucket() -> None:
    limit = SourceRateLimit(rate=1.0, burst=1)
    assert limit.acquire("attacker", 0.0) is None
    assert limit.acquire("attacker", 0.0) is not None
    assert limit.acquire("sidecar", 0.0) is None  # the twin: unaffected by the attacker


def test_sources_beyond_the_cap_are_forgotten_oldest_first() -> None:
    limit = SourceRateLimit(rate=1.0, burst=1, max_sources=100)
    for i in range(10_000):
        limit.acquire(f"10.{i // 256}.{i % 256}.1", 0.0)
    assert len(limit) == 100


@pytest.mark.parametrize(("rate", "burst", "sources"), [(0.0, 1, 1), (1.0, 0, 1), (1.0, 1, 0)])
def test_nonsense_limits_are_refused(rate: float, burst: int, sources: int) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        SourceRateLimit(rate, burst, sources)


@given(st.lists(st.floats(0, 10), max_size=200), st.floats(0.5, 100), st.integers(1, 50))
def test_no_more_than_burst_plus_rate_times_time_pass(
    steps: list[float], rate: float, burst: int
) -> None:
    limit, now, passed = SourceRateLimit(rate, burst), 0.0, 0
    for step in steps:
        now += step / 10
        passed += limit.acquire("x", now) is None
    assert passed <= burst + rate * now + 1e-6
