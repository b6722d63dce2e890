"""Filters (each criterion with a record it matches and one it does not), the time syntax (a
property test: only ValueError, whatever the text), who called whom, and the table (colour only
when asked, fixed widths)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.logs.filters import RecordFilter, parse_time
from netshield.logs.parties import host_of, parties
from netshield.logs.table import COLUMNS, header, human_bytes, human_duration, row
from netshield.record import ConnectionRecord

TD = "spiffe://t.test/svc/"
NOW = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


def rec(**kw: Any) -> ConnectionRecord:
    base: dict[str, Any] = {
        "ts": "2025-01-31T11:00:00.000Z",
        "conn_id": "c1",
        "direction": "inbound",
        "listener": "127.0.0.1:7002",
        "src": "10.0.0.5:40000",
        "dst": "127.0.0.1:9000",
        "local_identity": TD + "orders",
        "peer_identity": TD + "frontend",
        "decision": "allow",
        "reason": "OK",
        "detail": "ok",
        "close_reason": "CLOSED",
        "peer_serial": "abc1",
    }
    return ConnectionRecord(**{**base, **kw})


DENIED = rec(
    conn_id="c2",
    decision="deny",
    reason="PEER_NOT_AUTHORIZED",
    peer_identity=TD + "intruder",
    close_reason="PEER_NOT_AUTHORIZED",
)
AUDITED = rec(conn_id="c3", mode="audit", reason="PEER_NOT_AUTHORIZED", peer_identity=TD + "x")
ALLOWED = rec()
OUTBOUND_DENIED = rec(
    conn_id="c4",
    direction="outbound",
    src="127.0.0.1:5555",
    dst="billing",
    local_identity=TD + "frontend",
    peer_identity=None,
    decision="deny",
    reason="PEER_NOT_AUTHORIZED",
    close_reason="PEER_NOT_AUTHORIZED",
    peer_serial=None,
)


@pytest.mark.parametrize(
    ("flt", "yes", "no"),
    [
        (RecordFilter(denied=True), DENIED, ALLOWED),
        (RecordFilter(denied=True), AUDITED, ALLOWED),
        (RecordFilter(services=frozenset({"intruder"})), DENIED, ALLOWED),
        (RecordFilter(services=frozenset({"orders"})), ALLOWED, OUTBOUND_DENIED),
        (RecordFilter(services=frozenset({"billing"})), OUTBOUND_DENIED, ALLOWED),
        (RecordFilter(peers=frozenset({"frontend"})), ALLOWED, DENIED),
        (RecordFilter(peers=frozenset({TD + "intruder"})), DENIED, ALLOWED),
        (RecordFilter(peers=frozenset({"10.0.0.5"})), ALLOWED, OUTBOUND_DENIED),
        (RecordFilter(peers=frozenset({"abc1"})), ALLOWED, rec(peer_serial="ffff")),
        (RecordFilter(reasons=frozenset({"PEER_NOT_AUTHORIZED"})), DENIED, ALLOWED),
        (RecordFilter(reasons=frozenset({"CLOSED"})), ALLOWED, OUTBOUND_DENIED),
        (RecordFilter(conn_ids=frozenset({"c2"})), DENIED, ALLOWED),
        (RecordFilter(since=NOW - timedelta(hours=2)), ALLOWED, rec(ts="2025-01-31T09:00:00Z")),
        (
            RecordFilter(until=NOW - timedelta(minutes=30)),
            ALLOWED,
            rec(ts="2025-01-31T11:45:00.5Z"),
        ),
        (
            RecordFilter(denied=True, services=frozenset({"orders"})),
            DENIED,
            OUTBOUND_DENIED,
        ),
    ],
)
def test_each_filter_matches_its_record_and_not_the_other(
    flt: RecordFilter, yes: ConnectionRecord, no: ConnectionRecord
) -> None:
    assert flt.matches(yes)
    assert not flt.matches(no)


def test_an_empty_filter_matches_everything() -> None:
    assert all(RecordFilter().matches(r) for r in (DENIED, AUDITED, ALLOWED, OUTBOUND_DENIED))


def test_times_are_compared_as_instants_not_text() -> None:
    # "…:00.5Z" sorts before "…:00Z" as text but is later in time
    flt = RecordFilter(since=datetime(2025, 1, 31, 11, 0, 0, 100000, tzinfo=UTC))
    assert flt.matches(rec(ts="2025-01-31T11:00:00.5Z"))
    assert not flt.matches(rec(ts="2025-01-31T11:00:00Z"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        ("90s", NOW - timedelta(seconds=90)),
        ("2025-01-30", datetime(2025, 1, 30, tzinfo=UTC)),
        ("2025-01-30T10:00:00Z", datetime(2025, 1, 30, 10, tzinfo=UTC)),
        ("2025-01-30T11:00:00+01:00", datetime(2025, 1, 30, 10, tzinfo=UTC)),
    ],
)
def test_time_syntax(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "15 minutes", "-5m", "", "2025-13-01"])
def test_bad_times_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|before year"):
        parse_time(text, NOW)


@given(st.text(max_size=40))
def test_parse_time_raises_only_value_error(text: str) -> None:
    try:
        moment = parse_time(text, NOW)
    except ValueError:
        return
    assert moment.tzinfo is not None


def test_parties_name_caller_and_callee_from_either_side() -> None:
    assert str(parties(ALLOWED)) == "frontend → orders"
    assert str(parties(OUTBOUND_DENIED)) == "frontend → billing"
    unauthenticated = rec(peer_identity=None, src="203.0.113.9:51515")
    assert str(parties(unauthenticated)) == "203.0.113.9 → orders"
    mismatch = rec(
        direction="outbound",
        dst="127.0.0.1:7002",
        local_identity=TD + "frontend",
        peer_identity=TD + "intruder",
        decision="deny",
        reason="PEER_IDENTITY_MISMATCH",
        detail="expected spiffe://t.test/svc/orders but the server is spiffe://t.test/svc/intruder",
    )
    assert parties(mismatch).callee == "orders"
    assert host_of("[::1]:443") == "::1" and host_of("unix:/run/x.sock") == "unix:/run/x.sock"


def test_table_rows_have_fixed_columns_and_colour_only_when_asked() -> None:
    plain = row(DENIED)
    assert "\x1b[" not in plain and "\x1b[" not in header()
    assert "deny" in plain and "PEER_NOT_AUTHORIZED" in plain and "intruder" in plain
    coloured = row(DENIED, color=True)
    assert "\x1b[31m" in coloured  # red for deny
    assert "\x1b[32m" in row(ALLOWED, color=True) and "\x1b[33m" in row(AUDITED, color=True)
    width = sum(c.width for c in COLUMNS) + 2 * (len(COLUMNS) - 1)
    long = rec(src="x" * 200, peer_identity=TD + "a" * 60)
    assert len(row(long)) <= width and "…" in row(long)
    assert row(ALLOWED).split()[-3] == "CLOSED"  # allowed: how it closed
    assert "audit" in row(AUDITED)


def test_human_units() -> None:
    assert human_bytes(1023) == "1023" and human_bytes(1536) == "1.5K"
    assert human_bytes(3 * 1024**3) == "3.0G"
    assert human_duration(0.4) == "0.4ms" and human_duration(12) == "12ms"
    assert human_duration(3400) == "3.4s" and human_duration(125_000) == "2m05s"
    assert human_duration(2 * 86400_000) == "48h00m"
