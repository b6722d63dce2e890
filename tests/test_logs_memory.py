"""`netshield logs` streams: filtering and summarising a big log takes the same peak memory as a
log a quarter of its size (and stays small), while every record and every corrupt line is seen.

Sizes come from NETSHIELD_TEST_LOG_MB (default "100,400"); NETSHIELD_TEST_LOG_MB=256,1024 runs the
1 GB case. The peak RSS of the `netshield logs` process is measured by a small parent process
with getrusage(RUSAGE_CHILDREN), which covers exactly that one child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from netshield.logs.chain import Link, chained_line
from netshield.record import ConnectionRecord, rfc3339
from tests.support import netshield_cmd

pytestmark = pytest.mark.slow

MB = 1024 * 1024
SIZES = [int(x) for x in os.environ.get("NETSHIELD_TEST_LOG_MB", "100,400").split(",")]
MAX_PEAK_MB = 120  # Python, netshield and a line at a time: far below any of the log sizes
GROWTH_MB = 8  # allowed difference in peak RSS between the small and the big log

MEASURE = """
import resource, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
lines = 0
while chunk := proc.stdout.read(1 << 16):
    lines += chunk.count(b"\\n")
err = proc.stderr.read().decode()
proc.wait()
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(proc.returncode, lines, peak_kb, repr(err))
"""


def block() -> tuple[bytes, int, int]:
    """About 1 MB of log: records of three pairs, a fifth denied, and one corrupt line."""
    start = datetime(2025, 1, 31, tzinfo=UTC)
    lines, denied, records = [], 0, 0
    n = 0
    while sum(map(len, lines)) < MB:
        deny = n % 5 == 0
        caller = ("frontend", "intruder", "billing")[n % 3]
        record = ConnectionRecord(
            ts=rfc3339(start + timedelta(milliseconds=n)),
            conn_id=f"{n:016x}",
            direction="inbound",
            listener="0.0.0.0:7002",
            src=f"10.0.{n % 200}.{n % 250}:{40000 + n % 20000}",
            dst="127.0.0.1:9000",
            local_identity="spiffe://big.test/svc/orders",
            peer_identity=f"spiffe://big.test/svc/{caller}",
            tls_version="TLSv1.3",
            cipher="TLS_AES_256_GCM_SHA384",
            decision="deny" if deny else "allow",
            reason="PEER_NOT_AUTHORIZED" if deny else "OK",
            detail=f"{caller} is in services.orders.allowed_callers (policy version 3)",
            bytes_in=0 if deny else n * 7,
            bytes_out=0 if deny else n * 13,
            duration_ms=float(n % 1000) / 7,
            close_reason="PEER_NOT_AUTHORIZED" if deny else "CLOSED",
            peer_serial=f"{n:x}",
            peer_epoch=1,
            policy_version=3,
        )
        lines.append(chained_line(record, Link(n, "0" * 64)))
        denied += deny
        records += 1
        n += 1
    lines.append(b'{"schema":1,"conn_id":"broken"\n')
    return b"".join(lines), records, denied


def make_log(path: Path, megabytes: int, data: bytes) -> int:
    """Write `data` repeatedly (fast: one os.write per copy); returns the number of copies."""
    copies = max(1, megabytes * MB // len(data))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(copies):
            os.write(fd, data)
    finally:
        os.close(fd)
    return copies


def measure(*args: str) -> tuple[int, int, int, str]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *netshield_cmd("logs", *args)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    ).stdout.split(" ", 3)
    return int(out[0]), int(out[1]), int(out[2]) // 1024, out[3].strip()


def test_a_big_log_is_filtered_and_summarised_in_constant_memory(tmp_path: Path) -> None:
    data, _per_block, denied_per_block = block()
    peaks: dict[int, int] = {}
    for megabytes in sorted(SIZES):
        path = tmp_path / f"big-{megabytes}.jsonl"
        copies = make_log(path, megabytes, data)
        assert path.stat().st_size >= megabytes * MB * 0.95
        code, lines, peak, err = measure(str(path), "--denied")
        assert code == 0
        assert lines == 1 + copies * denied_per_block  # the header and every denied record
        assert f"{copies} corrupt lines skipped" in err
        peaks[megabytes] = peak
        if megabytes == max(SIZES):
            code, lines, summary_peak, err = measure(str(path), "--summary", "--json")
            assert code == 0 and f"{copies} corrupt lines skipped" in err
            assert summary_peak <= MAX_PEAK_MB
        path.unlink()
    small, big = peaks[min(SIZES)], peaks[max(SIZES)]
    print(f"peak RSS of `netshield logs --denied`: {json.dumps(peaks)} MB by log size in MB")
    assert big <= MAX_PEAK_MB
    assert big - small <= GROWTH_MB, f"memory grew with the log: {peaks}"
