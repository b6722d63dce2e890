"""Per-source rate limits for the CAS's unauthenticated endpoints (nonce and attestation).

Anyone may ask the CAS for a nonce or present evidence; SPIRE limits node attestation per
caller address for the same reason. `SourceRateLimit` is a token bucket per source (the
caller's IP address): `rate` requests a second on average, bursts of `burst`. It remembers at
most `max_sources` sources (the least recently seen are forgotten first, which only ever gives
a forgotten source a full bucket again), so a flood from many addresses cannot grow it without
bound.

Pure: `now` (monotonic seconds) is passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

DEFAULT_RATE = 50.0
DEFAULT_BURST = 200
DEFAULT_MAX_SOURCES = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class SourceRateLimit:
    """A token bucket per source; see the module docstring."""

    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    max_sources: int = DEFAULT_MAX_SOURCES
    refused: int = 0
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1 or self.max_sources < 1:
            raise ValueError("a rate limit needs rate > 0, burst >= 1 and max_sources >= 1")

    def acquire(self, source: str, now: float) -> float | None:
        """Take one request's token for `source`: None if allowed, else the seconds until the
        next token (for a Retry-After)."""
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[source] = bucket
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        self.refused += 1
        return (1.0 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


__all__ = ["DEFAULT_BURST", "DEFAULT_MAX_SOURCES", "DEFAULT_RATE", "SourceRateLimit"]
