"""The audit hash chain: every edit, drop, duplicate or reorder is named; intact chains pass."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.cas.auditlog import (
    GENESIS,
    AuditEntry,
    entry_from_dict,
    entry_hash,
    make_entry,
    rfc3339,
    verify_chain,
)

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def chain(n: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    for i in range(n):
        prev = entries[-1] if entries else None
        entries.append(
            make_entry(prev, event="test.event", data={"i": i}, now=T0 + timedelta(seconds=i))
        )
    return entries


def head(entries: list[AuditEntry]) -> tuple[int, str]:
    return (entries[-1].seq, entries[-1].hash)


def test_intact_chain_has_no_problems() -> None:
    entries = chain(5)
    assert entries[0].prev_hash == GENESIS
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert verify_chain(entries, expected_head=head(entries)) == []


def test_empty_log_with_genesis_head_is_intact() -> None:
    assert verify_chain([], expected_head=(0, GENESIS)) == []


def test_edited_entry_is_named() -> None:
    entries = chain(5)
    entries[2] = dataclasses.replace(entries[2], data={"i": 99})
    assert verify_chain(entries) == ["entry 3: hash does not match its content (edited)"]


def test_edited_entry_with_recomputed_hash_breaks_the_next_link() -> None:
    entries = chain(5)
    e = entries[2]
    forged = dataclasses.replace(
        e, data={"i": 99}, hash=entry_hash(e.seq, e.ts, e.event, {"i": 99}, e.prev_hash)
    )
    entries[2] = forged
    assert verify_chain(entries) == ["entry 4 does not link to entry 3 (reordered or replaced)"]


def test_missing_middle_entry_is_named() -> None:
    entries = chain(5)
    del entries[2]
    assert verify_chain(entries) == ["entry 4 follows entry 2 (entry 3 missing)"]


def test_missing_run_of_entries_is_named() -> None:
    entries = chain(6)
    del entries[1:4]
    assert verify_chain(entries) == ["entry 5 follows entry 1 (entries 2-4 missing)"]


def test_missing_first_entries_are_named() -> None:
    entries = chain(4)[2:]
    assert verify_chain(entries) == ["log starts at entry 3 (entries 1-2 missing)"]


def test_swapped_entries_are_named_as_reordered() -> None:
    entries = chain(5)
    entries[2], entries[3] = entries[3], entries[2]
    assert verify_chain(entries) == ["entry 4 appears before entry 3 (reordered)"]


@pytest.mark.parametrize(("i", "j"), [(1, 3), (1, 2), (0, 4)])
def test_contents_swapped_between_two_seqs_are_named_as_moved(i: int, j: int) -> None:
    entries = chain(5)
    a, b = entries[i], entries[j]
    entries[i] = dataclasses.replace(b, seq=a.seq)
    entries[j] = dataclasses.replace(a, seq=b.seq)
    assert verify_chain(entries) == [
        f"entry {a.seq} holds the content of entry {b.seq} (rows swapped or moved)",
        f"entry {b.seq} holds the content of entry {a.seq} (rows swapped or moved)",
    ]


def test_duplicated_entry_is_named() -> None:
    entries = chain(3)
    entries.insert(2, entries[1])
    assert verify_chain(entries) == ["entry 2 appears twice (duplicated)"]


def test_truncated_log_is_caught_only_by_the_expected_head() -> None:
    entries = chain(5)
    truncated = entries[:3]
    assert verify_chain(truncated) == []
    assert verify_chain(truncated, expected_head=head(entries)) == [
        "log ends at entry 3 but the monotonic counter says 5 (truncated)"
    ]


def test_log_ahead_of_the_counter_is_fine_if_it_contains_the_counted_head() -> None:
    entries = chain(5)
    assert verify_chain(entries, expected_head=head(entries[:4])) == []


def test_replaced_history_at_the_counted_head_is_named() -> None:
    entries = chain(5)
    other = [make_entry(None, event="other", data={}, now=T0)]
    for _ in range(4):
        other.append(make_entry(other[-1], event="other", data={}, now=T0))
    assert verify_chain(other, expected_head=head(entries)) == [
        "entry 5 is not the entry the monotonic counter recorded (replaced by another history)"
    ]


def test_hash_ignores_key_order_and_survives_a_json_round_trip() -> None:
    a = make_entry(None, event="e", data={"b": 1, "a": [1, "x", None]}, now=T0)
    b = make_entry(None, event="e", data={"a": (1, "x", None), "b": 1}, now=T0)
    assert a.hash == b.hash
    back = entry_from_dict(json.loads(json.dumps(a.to_dict())))
    assert back == a
    assert verify_chain([back]) == []


def test_timestamps_are_fixed_width_utc_and_naive_times_are_refused() -> None:
    assert rfc3339(T0) == "2030-01-02T03:04:05.000000Z"
    with pytest.raises(ValueError):
        rfc3339(datetime(2030, 1, 1))


def test_entry_from_dict_refuses_wrong_shapes() -> None:
    good = make_entry(None, event="e", data={}, now=T0).to_dict()
    assert entry_from_dict(good).seq == 1
    for key, value in [
        ("seq", "1"),
        ("seq", 0),
        ("hash", "ABC"),
        ("ts", "yesterday"),
        ("data", []),
    ]:
        with pytest.raises(ValueError):
            entry_from_dict({**good, key: value})
    with pytest.raises(ValueError):
        entry_from_dict({**good, "extra": 1})


# --- properties ----------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=6)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=4,
)
datas = st.dictionaries(st.sampled_from(["a", "b", "é", ""]), json_values, max_size=3)


@st.composite
def valid_chains(draw: st.DrawFn) -> list[AuditEntry]:
    n = draw(st.integers(1, 6))
    entries: list[AuditEntry] = []
    for _ in range(n):
        offset = draw(st.integers(0, 10**9))
        entries.append(
            make_entry(
                entries[-1] if entries else None,
                event=draw(st.sampled_from(["policy.apply", "revoke", "x"])),
                data=draw(datas),
                now=T0 + timedelta(microseconds=offset),
            )
        )
    return entries


def _different(draw: st.DrawFn, strategy: st.SearchStrategy[Any], current: Any) -> Any:
    return draw(strategy.filter(lambda v: v != current))


@st.composite
def mutated_chains(draw: st.DrawFn) -> tuple[list[AuditEntry], list[AuditEntry]]:
    """A valid chain and a copy with exactly one mutation: edit one field, drop, or swap."""
    entries = draw(valid_chains())
    mutated = list(entries)
    kinds = ["edit", "drop"] + (["swap"] if len(entries) > 1 else [])
    kind = draw(st.sampled_from(kinds))
    i = draw(st.integers(0, len(entries) - 1))
    if kind == "drop":
        del mutated[i]
    elif kind == "swap":
        j = draw(st.integers(0, len(entries) - 1).filter(lambda j: j != i))
        mutated[i], mutated[j] = mutated[j], mutated[i]
    else:
        e = entries[i]
        field = draw(st.sampled_from(["seq", "ts", "event", "data", "prev_hash", "hash"]))
        hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
        new: Any
        if field == "seq":
            new = _different(draw, st.integers(0, 20), e.seq)
        elif field == "ts":
            new = rfc3339(T0 + timedelta(seconds=_different(draw, st.integers(-5, 5), 0)))
            if new == e.ts:
                new = rfc3339(T0 - timedelta(days=1))
        elif field == "event":
            new = e.event + draw(st.sampled_from(["!", ".x", " "]))
        elif field == "data":
            new = json.loads(json.dumps(_different(draw, datas, dict(e.data))))
            if new == dict(e.data):
                new = {**e.data, "extra-key-": 1}
        else:
            new = _different(draw, hexes, getattr(e, field))
        mutated[i] = dataclasses.replace(e, **{field: new})
    return entries, mutated


@settings(max_examples=150, deadline=None)
@given(mutated_chains())
def test_any_single_mutation_of_a_valid_chain_is_detected(
    case: tuple[list[AuditEntry], list[AuditEntry]],
) -> None:
    original, mutated = case
    expected = head(original)
    assert verify_chain(original, expected_head=expected) == []
    problems = verify_chain(mutated, expected_head=expected)
    assert problems, "mutation went unnoticed"
    assert all(isinstance(p, str) and "\n" not in p for p in problems)


GOOD = make_entry(None, event="e", data={"k": 1}, now=T0).to_dict()
near_entries = st.builds(
    lambda key, value, drop: {k: v for k, v in {**GOOD, key: value}.items() if k != drop},
    st.sampled_from([*GOOD, "extra"]),
    json_values,
    st.sampled_from([None, *GOOD]),
)


@settings(max_examples=100, deadline=None)
@given(near_entries | json_values)
def test_entry_from_dict_returns_an_entry_or_raises_value_error(obj: object) -> None:
    try:
        entry = entry_from_dict(obj)
    except ValueError:
        return
    assert isinstance(entry, AuditEntry)
