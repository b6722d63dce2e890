"""Renewal timing and retry backoff as pure functions: about half the lifetime with jitter,
never too close to expiry; exponential backoff with full jitter, capped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.agent.rotation import RENEW_MARGIN, backoff, renew_at

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TEN_MIN = timedelta(minutes=10)

rands = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def test_renewal_lands_at_half_the_lifetime_without_jitter() -> None:
    assert renew_at(T0, T0 + TEN_MIN, jitter=0.0, rand=0.9) == T0 + timedelta(minutes=5)
    assert renew_at(T0, T0 + TEN_MIN, rand=0.5) == T0 + timedelta(minutes=5)


def test_jitter_moves_renewal_both_ways_by_its_share_of_the_lifetime() -> None:
    early = renew_at(T0, T0 + TEN_MIN, fraction=0.5, jitter=0.1, rand=0.0)
    late = renew_at(T0, T0 + TEN_MIN, fraction=0.5, jitter=0.1, rand=0.999999)
    assert early == T0 + timedelta(minutes=4)
    assert timedelta(minutes=5) < late - T0 <= timedelta(minutes=6)


def test_renewal_is_clamped_to_the_margin_before_expiry() -> None:
    one_min = timedelta(minutes=1)
    assert (
        renew_at(T0, T0 + one_min, fraction=0.9, jitter=0.0, rand=0.5)
        == T0 + one_min - RENEW_MARGIN
    )
    # the twin: a long lifetime is not clamped
    assert renew_at(T0, T0 + TEN_MIN, fraction=0.9, jitter=0.0, rand=0.5) == T0 + timedelta(
        minutes=9
    )


def test_lifetime_shorter_than_the_margin_renews_at_once() -> None:
    assert renew_at(T0, T0 + timedelta(seconds=20), rand=0.5) == T0


@given(
    lifetime=st.integers(min_value=1, max_value=400 * 86400),
    fraction=st.floats(min_value=0.01, max_value=1.0),
    jitter=st.floats(min_value=0.0, max_value=0.99),
    rand=rands,
)
def test_renewal_always_within_validity_and_before_the_margin(
    lifetime: int, fraction: float, jitter: float, rand: float
) -> None:
    not_after = T0 + timedelta(seconds=lifetime)
    at = renew_at(T0, not_after, fraction=fraction, jitter=jitter, rand=rand)
    assert T0 <= at <= max(T0, not_after - RENEW_MARGIN)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fraction": 0.0},
        {"fraction": 1.5},
        {"jitter": -0.1},
        {"jitter": 1.0},
        {"rand": 1.0},
        {"rand": -0.01},
    ],
)
def test_renewal_rejects_out_of_range_arguments(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"rand": 0.5, **kwargs}
    with pytest.raises(ValueError):
        renew_at(T0, T0 + TEN_MIN, **args)


def test_renewal_rejects_an_empty_validity_window() -> None:
    with pytest.raises(ValueError):
        renew_at(T0, T0, rand=0.5)


def test_backoff_doubles_until_the_cap() -> None:
    ceilings = [backoff(n, rand=0.999999).total_seconds() for n in range(8)]
    assert [round(c) for c in ceilings] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff(3, rand=0.5) == timedelta(seconds=4)


def test_backoff_uses_full_jitter() -> None:
    assert backoff(4, rand=0.0) == timedelta(0)
    assert backoff(4, rand=0.25) == timedelta(seconds=4)


@given(attempt=st.integers(min_value=0, max_value=10**6), rand=rands)
def test_backoff_stays_within_zero_and_cap_for_any_attempt(attempt: int, rand: float) -> None:
    cap = timedelta(seconds=7)
    got = backoff(attempt, base=timedelta(milliseconds=100), cap=cap, rand=rand)
    assert timedelta(0) <= got <= cap


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "rand"),
    [
        (-1, 1.0, 30.0, 0.5),
        (0, 0.0, 30.0, 0.5),
        (0, 5.0, 1.0, 0.5),
        (0, 1.0, 30.0, 1.0),
    ],
)
def test_backoff_rejects_bad_arguments(attempt: int, base: float, cap: float, rand: float) -> None:
    with pytest.raises(ValueError):
        backoff(attempt, base=timedelta(seconds=base), cap=timedelta(seconds=cap), rand=rand)
