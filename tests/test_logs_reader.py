"""Reading logs: records from lines, corrupt and truncated lines skipped and counted (never fatal),
bounded memory per line, rotated sets in order, gzip, and the same lines however the bytes arrive
(also for the follower, across rotation and truncation)."""

from __future__ import annotations

import gzip
import io
import os
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.logs.chain import Link, chained_line
from netshield.logs.follow import Follower
from netshield.logs.reader import (
    MAX_LINE,
    RawLine,
    ReadStats,
    lines_of,
    log_files,
    open_log,
    parse_line,
    read_records,
    records_of,
)
from netshield.record import ConnectionRecord, rfc3339


def rec(n: int) -> ConnectionRecord:
    return ConnectionRecord(
        ts=rfc3339(datetime(2025, 1, 31, 12, 0, n % 60, tzinfo=UTC)),
        conn_id=f"c{n}",
        direction="inbound",
        listener="127.0.0.1:7002",
        src="127.0.0.1:40000",
        dst="127.0.0.1:9000",
        decision="allow",
        reason="OK",
        detail="ok",
    )


def line(n: int) -> bytes:
    return chained_line(rec(n), Link(n, "0" * 64))


def read_all(data: bytes) -> tuple[list[str], ReadStats]:
    stats = ReadStats()
    ids = [e.record.conn_id for e in records_of(lines_of(io.BytesIO(data), "t"), stats)]
    return ids, stats


def test_good_lines_are_records_with_their_chain_link() -> None:
    stats = ReadStats()
    entries = list(records_of(lines_of(io.BytesIO(line(0) + line(1)), "t"), stats))
    assert [e.record.conn_id for e in entries] == ["c0", "c1"]
    assert entries[1].link == Link(1, "0" * 64) and entries[1].line.lineno == 2
    assert stats.records == 2 and stats.skipped == 0


def test_corrupt_lines_are_skipped_counted_and_the_first_is_named() -> None:
    bad_field = line(9).replace(b'"decision":"allow"', b'"decision":"maybe"')
    data = line(0) + b"not json\n" + bad_field + b"\n" + b"[1,2]\n" + b'{"schema": 2}\n' + line(1)
    ids, stats = read_all(data)
    assert ids == ["c0", "c1"]
    assert stats.corrupt == 5 and stats.truncated == 0 and stats.records == 2
    assert stats.first_problem is not None and stats.first_problem.startswith("t:2: not a record")
    assert "5 corrupt lines skipped" in stats.describe()


def test_the_clean_twin_reports_nothing_skipped() -> None:
    ids, stats = read_all(line(0) + line(1))
    assert ids == ["c0", "c1"] and stats.skipped == 0 and stats.first_problem is None


def test_a_truncated_last_line_is_counted_as_truncated() -> None:
    ids, stats = read_all(line(0) + line(1)[:50])
    assert ids == ["c0"] and stats.truncated == 1 and stats.corrupt == 0
    assert "1 truncated line skipped" in stats.describe()


def test_a_complete_last_line_without_newline_is_still_a_record() -> None:
    ids, stats = read_all(line(0) + line(1).rstrip(b"\n"))
    assert ids == ["c0", "c1"] and stats.skipped == 0


def test_an_overlong_line_is_cut_and_skipped_without_holding_it() -> None:
    huge = b"x" * (3 * MAX_LINE + 5) + b"\n"
    raw = list(lines_of(io.BytesIO(line(0) + huge + line(1)), "t"))
    assert [r.overlong for r in raw] == [False, True, False]
    assert len(raw[1].data) <= 256
    ids, stats = read_all(line(0) + huge + line(1))
    assert ids == ["c0", "c1"] and stats.corrupt == 1


def test_read_records_walks_rotated_files_oldest_first_and_gzip(tmp_path: Path) -> None:
    base = tmp_path / "records.jsonl"
    base.write_bytes(line(3))
    (tmp_path / "records.jsonl.1").write_bytes(line(2))
    with gzip.open(tmp_path / "records.jsonl.2.gz", "wb") as f:
        f.write(line(1))
    (tmp_path / "records.jsonl.10").write_bytes(line(0))
    (tmp_path / "records.jsonl.bak").write_bytes(b"not part of the set\n")
    files = log_files(base)
    assert [Path(f).name for f in files] == [
        "records.jsonl.10",
        "records.jsonl.2.gz",
        "records.jsonl.1",
        "records.jsonl",
    ]
    stats = ReadStats()
    assert [e.record.conn_id for e in read_records(files, stats)] == ["c0", "c1", "c2", "c3"]
    assert log_files(base, rotated=False) == [str(base)]


