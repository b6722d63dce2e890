"""When to renew a certificate and how long to wait before retrying: pure timing functions.

Responsibility: the agent's two timing decisions, as functions of values (times and a random
number passed in), so they are tested without clocks or sockets.
Guarantees: `renew_at` lands at about `fraction` of the lifetime (± `jitter` of the lifetime),
never before `not_before` and never later than `not_after - RENEW_MARGIN` (for a lifetime
shorter than the margin: at `not_before`, i.e. renew at once). `backoff` is exponential with
full jitter, always within `[0, cap]`, and never overflows however large `attempt` gets.
Bad arguments raise `ValueError`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

RENEW_MARGIN = timedelta(seconds=30)
DEFAULT_FRACTION = 0.5
DEFAULT_JITTER = 0.1
DEFAULT_BACKOFF_BASE = timedelta(seconds=1)
DEFAULT_BACKOFF_CAP = timedelta(seconds=30)
_MAX_EXPONENT = 62  # 2**62 seconds is far beyond any cap; keeps the float finite


def _check_rand(rand: float) -> None:
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand!r}")


def renew_at(
    not_before: datetime,
    not_after: datetime,
    *,
    fraction: float = DEFAULT_FRACTION,
    jitter: float = DEFAULT_JITTER,
    rand: float,
) -> datetime:
    """The moment to start renewing a certificate valid from `not_before` to `not_after`.

    `fraction` (0 < f <= 1) of the lifetime after `not_before`, moved by up to `jitter` (a share
    of the lifetime, 0 <= j < 1) earlier or later according to `rand` in [0, 1) (0.5 = no shift),
    then clamped to `[not_before, not_after - RENEW_MARGIN]`. Callers that received the
    certificate after its `not_before` (issuers backdate for clock skew) pass the receipt time.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"renewal fraction must be in (0, 1], got {fraction!r}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"renewal jitter must be in [0, 1), got {jitter!r}")
    _check_rand(rand)
    if not_after <= not_before:
        raise ValueError(f"not_after {not_after} is not after not_before {not_before}")
    lifetime = not_after - not_before
    share = min(max(fraction + jitter * (2.0 * rand - 1.0), 0.0), 1.0)
    at = not_before + lifetime * share
    latest = not_after - RENEW_MARGIN
    return max(min(at, latest), not_before)


def backoff(
    attempt: int,
    *,
    base: timedelta = DEFAULT_BACKOFF_BASE,
    cap: timedelta = DEFAULT_BACKOFF_CAP,
    rand: float,
) -> timedelta:
    """How long to wait before retry number `attempt` (0 = the first retry).

    Full jitter: a uniform share `rand` of `min(cap, base * 2**attempt)`, so many agents that
    failed together do not retry together.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if base <= timedelta(0) or cap < base:
        raise ValueError(f"backoff needs 0 < base <= cap (base {base}, cap {cap})")
    _check_rand(rand)
    ceiling = min(cap.total_seconds(), base.total_seconds() * 2.0 ** min(attempt, _MAX_EXPONENT))
    return timedelta(seconds=ceiling * rand)
