"""Folding a flood's denial records (pure): one record per source and reason per interval, with a
count; every denial is in exactly one written record; allowed connections are never folded."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.logs.parties import host_of
from netshield.reasons import Reason
from netshield.record import ConnectionRecord, new_conn_id, rfc3339
from netshield.sidecar.denials import OVERFLOW_SOURCE, DenialFolder

T0 = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


def denial(
    i: int, *, src: str = "10.0.0.5", reason: Reason = Reason.HANDSHAKE_TIMEOUT
) -> ConnectionRecord:
    when = T0 + timedelta(milliseconds=i)
    return ConnectionRecord(
        ts=rfc3339(when),
        conn_id=new_conn_id(when, entropy=i),
        direction="inbound",
        listener="127.0.0.1:8443",
        src=f"{src}:{10000 + i}",
        dst="127.0.0.1:8080",
        decision="deny",
        reason=reason.value,
        detail="the client did not complete the TLS handshake",
        close_reason=reason.value,
    )


def test_a_flood_from_one_source_writes_the_first_denial_then_one_aggregate_per_interval() -> None:
    folder = DenialFolder(interval=10.0)
    written = [r for i in range(2000) if (r := folder.offer(denial(i), now=i * 0.001))]
    assert [r.conn_id for r in written] == [denial(0).conn_id]  # the flood's start, at once
    assert folder.due(now=9.9) == []  # the window is still open
    [agg] = folder.due(now=10.0)
    assert agg.count == 1999 and agg.schema == 2
    assert agg.conn_id == denial(1).conn_id and agg.last_ts == denial(1999).ts
    assert folder.folded == {"HANDSHAKE_TIMEOUT": 1999}
    # the flood goes on: its key stays hot, the next denial is folded too
    assert folder.offer(denial(3000), now=12.0) is None
    [agg2] = folder.due(now=20.0)
    assert agg2.conn_id == denial(3000).conn_id and agg2.count == 1 and agg2.last_ts is None


def test_a_quiet_key_is_forgotten_and_its_next_denial_written_at_once() -> None:
    folder = DenialFolder(interval=1.0)
    assert folder.offer(denial(0), now=0.0) is not None
    assert folder.due(now=1.0) == [] and len(folder) == 0
    assert folder.offer(denial(1), now=5.0) is not None


def test_sources_and_reasons_are_folded_apart_and_ports_do_not_matter() -> None:
    folder = DenialFolder(interval=1.0)
    offers = [
        denial(0, src="10.0.0.5"),
        denial(1, src="10.0.0.5"),  # another port of the same host: folded
        denial(2, src="10.0.0.6"),
        denial(3, src="10.0.0.5", reason=Reason.PEER_CERT_MISSING),
    ]
    written = [r for r in offers if folder.offer(r, now=0.0)]
    assert [r.conn_id for r in written] == [offers[0].conn_id, *(r.conn_id for r in offers[2:])]
    assert host_of("[::1]:4711") == "::1" and host_of("unix:/run/x.sock") == "unix:/run/x.sock"


def test_allowed_connections_are_never_folded_and_interval_0_folds_nothing() -> None:
    folder = DenialFolder(interval=10.0)
    ok = replace(denial(0), decision="allow", reason="OK", close_reason="CLOSED")
    assert all(folder.offer(ok, now=0.0) is ok for _ in range(5))
    off = DenialFolder(interval=0.0)
    assert all(off.offer(denial(i), now=0.0) is not None for i in range(5))


def test_many_sources_share_an_overflow_key_so_memory_stays_bounded() -> None:
    folder = DenialFolder(interval=1.0, max_keys=8)
    offers = (denial(i, src=f"10.1.{i // 250}.{i % 250}") for i in range(1000))
    written = [r for d in offers if (r := folder.offer(d, 0.0)) is not None]
    assert len(folder) <= 9  # 8 sources, then one "*" key for this reason
    assert len(written) == 9
    overflow = [r for r in folder.flush() if r.count > 1]
    assert sum(r.count for r in overflow) == 1000 - 9
    assert {host_of(r.src) for r in written[:8]} == {f"10.1.0.{i}" for i in range(8)}
    assert OVERFLOW_SOURCE == "*"


def test_flush_writes_every_pending_aggregate() -> None:
    folder = DenialFolder(interval=60.0)
    for i in range(10):
        folder.offer(denial(i), now=0.0)
    [agg] = folder.flush()
    assert agg.count == 9 and len(folder) == 0 and folder.flush() == []


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 30),
            st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
            st.sampled_from([Reason.HANDSHAKE_TIMEOUT, Reason.PEER_CERT_MISSING]),
        ),
        max_size=300,
    ),
    st.floats(0.5, 10),
    st.integers(1, 4),
)
def test_every_denial_is_in_exactly_one_written_record(
    events: list[tuple[float, str, Reason]], interval: float, max_keys: int
) -> None:
    folder = DenialFolder(interval=interval, max_keys=max_keys)
    written: list[ConnectionRecord] = []
    immediate, now = 0, 0.0
    for i, (step, src, reason) in enumerate(events):
        now += step / 10
        written += folder.due(now)
        if (out := folder.offer(denial(i, src=src, reason=reason), now)) is not None:
            written.append(out)
            immediate += 1
    written += folder.flush()
    assert sum(r.count for r in written) == len(events)
    assert len({r.conn_id for r in written}) == len(written)  # no denial written twice
    assert sum(folder.folded.values()) == len(events) - immediate
