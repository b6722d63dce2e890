"""`netshield logs` as a process: the table, --json passthrough, filters, stdin, colour only on
a terminal, corrupt lines counted but never fatal, one-line errors, `| head`, --summary, and
--follow surviving rotation while a separate writer process rotates the file."""

from __future__ import annotations

import json
import os
import pty
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pytest

from netshield.record import ConnectionRecord, rfc3339
from netshield.recordlog import RecordSink
from tests.support import netshield_cmd

ROOT = Path(__file__).resolve().parent.parent
TD = "spiffe://t.test/svc/"


def rec(n: int, *, deny: bool = False, ago: timedelta = timedelta(0)) -> ConnectionRecord:
    return ConnectionRecord(
        ts=rfc3339(datetime.now(UTC) - ago),
        conn_id=f"c{n:05d}",
        direction="inbound",
        listener="127.0.0.1:7002",
        src=f"10.0.0.{n % 250}:40000",
        dst="127.0.0.1:9000",
        local_identity=TD + "orders",
        peer_identity=TD + ("intruder" if deny else "frontend"),
        decision="deny" if deny else "allow",
        reason="PEER_NOT_AUTHORIZED" if deny else "OK",
        detail="d",
        bytes_in=0 if deny else 1000,
        bytes_out=0 if deny else 2000,
        duration_ms=float(n % 100),
        close_reason="PEER_NOT_AUTHORIZED" if deny else "CLOSED",
    )


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        for n in range(30):
            sink.write(rec(n, deny=n % 10 == 0, ago=timedelta(hours=3) if n < 5 else timedelta(0)))
    return path


