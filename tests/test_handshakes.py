"""The pending-handshake budget (pure): the oldest handshakes are shed to make room, and the
deadline shrinks from handshake_timeout to handshake_timeout_min as the budget fills."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.reasons import Reason
from netshield.sidecar.handshakes import PendingHandshakes


class Drops:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Reason, str]] = []

    def for_(self, conn_id: str):  # type: ignore[no-untyped-def]
        return lambda reason, detail: self.seen.append((conn_id, reason, detail))


def test_a_full_budget_sheds_the_oldest_handshake_for_a_new_one() -> None:
    pending, drops = PendingHandshakes(3, 10.0, 1.0), Drops()
    for i in range(3):
        pending.enter(f"c{i}", float(i), drops.for_(f"c{i}"))
    assert drops.seen == []
    pending.enter("new", 3.5, drops.for_("new"))
    assert len(pending) == 3 and pending.shed == 1
    [(conn, reason, detail)] = drops.seen
    assert conn == "c0" and reason is Reason.HANDSHAKE_SHED
    assert "3.50 s" in detail and "limits.max_handshakes (3)" in detail


def test_a_budget_with_room_sheds_nothing() -> None:
    pending, drops = PendingHandshakes(3, 10.0, 1.0), Drops()
    pending.enter("a", 0.0, drops.for_("a"))
    pending.leave("a")  # finished
    for i in range(3):
        pending.enter(f"c{i}", 1.0, drops.for_(f"c{i}"))
    assert drops.seen == [] and pending.shed == 0


def test_the_deadline_is_the_full_timeout_up_to_half_the_budget_then_shrinks() -> None:
    pending = PendingHandshakes(100, 10.0, 1.0)
    assert pending.deadline(0) == pending.deadline(50) == 10.0
    assert pending.deadline(75) == pytest.approx(5.5)
    assert pending.deadline(100) == pending.deadline(500) == 1.0


@given(st.integers(1, 1000), st.integers(0, 2000), st.integers(0, 2000))
def test_more_pending_handshakes_never_lengthen_the_deadline(budget: int, a: int, b: int) -> None:
    pending = PendingHandshakes(budget, 10.0, 1.0)
    low, high = sorted((a, b))
    assert 1.0 <= pending.deadline(high) <= pending.deadline(low) <= 10.0


def test_expire_drops_handshakes_past_the_shrunken_deadline_oldest_first() -> None:
    pending, drops = PendingHandshakes(4, 2.0, 1.0), Drops()
    for i in range(4):  # a full budget: the deadline is 1 s
        pending.enter(f"c{i}", i * 0.01, drops.for_(f"c{i}"))
    # c0 goes at 1 s (4 pending), c1 at 1.5 s (3 pending); with 2 pending the full 2 s apply
    assert pending.expire(1.6) == 2
    assert [c for c, _r, _d in drops.seen] == ["c0", "c1"]
    assert all(r is Reason.HANDSHAKE_TIMEOUT for _c, r, _d in drops.seen)
    assert "within 1.00 s (4 handshakes pending" in drops.seen[0][2]
    assert "limits.handshake_timeout_min" in drops.seen[0][2]
    assert pending.expired == 2 and len(pending) == 2


def test_expire_leaves_handshakes_within_the_calm_deadline() -> None:
    pending, drops = PendingHandshakes(100, 10.0, 1.0), Drops()
    for i in range(10):  # a tenth of the budget: the full 10 s apply
        pending.enter(f"c{i}", 0.0, drops.for_(f"c{i}"))
    assert pending.expire(9.9) == 0 and drops.seen == []
    assert pending.next_expiry(9.9) == pytest.approx(0.1)
    assert pending.expire(10.1) == 10


def test_next_expiry_is_none_without_pending_handshakes() -> None:
    assert PendingHandshakes(1, 1.0, 1.0).next_expiry(0.0) is None


@pytest.mark.parametrize(
    ("budget", "timeout", "low"), [(0, 1.0, 1.0), (1, 1.0, 2.0), (1, 1.0, 0.0)]
)
def test_nonsense_limits_are_refused(budget: int, timeout: float, low: float) -> None:
    with pytest.raises(ValueError, match="budget"):
        PendingHandshakes(budget, timeout, low)


def test_a_smaller_budget_after_reload_sheds_at_the_next_arrival() -> None:
    pending, drops = PendingHandshakes(4, 10.0, 1.0), Drops()
    for i in range(4):
        pending.enter(f"c{i}", float(i), drops.for_(f"c{i}"))
    pending.configure(2, 10.0, 1.0)
    pending.enter("new", 5.0, drops.for_("new"))
    assert [c for c, _r, _d in drops.seen] == ["c0", "c1", "c2"] and len(pending) == 2


def test_one_source_gets_its_share_and_the_others_are_unaffected() -> None:
    pending, drops = PendingHandshakes(100, 10.0, 1.0, per_source=2), Drops()
    pending.enter("a1", 0.0, drops.for_("a1"), "10.0.0.9")
    pending.enter("a2", 0.0, drops.for_("a2"), "10.0.0.9")
    assert not pending.admits("10.0.0.9") and pending.pending_from("10.0.0.9") == 2
    assert pending.admits("10.0.0.1")  # the twin: another host still has its share
    pending.leave("a1")
    assert pending.admits("10.0.0.9") and pending.pending_from("10.0.0.9") == 1
    pending.expire(11.0)  # a2 expires: its share is given back too
    assert pending.pending_from("10.0.0.9") == 0 and drops.seen[0][1] is Reason.HANDSHAKE_TIMEOUT


def test_answered_handshakes_are_shed_only_after_the_silent_ones() -> None:
    pending, drops = PendingHandshakes(3, 10.0, 1.0), Drops()
    pending.enter("legit", 0.0, drops.for_("legit"))
    pending.answered("legit")  # its ClientHello came and the sidecar answered
    pending.enter("idle1", 1.0, drops.for_("idle1"))
    pending.enter("idle2", 2.0, drops.for_("idle2"))
    pending.enter("idle3", 3.0, drops.for_("idle3"))
    pending.enter("idle4", 4.0, drops.for_("idle4"))
    assert [c for c, _r, _d in drops.seen] == ["idle1", "idle2"]  # not the oldest: it answered
    pending.enter("idle5", 5.0, drops.for_("idle5"))
    pending.enter("idle6", 6.0, drops.for_("idle6"))
    pending.enter("idle7", 7.0, drops.for_("idle7"))
    assert "legit" not in [c for c, _r, _d in drops.seen[:4]]
    pending.answered("unknown")  # a handshake that already left: nothing happens
    # the deadline counts from accept for both kinds: the answered one is oldest and goes first
    assert pending.expire(20.0) >= 1 and ("legit", Reason.HANDSHAKE_TIMEOUT) in [
        (c, r) for c, r, _d in drops.seen
    ]
