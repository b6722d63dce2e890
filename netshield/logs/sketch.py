"""Constant-memory summaries of a stream: quantiles and the heaviest keys.

`QuantileSketch` is a DDSketch-style log-bucketed histogram (Masson, Rim, Lee, VLDB 2019): a
positive value x falls in bucket ceil(log_γ x) with γ = (1+α)/(1−α), and a quantile is answered
with the middle of its bucket, so every answer is within relative error α (default 1 %) of a
value of the right rank. Buckets are at most `max_buckets` (the lowest are merged beyond that,
which only coarsens the smallest values); with α = 1 % values from 1 µs to 100 days need ~1600.

`TopK` keeps at most `capacity` keys (Misra–Gries with batch eviction): while there are fewer
distinct keys than that, counts are exact; beyond it, the lightest half is dropped in one sort and
`error` bounds how much any kept or dropped key may be under-counted.

Pure and deterministic; no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class QuantileSketch:
    """Quantiles of non-negative values within relative error `alpha`, in bounded memory."""

    def __init__(self, alpha: float = 0.01, *, max_buckets: int = 2048, floor: float = 1e-6):
        if not 0 < alpha < 1 or max_buckets < 2 or floor <= 0:
            raise ValueError("QuantileSketch needs 0 < alpha < 1, max_buckets >= 2, floor > 0")
        self.alpha = alpha
        self._gamma = (1 + alpha) / (1 - alpha)
        self._log_gamma = math.log(self._gamma)
        self._max_buckets = max_buckets
        self._floor = floor  # values below it count as zero
        self._buckets: dict[int, int] = {}
        self._zeros = 0
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        if not value >= 0 or math.isinf(value):  # also NaN
            raise ValueError(f"QuantileSketch takes finite non-negative values, got {value!r}")
        self.count += 1
        self.min, self.max = min(self.min, value), max(self.max, value)
        if value < self._floor:
            self._zeros += 1
            return
        index = math.ceil(math.log(value) / self._log_gamma)
        self._buckets[index] = self._buckets.get(index, 0) + 1
        if len(self._buckets) > self._max_buckets:
            self._collapse()

    def _collapse(self) -> None:
        """Merge the two lowest buckets (keeps the high quantiles exact to alpha)."""
        low, second = sorted(self._buckets)[:2]
        self._buckets[second] += self._buckets.pop(low)

    def quantile(self, q: float) -> float | None:
        """The value at quantile q in [0, 1] (None when empty); exact at 0 and 1."""
        if not 0 <= q <= 1:
            raise ValueError(f"quantile must be in [0, 1], got {q!r}")
        if self.count == 0:
            return None
        if q == 0:
            return self.min
        if q == 1:
            return self.max
        rank = q * (self.count - 1)
        seen = self._zeros
        if rank < seen:
            return 0.0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if rank < seen:
                estimate = 2 * self._gamma**index / (self._gamma + 1)
                return min(max(estimate, self.min), self.max)
        return self.max

    @property
    def buckets(self) -> int:
        return len(self._buckets) + (1 if self._zeros else 0)


@dataclass
class TopK(Generic[K, V]):
    """Per-key payloads for at most `capacity` keys, ranked by a weight (e.g. a count)."""

    new: Callable[[], V]
    weight: Callable[[V], float]
    capacity: int = 1024
    error: float = 0.0  # the heaviest weight dropped so far (0: every count is exact)
    _items: dict[K, V] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.capacity < 2:
            raise ValueError("TopK needs capacity >= 2")

    def get(self, key: K) -> V:
        """The payload for `key` (created when new; may evict the lightest half first)."""
        item = self._items.get(key)
        if item is None:
            if len(self._items) >= self.capacity:
                self._evict()
            item = self._items[key] = self.new()
        return item

    def _evict(self) -> None:
        ranked = sorted(self._items.items(), key=lambda kv: self.weight(kv[1]))
        dropped = ranked[: len(ranked) // 2]
        self.error = max(self.error, *(self.weight(v) for _, v in dropped))
        for key, _ in dropped:
            del self._items[key]

    @property
    def exact(self) -> bool:
        return self.error == 0

    def __len__(self) -> int:
        return len(self._items)

    def top(self, n: int, key: Callable[[V], float] | None = None) -> list[tuple[K, V]]:
        """The `n` heaviest keys (by `key`, default the weight), heaviest first."""
        rank = key or self.weight
        return sorted(self._items.items(), key=lambda kv: (-rank(kv[1]), str(kv[0])))[:n]


__all__ = ["QuantileSketch", "TopK"]
