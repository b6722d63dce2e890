"""Folding the denial records of a flood: one record per source and reason per interval.

Why: every refused connection leaves a record, so 2,000 idle connections would write 2,000 lines
in seconds and a sustained flood would fill the disk (or rotate the evidence away). A flood's
records say the same thing many times; one line with a count says it once.

Responsibility: `DenialFolder` decides, from values (``now`` is passed in), which denial records
to write now, which to fold and when to write the aggregate. A *source* is the caller's host
(without its port); a *key* is (direction, listener, source, reason, peer identity).
- The first denial of a key is written at once (an operator following the log sees a flood
  start), and opens a window of `interval` seconds.
- Further denials of that key within the window are folded: counted, not written.
- When the window ends with folds, one aggregate record is written (schema 2: ``count`` folded
  connections, ``ts``/``conn_id``/``src``/``detail`` of the first folded one, ``last_ts`` of the
  last) and the next window starts at once, so a steady flood writes one record per key per
  interval. A window that ends without folds forgets its key.
- At most `max_keys` keys are tracked; denials of further keys share one key per reason with the
  source ``*`` (a flood from many addresses still writes a bounded number of records).
Allowed connections are never folded. Guarantees: every denial offered is in exactly one written
record (itself, or the ``count`` of an aggregate) once `due` has run past its window or `flush`
was called; memory is bounded by `max_keys`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from netshield.logs.parties import host_of
from netshield.record import ConnectionRecord

DEFAULT_MAX_KEYS = 4096
OVERFLOW_SOURCE = "*"

Key = tuple[str, str, str, str, str | None]


@dataclass
class _Window:
    ends: float
    first: ConnectionRecord | None = None  # the first folded record of this window
    last_ts: str | None = None
    count: int = 0


@dataclass
class DenialFolder:
    """See the module docstring. `interval` 0 turns folding off (every denial is written)."""

    interval: float
    max_keys: int = DEFAULT_MAX_KEYS
    folded: Counter[str] = field(default_factory=Counter)  # by reason: records not written alone
    _windows: dict[Key, _Window] = field(default_factory=dict)

    def offer(self, record: ConnectionRecord, now: float) -> ConnectionRecord | None:
        """The record to write now, or None when it was folded into its key's aggregate."""
        if record.decision != "deny" or self.interval <= 0:
            return record
        key = self._key(record)
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = _Window(ends=now + self.interval)
            return record
        if window.first is None:
            window.first = record
        window.count += record.count
        window.last_ts = record.last_ts or record.ts
        self.folded[record.reason] += record.count
        return None

    def due(self, now: float) -> list[ConnectionRecord]:
        """The aggregates of windows that ended by `now` (oldest first); quiet keys are dropped."""
        out: list[ConnectionRecord] = []
        for key, window in list(self._windows.items()):
            if window.ends > now:
                continue
            if window.count == 0:
                del self._windows[key]
                continue
            out.append(_aggregate(window))
            self._windows[key] = _Window(ends=max(window.ends + self.interval, now))
        return out

    def flush(self) -> list[ConnectionRecord]:
        """Every pending aggregate now (shutdown); the folder is empty afterwards."""
        out = [_aggregate(w) for w in self._windows.values() if w.count]
        self._windows.clear()
        return out

    def __len__(self) -> int:
        """Keys tracked now."""
        return len(self._windows)

    def _key(self, record: ConnectionRecord) -> Key:
        key: Key = (
            record.direction,
            record.listener,
            host_of(record.src),
            record.reason,
            record.peer_identity,
        )
        if key in self._windows or len(self._windows) < self.max_keys:
            return key
        return (record.direction, record.listener, OVERFLOW_SOURCE, record.reason, None)


def _aggregate(window: _Window) -> ConnectionRecord:
    assert window.first is not None
    if window.count == 1:
        return window.first  # one fold: the record as it was
    return replace(window.first, count=window.count, last_ts=window.last_ts)


__all__ = ["DEFAULT_MAX_KEYS", "OVERFLOW_SOURCE", "DenialFolder"]