def run(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        netshield_cmd("logs", *args),
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_table_by_default_without_colour_when_piped(log: Path) -> None:
    result = run(str(log))
    out = result.stdout.decode()
    assert result.returncode == 0 and result.stderr == b""
    lines = out.splitlines()
    assert lines[0].startswith("TIME (UTC)") and "SOURCE → DESTINATION" in lines[0]
    assert len(lines) == 31 and "\x1b[" not in out
    assert "c00010" in out and "PEER_NOT_AUTHORIZED" in out and "1000/2000" not in out  # human
    assert "1000/2.0K" in out


def test_colour_on_request_and_on_a_terminal_but_not_with_no_color(log: Path) -> None:
    assert b"\x1b[31m" in run(str(log), "--color", "always").stdout
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        netshield_cmd("logs", str(log)), stdout=secondary, stderr=subprocess.PIPE
    )
    os.close(secondary)
    seen = b""
    with open(primary, "rb", buffering=0) as terminal:
        sel = selectors.DefaultSelector()
        sel.register(terminal, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not sel.select(timeout=1):  # quiet: the CLI may still be starting (busy host)
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = terminal.read(65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    proc.wait(timeout=30)
    assert b"\x1b[31m" in seen and b"\x1b[32m" in seen
    no_color = subprocess.run(
        netshield_cmd("logs", str(log), "--color", "auto"),
        capture_output=True,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=60,
    )
    assert b"\x1b[" not in no_color.stdout


def test_json_passes_matching_lines_through_unchanged(log: Path) -> None:
    result = run(str(log), "--json", "--denied")
    original = [line for line in log.read_bytes().splitlines() if b'"decision":"deny"' in line]
    assert result.stdout.splitlines() == original and len(original) == 3


def test_filters_combine(log: Path) -> None:
    def ids(*args: str) -> list[str]:
        out = run(str(log), "--json", *args).stdout.splitlines()
        return [json.loads(line)["conn_id"] for line in out]

    assert ids("--denied") == ["c00000", "c00010", "c00020"]
    assert ids("--denied", "--since", "1h") == ["c00010", "c00020"]
    assert ids("--until", "1h") == [f"c{n:05d}" for n in range(5)]
    assert ids("--peer", "intruder") == ids("--denied")
    assert ids("--service", "frontend", "--conn", "c00001", "--conn", "c00002") == [
        "c00001",
        "c00002",
    ]
    assert ids("--reason", "closed") == [f"c{n:05d}" for n in range(30) if n % 10]
    assert ids("--service", "billing") == []


def test_stdin_is_read_with_dash(log: Path) -> None:
    result = run("-", "--json", "--conn", "c00007", stdin=log.read_bytes())
    assert result.returncode == 0 and b'"conn_id":"c00007"' in result.stdout


def test_the_log_can_come_from_the_environment(log: Path) -> None:
    result = run("--json", "--conn", "c00003", env={"NETSHIELD_RECORDS": str(log)})
    assert result.returncode == 0 and b"c00003" in result.stdout


def test_corrupt_and_truncated_lines_are_skipped_counted_and_not_fatal(log: Path) -> None:
    data = log.read_bytes().splitlines(keepends=True)
    damaged = b"".join(
        [*data[:3], b"{oops\n", *data[3:10], b"\x00\xff\n", *data[10:], data[0][:40]]
    )
    result = run("-", "--json", stdin=damaged)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 30
    err = result.stderr.decode()
    assert "2 corrupt lines skipped" in err and "1 truncated line skipped" in err
    assert "(first: -:4: not a record" in err and err.count("\n") == 1


def test_the_clean_twin_prints_nothing_on_stderr(log: Path) -> None:
    result = run("-", "--json", stdin=log.read_bytes())
    assert result.returncode == 0 and result.stderr == b""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/records.jsonl"], "cannot read"),
        (["LOG", "--since", "yesterday"], "--since: 'yesterday' is not a time"),
        (["LOG", "--follow", "--summary"], "not with --summary"),
    ],
)
def test_errors_are_one_line_and_exit_2(log: Path, args: list[str], message: str) -> None:
    result = run(*[str(log) if a == "LOG" else a for a in args])
    err = result.stderr.decode()
    assert result.returncode == 2 and message in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_no_log_named_anywhere_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NETSHIELD_RECORDS"}
    result = subprocess.run(
        netshield_cmd("logs"), capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2 and "NETSHIELD_RECORDS" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        for n in range(20_000):
            sink.write(rec(n))
    shell = f"{' '.join(netshield_cmd('logs', str(path)))} | head -n 2"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert len(result.stdout.splitlines()) == 2
    assert "Traceback" not in result.stderr and "Error" not in result.stderr


def test_summary_through_the_cli(log: Path) -> None:
    result = run(str(log), "--summary")
    out = result.stdout.decode()
    assert result.returncode == 0 and "30 records" in out
    assert "frontend → orders" in out and "intruder → orders" in out and "p99" in out
    as_json = json.loads(run(str(log), "--summary", "--json").stdout)
    assert as_json["decisions"] == {"allow": 27, "deny": 3}


def test_logs_reads_an_aggregate_of_denials_as_its_count(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordSink(path) as sink:
        sink.write(rec(1))
        sink.write(rec(2, deny=True))  # the flood's first denial, written alone
        later = rfc3339(datetime.now(UTC) + timedelta(seconds=9))
        sink.write(replace(rec(3, deny=True), count=1999, last_ts=later))
    table = run(str(path)).stdout.decode()
    assert "×1999 PEER_NOT_AUTHOR…" in table and "×1 " not in table  # the count comes first
    summary = json.loads(run(str(path), "--summary", "--json").stdout)
    assert summary["records"] == 3 and summary["connections"] == 2001
    assert summary["decisions"] == {"allow": 1, "deny": 2000}
    assert summary["reasons"] == {"PEER_NOT_AUTHORIZED": 2000} and summary["last"] == later
    assert "3 records (2001 connections" in run(str(path), "--summary").stdout.decode()
    assert run(str(path), "--verify").returncode == 0  # an aggregate is a chained line too
    only = run(str(path), "--denied", "--json").stdout.decode().splitlines()
    assert [json.loads(line)["schema"] for line in only] == [1, 2]


WRITER = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path
from netshield.record import ConnectionRecord, rfc3339
from netshield.recordlog import RecordSink
path, count, keep, pause = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
with RecordSink(path, max_bytes=20_000, keep=keep) as sink:
    for n in range(count):
        sink.write(ConnectionRecord(ts=rfc3339(datetime.now(UTC)), conn_id=f"f{n:05d}",
            direction="inbound", listener="l", src="127.0.0.1:1", dst="127.0.0.1:2",
            decision="allow", reason="OK", detail="x" * 100, bytes_in=n))
        if n % 20 == 0:
            time.sleep(pause)
    print(sink.rotations, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("keep", "pause", "count"),
    [
        (1000, 0.0, 3000),  # many rotations between two polls: the files in between are read
        (2, 0.3, 400),  # retention at work, each file outlives a poll
    ],
)
def test_follow_survives_rotation_by_another_process(
    tmp_path: Path, keep: int, pause: float, count: int
) -> None:
    path = tmp_path / "records.jsonl"
    follower = subprocess.Popen(
        netshield_cmd("logs", str(path), "--follow", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    seen: list[str] = []

    def drain(stream: IO[str]) -> None:  # read while the writer runs: a full pipe would stall it
        for line in stream:
            seen.append(json.loads(line)["conn_id"])

    reader = threading.Thread(target=drain, args=(follower.stdout,), daemon=True)
    reader.start()
    assert follower.stderr is not None
    waiting = follower.stderr.readline()  # the follower waits for the file before it is written
    assert "waiting for" in waiting, waiting
    writer = subprocess.run(
        [sys.executable, "-c", WRITER, str(path), str(count), str(keep), str(pause)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert writer.returncode == 0, writer.stderr
    assert int(writer.stdout) >= 5
    deadline = time.monotonic() + 30
    while len(seen) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    follower.send_signal(signal.SIGTERM)
    follower.wait(timeout=10)
    reader.join(timeout=10)
    assert seen == [f"f{n:05d}" for n in range(count)]  # every record, once, in order
    assert follower.returncode == 0
    assert "Traceback" not in (follower.stderr.read() if follower.stderr else "")


def test_follow_without_from_start_prints_only_new_records(log: Path) -> None:
    follower = subprocess.Popen(
        netshield_cmd("logs", str(log), "--follow", "--json"),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    # The follower may start after a first write (a busy host): append new records until one
    # comes out (bounded), never an old one.
    sel = selectors.DefaultSelector()
    sel.register(follower.stdout, selectors.EVENT_READ)
    first = ""
    deadline = time.monotonic() + 60
    try:
        with RecordSink(log) as sink:
            while not first and time.monotonic() < deadline:
                sink.write(rec(99))
                if sel.select(timeout=1.0):
                    first = follower.stdout.readline()
    finally:
        sel.close()
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=10)
    assert json.loads(first)["conn_id"] == "c00099"