def test_stdin_is_a_log_too(monkeypatch: object) -> None:
    with open_log("-") as stream:
        assert stream is not None  # pytest's stdin; the CLI test reads real stdin


class TrickleIO(io.RawIOBase):
    """A raw stream that returns at most `step` bytes per read (a slow pipe)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        chunk = self._data[self._pos : self._pos + min(self._step, len(buffer))]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


line_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))


@settings(max_examples=200, deadline=None)
@given(st.lists(line_bytes, max_size=20), st.booleans(), st.integers(1, 17))
def test_lines_are_the_same_however_the_bytes_arrive(
    pieces: list[bytes], trailing: bool, step: int
) -> None:
    data = b"\n".join(pieces) + (b"\n" if trailing and pieces else b"")
    whole = [r.data for r in lines_of(io.BytesIO(data), "t")]
    trickled = [r.data for r in lines_of(io.BufferedReader(TrickleIO(data, step), 64), "t")]
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert whole == trickled == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_line_never_raises_whatever_the_bytes(data: bytes) -> None:
    stats = ReadStats()
    entry = parse_line(RawLine(data, "t", 1), stats)
    assert (entry is None) == (stats.skipped == 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(line_bytes, min_size=1, max_size=15), st.lists(st.integers(1, 50), min_size=1))
def test_the_follower_yields_the_same_lines_however_the_writer_splits_them(
    tmp_path_factory: object, pieces: list[bytes], cuts: list[int]
) -> None:
    import tempfile

    data = b"\n".join(pieces) + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log"
        path.write_bytes(b"")
        follower = Follower(path)
        got: list[bytes] = []
        with path.open("ab") as f:
            pos, i = 0, 0
            while pos < len(data):
                step = cuts[i % len(cuts)]
                f.write(data[pos : pos + step])
                f.flush()
                pos += step
                i += 1
                got += [r.data for r in follower.poll()]
        got += [r.data for r in follower.poll()]
        follower.close()
    assert got == pieces


def test_the_follower_reads_across_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_bytes(line(0))
    follower = Follower(path, from_start=True, grace=0.0)
    assert [r.data for r in follower.poll()] == [line(0).rstrip(b"\n")]
    with path.open("ab") as f:
        f.write(line(1))
    os.rename(path, tmp_path / "records.jsonl.1")  # rotation: FILE -> FILE.1, a new FILE
    path.write_bytes(line(2))
    assert [r.data for r in follower.poll()] == [line(1).rstrip(b"\n"), line(2).rstrip(b"\n")]
    assert follower.rotations == 1
    path.write_bytes(line(3))  # truncated and rewritten in place (copytruncate)
    got = [r.data for r in follower.poll()]
    assert got == [line(3).rstrip(b"\n")] and follower.truncations == 1
    follower.close()


def test_the_follower_finds_files_rotated_twice_between_polls(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_bytes(line(0))
    follower = Follower(path, from_start=True)
    assert len(list(follower.poll())) == 1
    os.rename(path, tmp_path / "records.jsonl.1")
    path.write_bytes(line(1))
    os.rename(tmp_path / "records.jsonl.1", tmp_path / "records.jsonl.2")
    os.rename(path, tmp_path / "records.jsonl.1")
    path.write_bytes(line(2))
    assert [r.data for r in follower.poll()] == [
        line(1).rstrip(b"\n"),
        line(2).rstrip(b"\n"),
    ]
    follower.close()


def test_the_follower_starts_at_the_end_unless_asked_and_waits_for_a_missing_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "records.jsonl"
    path.write_bytes(line(0))
    tail = Follower(path)
    assert list(tail.poll()) == []
    with path.open("ab") as f:
        f.write(line(1))
    assert [r.data for r in tail.poll()] == [line(1).rstrip(b"\n")]
    tail.close()
    missing = Follower(tmp_path / "later.jsonl")
    assert list(missing.poll()) == []
    (tmp_path / "later.jsonl").write_bytes(line(5))
    assert [r.data for r in missing.poll()] == [line(5).rstrip(b"\n")]
    missing.close()


def test_the_follower_holds_a_partial_line_until_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"")
    follower = Follower(path)
    with path.open("ab") as f:
        f.write(line(0)[:30])
        f.flush()
        assert list(follower.poll()) == []
        f.write(line(0)[30:])
    assert [r.data for r in follower.poll()] == [line(0).rstrip(b"\n")]
    follower.close()
