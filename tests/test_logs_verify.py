"""`netshield logs --verify`: a deleted, edited or reordered record breaks the chain and is named;
each tampering has its untampered twin that verifies clean — within a file, across rotation, and
through the command line."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from netshield.logs.reader import lines_of, log_files, open_log
from netshield.logs.verify import ChainVerifier, VerifyResult
from netshield.record import ConnectionRecord, rfc3339
from netshield.recordlog import RecordSink, rotated_path
from tests.support import netshield_cmd


def rec(n: int) -> ConnectionRecord:
    deny = n % 3 == 0
    return ConnectionRecord(
        ts=rfc3339(datetime.now(UTC)),
        conn_id=f"c{n}",
        direction="inbound",
        listener="127.0.0.1:7002",
        src="127.0.0.1:40000",
        dst="127.0.0.1:9000",
        peer_identity="spiffe://t.test/svc/" + ("intruder" if deny else "frontend"),
        decision="deny" if deny else "allow",
        reason="PEER_NOT_AUTHORIZED" if deny else "OK",
        detail="d",
        bytes_in=n,
    )


def make_log(path: Path, count: int = 10, **rotation: int) -> None:
    with RecordSink(path, **rotation) as sink:
        for n in range(count):
            sink.write(rec(n))


def verify(path: Path) -> VerifyResult:
    verifier = ChainVerifier()
    for name in log_files(path):
        verifier.begin_file(name)
        with open_log(name) as stream:
            for line in lines_of(stream, name):
                verifier.feed(line)
    return verifier.result


def edit_lines(path: Path, change: object) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(change(lines)))  # type: ignore[operator]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "records.jsonl"
    make_log(path)
    return path


def test_untampered_log_verifies(log: Path) -> None:
    result = verify(log)
    assert result.intact and result.records == 10 and result.head is not None
    assert result.head[0] == 9
    assert "intact" in result.report()[0] and "complete from the first record" in result.report()[0]


def test_a_deleted_record_is_reported_as_missing(log: Path) -> None:
    edit_lines(log, lambda ls: ls[:4] + ls[5:])
    result = verify(log)
    assert not result.intact and result.problem_count == 1
    problem = result.problems[0]
    assert problem.lineno == 5 and "1 record missing before this one (seq 4): deleted" in str(
        problem
    )


def test_several_deleted_records_are_counted(log: Path) -> None:
    edit_lines(log, lambda ls: ls[:2] + ls[6:])
    result = verify(log)
    assert "4 records missing before this one (seq 2..5)" in str(result.problems[0])


def test_an_edited_record_is_reported_as_changed(log: Path) -> None:
    def flip(ls: list[bytes]) -> list[bytes]:
        data = json.loads(ls[3])
        assert data["decision"] == "deny"
        data.update(decision="allow", reason="OK")  # still a valid record: only the chain tells
        ls[3] = (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode()
        return ls

    edit_lines(log, flip)
    result = verify(log)
    assert not result.intact and result.problem_count == 1
    assert result.problems[0].lineno == 5 and "edited" in str(result.problems[0])
    assert "seq 3" in str(result.problems[0])


def test_reordered_records_are_reported_as_out_of_order(log: Path) -> None:
    edit_lines(log, lambda ls: [*ls[:3], ls[4], ls[3], *ls[5:]])
    result = verify(log)
    assert not result.intact
    assert any("out of order" in str(p) for p in result.problems)


def test_a_line_that_is_not_a_chained_record_is_a_problem(log: Path) -> None:
    edit_lines(log, lambda ls: [*ls[:3], b"garbage\n", *ls[3:]])
    result = verify(log)
    assert not result.intact
    assert "not a record" in str(result.problems[0])


def test_a_record_stripped_of_its_chain_is_a_problem(log: Path) -> None:
    def strip(ls: list[bytes]) -> list[bytes]:
        data = json.loads(ls[2])
        del data["chain"]
        ls[2] = (json.dumps(data) + "\n").encode()
        return ls

    edit_lines(log, strip)
    result = verify(log)
    assert any("without a hash chain" in str(p) for p in result.problems)


@pytest.fixture
def rotated(tmp_path: Path) -> Path:
    path = tmp_path / "records.jsonl"
    make_log(path, 40, max_bytes=2500, keep=50)
    assert rotated_path(path, 3).exists()
    return path


def test_untampered_rotated_set_verifies(rotated: Path) -> None:
    result = verify(rotated)
    assert result.intact and result.records == 40 and len(result.files) >= 4


def test_a_record_deleted_at_a_rotation_boundary_is_found(rotated: Path) -> None:
    edit_lines(rotated, lambda ls: ls[1:])  # the first record of the live file
    result = verify(rotated)
    assert not result.intact and "missing" in str(result.problems[0])
    assert result.problems[0].source == str(rotated)


def test_a_whole_rotated_file_deleted_from_the_middle_is_found(rotated: Path) -> None:
    rotated_path(rotated, 2).unlink()
    result = verify(rotated)
    assert not result.intact and "missing" in str(result.problems[0])


def test_rotated_files_swapped_are_found(rotated: Path) -> None:
    one, two = rotated_path(rotated, 1), rotated_path(rotated, 2)
    a, b = one.read_bytes(), two.read_bytes()
    one.write_bytes(b)
    two.write_bytes(a)
    assert not verify(rotated).intact


# --- through the command line --------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(netshield_cmd("logs", *args), capture_output=True, text=True, timeout=60)


def test_cli_verify_exits_0_for_an_intact_log_and_1_for_a_tampered_one(tmp_path: Path) -> None:
    intact, tampered = tmp_path / "intact.jsonl", tmp_path / "tampered.jsonl"
    make_log(intact, 20, max_bytes=2000)
    make_log(tampered, 20, max_bytes=2000)
    edit_lines(rotated_path(tampered, 1), lambda ls: ls[:1] + ls[2:])
    good = run(str(intact), "--verify")
    assert good.returncode == 0 and "connection log intact: 20 records" in good.stdout
    bad = run(str(tampered), "--verify")
    assert bad.returncode == 1 and "connection log BROKEN" in bad.stdout
    assert "missing before this one" in bad.stdout and "Traceback" not in bad.stderr


def test_cli_verify_refuses_filters_and_a_missing_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    make_log(path, 3)
    mixed = run(str(path), "--verify", "--denied")
    assert mixed.returncode == 2 and mixed.stderr.count("\n") == 1 and "no filters" in mixed.stderr
    missing = run(str(tmp_path / "nope.jsonl"), "--verify")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr + mixed.stderr
