"""The budget of inbound connections still in their TLS handshake, apart from authenticated ones.

Why: a peer that opens TCP connections and never finishes a handshake (an idle flood, slowloris)
must not take the slots of callers that proved who they are. So a connection counts against
`limits.max_handshakes` while it handshakes and against `limits.max_connections` only once it is
authenticated and authorized; the two budgets never share a slot.

Responsibility: `PendingHandshakes` tracks the pending handshakes in arrival order and decides,
from values (``now`` is passed in, nothing here reads a clock or touches a socket), which of them
to drop:
- **Shedding.** When a new handshake arrives and the budget is full, the oldest pending one is
  dropped (HANDSHAKE_SHED), so the new arrival always gets its chance: an attacker holding old
  connections loses them, a legitimate caller's handshake (milliseconds) finishes long before it
  becomes the oldest. Handshakes whose client has not yet sent a complete first flight (idle
  connections, slowloris: the sidecar has not answered) go before those it answered: a
  legitimate client sends its ClientHello at once, so a flood of silent connections, however
  fast it reconnects, sheds only its own kind.
- **A deadline that shrinks under pressure.** A handshake may take `timeout` while at most half
  the budget is in use; above that its deadline falls linearly to `min_timeout` at a full budget
  (`deadline`). `expire` drops every handshake older than the deadline, oldest first, and
  recomputes the deadline as the pressure falls (HANDSHAKE_TIMEOUT).
- **A share per source.** At most `per_source` handshakes of one source (the caller's host) may
  be pending; `admits` says whether one more may start. A single attacking host thus holds a
  fraction of the budget, is refused cheaply (no TLS state is built) and cannot shed anyone
  else's handshakes; many hosts together meet the shedding above.
Guarantees: at most `budget` handshakes are pending after `enter` returns; every handshake that
leaves is dropped at most once (a dropped handshake is no longer tracked); `deadline` is
monotonic: more pending handshakes never lengthen it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from netshield.reasons import Reason

Dropper = Callable[[Reason, str], None]
"""How to end one pending handshake: called with the reason code and a sentence for its record."""


@dataclass(eq=False)
class _Pending:
    started: float  # monotonic seconds
    drop: Dropper
    source: str
    answered: bool = False


@dataclass
class PendingHandshakes:
    """Pending inbound handshakes, oldest first; see the module docstring."""

    budget: int
    timeout: float  # seconds allowed while at most half the budget is used
    min_timeout: float  # seconds allowed when the budget is full
    per_source: int | None = None  # pending handshakes of one source at most (None: budget)
    shed: int = 0  # handshakes dropped to make room
    expired: int = 0  # handshakes dropped at their deadline
    _silent: dict[str, _Pending] = field(default_factory=dict)  # not answered yet, oldest first
    _answered: dict[str, _Pending] = field(default_factory=dict)  # answered, oldest first
    _by_source: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.configure(self.budget, self.timeout, self.min_timeout, self.per_source)

    def configure(
        self, budget: int, timeout: float, min_timeout: float, per_source: int | None = None
    ) -> None:
        """Apply new limits (SIGHUP); handshakes over a smaller budget go at the next `enter`."""
        if (
            budget < 1
            or not 0 < min_timeout <= timeout
            or (per_source is not None and per_source < 1)
        ):
            raise ValueError("need budget >= 1, per_source >= 1 and 0 < min_timeout <= timeout")
        self.budget, self.timeout, self.min_timeout = budget, timeout, min_timeout
        self.per_source = per_source

    def admits(self, source: str) -> bool:
        """May one more handshake of `source` start (its share of the budget)?"""
        share = self.per_source if self.per_source is not None else self.budget
        return self._by_source[source] < share

    def pending_from(self, source: str) -> int:
        return self._by_source.get(source, 0)

    def __len__(self) -> int:
        return len(self._silent) + len(self._answered)

    def deadline(self, pending: int | None = None) -> float:
        """Seconds a handshake may take when `pending` (default: now) handshakes are pending."""
        count = len(self) if pending is None else pending
        pressure = min(1.0, count / self.budget)
        if pressure <= 0.5:
            return self.timeout
        return self.timeout - (self.timeout - self.min_timeout) * (2 * pressure - 1)

    def enter(self, conn_id: str, now: float, drop: Dropper, source: str = "") -> None:
        """Track a new handshake of `source`; if the budget is full, drop the oldest ones to make
        room (unanswered ones first)."""
        while len(self) >= self.budget:
            queue = self._silent or self._answered
            oldest = queue.pop(next(iter(queue)))
            self._forget(oldest)
            self.shed += 1
            oldest.drop(
                Reason.HANDSHAKE_SHED,
                f"the client had not completed the TLS handshake after {now - oldest.started:.2f} s "
                f"when limits.max_handshakes ({self.budget}) were pending: the oldest was dropped "
                "to make room for a new one",
            )
        self._silent[conn_id] = _Pending(now, drop, source)
        self._by_source[source] += 1

    def _forget(self, pending: _Pending) -> None:
        left = self._by_source[pending.source] - 1
        if left > 0:
            self._by_source[pending.source] = left
        else:
            del self._by_source[pending.source]

    def answered(self, conn_id: str) -> None:
        """The sidecar answered the client's first flight: shed it only after the silent ones."""
        pending = self._silent.pop(conn_id, None)
        if pending is not None:
            pending.answered = True
            self._answered[conn_id] = pending  # `started` stays: the deadline counts from accept

    def leave(self, conn_id: str) -> None:
        """The handshake finished (either way) or its connection went: stop tracking it."""
        pending = self._silent.pop(conn_id, None) or self._answered.pop(conn_id, None)
        if pending is not None:
            self._forget(pending)

    def _oldest(self) -> tuple[str, _Pending] | None:
        heads = [next(iter(q.items())) for q in (self._silent, self._answered) if q]
        return min(heads, key=lambda item: item[1].started) if heads else None

    def expire(self, now: float) -> int:
        """Drop the handshakes older than the deadline, oldest first; how many were dropped."""
        dropped = 0
        while (head := self._oldest()) is not None:
            oldest_id, oldest = head
            deadline = self.deadline()
            if now - oldest.started <= deadline:
                break
            (self._answered if oldest.answered else self._silent).pop(oldest_id)
            self._forget(oldest)
            self.expired += 1
            dropped += 1
            oldest.drop(
                Reason.HANDSHAKE_TIMEOUT,
                f"the client did not complete the TLS handshake within {deadline:.2f} s "
                f"({len(self) + 1} handshakes pending, limits.max_handshakes "
                f"{self.budget}: the deadline shrinks from limits.handshake_timeout to "
                "limits.handshake_timeout_min as the budget fills)",
            )
        return dropped

    def next_expiry(self, now: float) -> float | None:
        """Seconds until `expire` would next drop something at today's pressure (None: empty)."""
        head = self._oldest()
        if head is None:
            return None
        return max(0.0, head[1].started + self.deadline() - now)


__all__ = ["Dropper", "PendingHandshakes"]
