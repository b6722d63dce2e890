"""The monotonic counter file: forward only, atomic, private, and located outside the state."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from netshield.cas.counter import CounterValue, MonotonicCounter, default_counter_path
from netshield.errors import StateError
from netshield.reasons import Reason

H1 = "1" * 64
H2 = "2" * 64
STATE_ID = "0b1e6f3c-6a7d-4a55-9a0e-2b1f4c3d5e6f"


def test_counter_reads_none_until_first_written(tmp_path: Path) -> None:
    counter = MonotonicCounter(tmp_path / "c" / "cas.counter")
    assert counter.read() is None
    counter.advance(CounterValue(3, H1))
    assert counter.read() == CounterValue(3, H1)


def test_counter_moves_forward(tmp_path: Path) -> None:
    counter = MonotonicCounter(tmp_path / "cas.counter")
    counter.advance(CounterValue(3, H1))
    counter.advance(CounterValue(4, H2))
    assert counter.read() == CounterValue(4, H2)


def test_counter_refuses_to_move_backwards(tmp_path: Path) -> None:
    counter = MonotonicCounter(tmp_path / "cas.counter")
    counter.advance(CounterValue(4, H2))
    with pytest.raises(StateError, match="back from 4 to 3"):
        counter.advance(CounterValue(3, H1))
    assert counter.read() == CounterValue(4, H2)


def test_counter_accepts_the_same_value_again(tmp_path: Path) -> None:
    counter = MonotonicCounter(tmp_path / "cas.counter")
    counter.advance(CounterValue(4, H2))
    counter.advance(CounterValue(4, H2))
    assert counter.read() == CounterValue(4, H2)


def test_counter_refuses_a_different_head_at_the_same_seq(tmp_path: Path) -> None:
    counter = MonotonicCounter(tmp_path / "cas.counter")
    counter.advance(CounterValue(4, H2))
    with pytest.raises(StateError, match="different head for entry 4"):
        counter.advance(CounterValue(4, H1))


def test_counter_file_is_private_and_no_temp_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "cas.counter"
    MonotonicCounter(path).advance(CounterValue(1, H1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["cas.counter"]


@pytest.mark.parametrize("content", [b"", b"garbage", b'{"format": "x", "seq": 1, "head": "0"}'])
def test_damaged_counter_file_is_refused_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cas.counter"
    path.write_bytes(content)
    with pytest.raises(StateError) as info:
        MonotonicCounter(path).read()
    assert str(path) in str(info.value)
    assert info.value.reason is Reason.STATE_UNAVAILABLE


def test_default_counter_path_lives_under_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_counter_path(STATE_ID) == tmp_path / "netshield" / f"cas-{STATE_ID}.counter"


def test_default_counter_path_ignores_a_relative_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")
    expected = Path.home() / ".local" / "state" / "netshield" / f"cas-{STATE_ID}.counter"
    assert default_counter_path(STATE_ID) == expected


@pytest.mark.parametrize("state_id", ["../../etc/passwd", "", "not-a-uuid"])
def test_default_counter_path_refuses_a_state_id_that_is_not_a_uuid(state_id: str) -> None:
    with pytest.raises(StateError, match="not a UUID"):
        default_counter_path(state_id)
