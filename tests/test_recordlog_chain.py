"""RecordSink's hash chain, rotation and retention: every line carries the hash of the one before,
across rotation, restarts, several writers (threads and processes) and external logrotate; a
crash loses nothing already written; a torn line is ended and chained over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from netshield.errors import ConfigError
from netshield.logs.chain import GENESIS, line_hash, link_of
from netshield.logs.reader import lines_of, log_files, open_log
from netshield.logs.verify import ChainVerifier, VerifyResult
from netshield.record import ConnectionRecord, rfc3339
from netshield.recordlog import RecordSink, rotated_path
from netshield.sidecar.config import RecordsConfig, parse_sidecar_config

ROOT = Path(__file__).resolve().parent.parent


def rec(n: int, writer: str = "w") -> ConnectionRecord:
    return ConnectionRecord(
        ts=rfc3339(datetime.now(UTC)),
        conn_id=f"{writer}-{n}",
        direction="inbound",
        listener="127.0.0.1:7002",
        src="127.0.0.1:40000",
        dst="127.0.0.1:9000",
        decision="allow",
        reason="OK",
        detail="frontend is in services.orders.allowed_callers (policy version 1)",
        bytes_in=n,
    )


def verify(path: Path) -> VerifyResult:
    verifier = ChainVerifier()
    for name in log_files(path):
        verifier.begin_file(name)
        with open_log(name) as stream:
            for line in lines_of(stream, name):
                verifier.feed(line)
    return verifier.result


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def all_ids(path: Path) -> list[str]:
    ids = []
    for name in log_files(path):
        ids += [json.loads(line)["conn_id"] for line in Path(name).read_bytes().splitlines()]
    return ids


def test_each_line_carries_the_hash_of_the_line_before(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        for n in range(5):
            sink.write(rec(n))
    raw = lines(path)
    links = [link_of(line) for line in raw]
    assert links[0] is not None and links[0].prev == GENESIS and links[0].seq == 0
    for before, link in zip(raw, links[1:], strict=False):
        assert link is not None and link.prev == line_hash(before)
    assert [link.seq for link in links if link] == [0, 1, 2, 3, 4]
    # readers that do not know the chain still read every record
    assert [ConnectionRecord.from_json(line).conn_id for line in raw] == [
        f"w-{n}" for n in range(5)
    ]
    assert verify(path).intact


def test_rotation_by_size_keeps_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path, max_bytes=4000, keep=100) as sink:
        for n in range(60):
            sink.write(rec(n))
        assert sink.rotations >= 5
    files = log_files(path)
    assert len(files) == sink.rotations + 1
    for name in files:
        assert Path(name).stat().st_size <= 4000
    first_of_live = link_of(lines(path)[0])
    assert first_of_live is not None
    assert first_of_live.prev == line_hash(lines(rotated_path(path, 1))[-1])
    assert all_ids(path) == [f"w-{n}" for n in range(60)]
    result = verify(path)
    assert result.intact and result.records == 60 and result.first is not None
    assert result.first.seq == 0


def test_without_max_bytes_the_file_is_never_rotated(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path, max_bytes=0) as sink:
        for n in range(60):
            sink.write(rec(n))
    assert sink.rotations == 0 and log_files(path) == [str(path)]


def test_retention_keeps_only_keep_rotated_files_and_verify_says_where_the_chain_starts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path, max_bytes=3000, keep=2) as sink:
        for n in range(80):
            sink.write(rec(n))
    assert rotated_path(path, 2).exists() and not rotated_path(path, 3).exists()
    result = verify(path)
    assert result.intact and result.first is not None and result.first.seq > 0
    assert "rotated away by retention" in result.report()[0]
    assert all_ids(path)[-1] == "w-79"


def test_a_smaller_keep_later_deletes_the_surplus_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path, max_bytes=3000, keep=5) as sink:
        for n in range(60):
            sink.write(rec(n))
    assert rotated_path(path, 5).exists()
    with RecordSink(path, max_bytes=3000, keep=2) as sink:
        for n in range(60, 80):
            sink.write(rec(n))
    assert not rotated_path(path, 3).exists() and not rotated_path(path, 5).exists()
    assert verify(path).intact


def test_a_restarted_writer_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        sink.write(rec(0))
        sink.write(rec(1))
    with RecordSink(path) as sink:
        sink.write(rec(2))
    link = link_of(lines(path)[-1])
    assert link is not None and link.seq == 2 and link.prev == line_hash(lines(path)[1])
    assert verify(path).intact


def test_a_restart_on_an_empty_file_chains_to_the_newest_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        for n in range(3):
            sink.write(rec(n))
    os.rename(path, rotated_path(path, 1))
    path.write_bytes(b"")
    with RecordSink(path) as sink:
        sink.write(rec(3))
    link = link_of(lines(path)[0])
    assert link is not None and link.seq == 3
    assert link.prev == line_hash(lines(rotated_path(path, 1))[-1])
    assert verify(path).intact


def test_two_threads_on_one_file_make_one_unbroken_chain(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"

    def writer(name: str) -> None:
        with RecordSink(path, max_bytes=20_000, keep=1000) as sink:
            for n in range(300):
                sink.write(rec(n, name))

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    result = verify(path)
    assert result.intact, result.report()
    assert sorted(all_ids(path)) == sorted(f"{w}-{n}" for w in "ab" for n in range(300))


WRITER = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from netshield.record import ConnectionRecord, rfc3339
from netshield.recordlog import RecordSink
path, name, count, max_bytes = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with RecordSink(path, max_bytes=max_bytes, keep=10000) as sink:
    for n in range(count):
        sink.write(ConnectionRecord(ts=rfc3339(datetime.now(UTC)), conn_id=f"{name}-{n}",
            direction="inbound", listener="l", src="127.0.0.1:1", dst="127.0.0.1:2",
            decision="allow", reason="OK", detail="x" * 200, bytes_in=n))
        print(n, flush=True)
"""


