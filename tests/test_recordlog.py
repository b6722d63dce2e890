"""RecordSink: one line per record with one write, appended (two writers keep whole lines),
file mode 0640, standard output, and a failing target that does not stop the data plane."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from netshield.record import ConnectionRecord, new_conn_id, rfc3339
from netshield.recordlog import RecordSink


def record(n: int, writer: str = "a", detail: str = "ok") -> ConnectionRecord:
    return ConnectionRecord(
        ts=rfc3339(datetime.now(UTC)),
        conn_id=f"{writer}-{n}",
        direction="outbound",
        listener="outbound:orders",
        src="127.0.0.1:40000",
        dst="10.0.0.7:7002",
        decision="allow",
        reason="OK",
        detail=detail,
        bytes_in=n,
    )


def read_records(path: Path) -> list[ConnectionRecord]:
    return [ConnectionRecord.from_json(line) for line in path.read_text().splitlines()]


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_file_is_created_0640_with_one_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        for n in range(3):
            sink.write(record(n))
            # flushed per record: the line is in the file before the sink closes
            assert len(path.read_text().splitlines()) == n + 1
    assert path.stat().st_mode & 0o777 == 0o640
    assert [r.conn_id for r in read_records(path)] == ["a-0", "a-1", "a-2"]
    assert sink.written == 3 and sink.dropped == 0


def test_existing_file_is_appended_to_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text(record(0, "old").to_json() + "\n")
    with RecordSink(path) as sink:
        sink.write(record(1, "new"))
    assert [r.conn_id for r in read_records(path)] == ["old-0", "new-1"]


def test_two_sinks_on_one_file_interleave_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    count, detail = 1500, "x" * 1500  # lines of ~2 KB: torn writes would show

    def writer(name: str) -> None:
        with RecordSink(path) as sink:
            for n in range(count):
                sink.write(record(n, name, detail))

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    records = read_records(path)  # every line parses: none torn
    for name in ("a", "b"):
        assert [r.bytes_in for r in records if r.conn_id.startswith(name)] == list(range(count))


def test_the_twin_two_writers_without_o_append_lose_lines(tmp_path: Path) -> None:
    path = tmp_path / "clobbered.jsonl"
    fds = [os.open(path, os.O_WRONLY | os.O_CREAT, 0o640) for _ in range(2)]
    try:
        for n in range(10):
            for i, fd in enumerate(fds):
                os.write(fd, (record(n, f"w{i}").to_json() + "\n").encode())
    finally:
        for fd in fds:
            os.close(fd)
    assert len(path.read_text().splitlines()) < 20


def test_stdout_gets_the_same_line_and_is_not_closed(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        path = tmp_path / "records.jsonl"
        sink = RecordSink(path, stdout=True, stdout_fd=write_end)
        sink.write(record(7))
        sink.close()
        sink.close()  # idempotent
        os.write(write_end, b"still open\n")
        out = os.read(read_end, 65536).decode()
    finally:
        os.close(read_end)
        os.close(write_end)
    line, rest = out.split("\n", 1)
    assert ConnectionRecord.from_json(line) == read_records(path)[0]
    assert rest == "still open\n"


def test_a_failing_target_drops_records_and_logs_once_without_raising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # writing now fails with EPIPE
    path = tmp_path / "records.jsonl"
    try:
        with caplog.at_level(logging.WARNING, logger="netshield.records"):
            with RecordSink(path, stdout=True, stdout_fd=write_end) as sink:
                for n in range(5):
                    sink.write(record(n, detail="secret-free"))
    finally:
        os.close(write_end)
    assert sink.dropped == 5 and sink.written == 5
    assert len(read_records(path)) == 5  # the file still got every record
    warnings = [r for r in caplog.records if "cannot write connection records" in r.getMessage()]
    assert len(warnings) == 1
    assert "secret-free" not in caplog.text  # records never go to the diagnostic log


def test_write_after_close_is_an_error_and_a_missing_directory_fails_at_open(
    tmp_path: Path,
) -> None:
    sink = RecordSink(tmp_path / "r.jsonl")
    sink.close()
    with pytest.raises(ValueError, match="closed"):
        sink.write(record(0))
    with pytest.raises(FileNotFoundError):
        RecordSink(tmp_path / "no" / "such" / "dir.jsonl")
    assert RecordSink(stdout=False).written == 0  # a sink with no target is allowed


def test_new_conn_ids_in_records_sort_like_their_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with RecordSink(path) as sink:
        for n in range(20):
            now = datetime(2025, 1, 1, tzinfo=UTC).replace(second=n)
            sink.write(
                ConnectionRecord(
                    ts=rfc3339(now),
                    conn_id=new_conn_id(now),
                    direction="inbound",
                    listener="inbound",
                    src="a",
                    dst="b",
                    decision="deny",
                    reason="PEER_NOT_AUTHORIZED",
                    detail="no",
                )
            )
    records = read_records(path)
    assert sorted(records, key=lambda r: r.conn_id) == sorted(records, key=lambda r: r.ts)