def writer_process(path: Path, name: str, count: int, max_bytes: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), name, str(count), str(max_bytes)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.slow
def test_three_processes_rotating_one_file_lose_nothing_and_keep_one_chain(
    tmp_path: Path,
) -> None:
    path = tmp_path / "records.jsonl"
    procs = [writer_process(path, name, 400, 30_000) for name in ("p", "q", "r")]
    for proc in procs:
        proc.communicate(timeout=120)
        assert proc.returncode == 0
    result = verify(path)
    assert result.intact, result.report()
    assert sorted(all_ids(path)) == sorted(f"{w}-{n}" for w in "pqr" for n in range(400))
    assert len(log_files(path)) > 10


@pytest.mark.slow
def test_a_killed_writer_loses_no_record_it_had_written(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    proc = writer_process(path, "k", 1_000_000, 0)
    assert proc.stdout is not None
    written = -1
    while written < 500:
        written = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ids = all_ids(path)  # every line is whole: each parses
    assert len(ids) >= written + 1 and ids[: written + 1] == [f"k-{n}" for n in range(written + 1)]
    assert verify(path).intact


def test_a_torn_last_line_is_ended_and_chained_over(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        sink.write(rec(0))
        sink.write(rec(1))
    with path.open("ab") as f:  # a crash in the middle of a write
        f.write(lines(path)[-1][:70])
    with RecordSink(path) as sink:
        sink.write(rec(2))
    raw = lines(path)
    assert len(raw) == 4 and raw[2] == raw[1][:70]
    link = link_of(raw[3])
    assert link is not None and link.prev == line_hash(raw[2]) and link.seq == 2
    result = verify(path)
    assert result.problem_count == 1 and "not a record" in str(result.problems[0])
    assert result.problems[0].lineno == 3


def test_the_untorn_twin_has_no_problem(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        sink.write(rec(0))
        sink.write(rec(1))
    with RecordSink(path) as sink:
        sink.write(rec(2))
    assert len(lines(path)) == 3 and verify(path).problem_count == 0


def test_logrotate_create_mode_is_followed_without_a_signal(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        sink.write(rec(0))
        os.rename(path, rotated_path(path, 1))  # what logrotate does (then `create`)
        path.touch()
        sink.write(rec(1))
        sink.write(rec(2))
    assert [json.loads(x)["conn_id"] for x in lines(path)] == ["w-1", "w-2"]
    assert (
        lines(rotated_path(path, 1))[0].startswith(b"{") and len(lines(rotated_path(path, 1))) == 1
    )
    assert verify(path).intact


def test_logrotate_copytruncate_keeps_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        sink.write(rec(0))
        sink.write(rec(1))
        rotated_path(path, 1).write_bytes(path.read_bytes())
        os.truncate(path, 0)
        sink.write(rec(2))
    assert len(lines(path)) == 1
    assert verify(path).intact


def test_a_deleted_live_file_shows_as_a_break_while_the_writer_runs(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path, max_bytes=3000) as sink:
        for n in range(25):
            sink.write(rec(n))
        assert sink.rotations >= 1
        path.unlink()  # someone removes the newest records
        sink.write(rec(99))
    result = verify(path)
    assert not result.intact and "missing" in result.report()[1]


def test_stdout_only_sink_is_chained_too(tmp_path: Path) -> None:
    read, write = os.pipe()
    with RecordSink(stdout=True, stdout_fd=write) as sink:
        sink.write(rec(0))
        sink.write(rec(1))
    os.close(write)
    with os.fdopen(read, "rb") as stream:
        raw = stream.read().splitlines()
    second = link_of(raw[1])
    assert second is not None and second.prev == line_hash(raw[0])


def test_file_and_stdout_get_the_same_line(tmp_path: Path) -> None:
    read, write = os.pipe()
    path = tmp_path / "records.jsonl"
    with RecordSink(path, stdout=True, stdout_fd=write) as sink:
        sink.write(rec(0))
    os.close(write)
    with os.fdopen(read, "rb") as stream:
        assert stream.read() == path.read_bytes()


def test_bad_rotation_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="keep >= 1"):
        RecordSink(None, keep=0)
    with pytest.raises(ValueError, match="max_bytes >= 0"):
        RecordSink(None, max_bytes=-1)


SIDECAR = """
service: orders
cas: {url: "https://127.0.0.1:8443", ca: ca.pem}
platform: {in_process: p1}
workload: {path: app, cmd: "python3 app.py"}
"""


def test_sidecar_config_has_documented_rotation_defaults_and_takes_overrides() -> None:
    config = parse_sidecar_config(SIDECAR + "records: {file: r.jsonl}\n")
    assert config.records.max_bytes == RecordsConfig.max_bytes == 100 * 1024 * 1024
    assert config.records.keep == RecordsConfig.keep == 10
    config = parse_sidecar_config(SIDECAR + "records: {file: r.jsonl, max_bytes: 0, keep: 3}\n")
    assert config.records.max_bytes == 0 and config.records.keep == 3


def test_sidecar_config_rejects_bad_rotation_values_by_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_sidecar_config(SIDECAR + "records: {file: r.jsonl, max_bytes: -1, keep: 0}\n")
    paths = {p.path for p in info.value.problems}
    assert paths == {"records.max_bytes", "records.keep"}
