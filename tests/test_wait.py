"""`netshield wait`: ready only on a 200 from a real sidecar's /readyz; otherwise one line that
says what was last seen (nothing listening, the readiness reason, the last attestation error)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.commands.wait import (
    Probe,
    describe,
    parse_timeout,
    readyz_reason,
    status_last_error,
    wait_ready,
)
from netshield.errors import UsageError
from netshield.netaddr import HostPort
from tests.mesh_support import Mesh, make_mesh
from tests.support import netshield_cmd

ADDR = HostPort("127.0.0.1", 15000)
NOT_READY = json.dumps(
    {"ready": False, "error": {"reason": "NO_CREDENTIALS", "message": "not ready: NO_CREDENTIALS"}}
).encode()


# --- pure parts ----------------------------------------------------------------------------------
def test_readyz_reason_reads_the_house_error_shape() -> None:
    assert readyz_reason(NOT_READY) == "NO_CREDENTIALS: not ready: NO_CREDENTIALS"
    assert readyz_reason(b"<html>") == "an answer that is not JSON"  # negative twin
    assert readyz_reason(b'{"ready": false}') == "an answer without an error reason"


def test_status_last_error_finds_the_agents_last_error() -> None:
    body = json.dumps({"agent": {"last_error": "CAS refused: TCB_OUT_OF_DATE: tcb 3 < 5"}})
    assert status_last_error(body.encode()) == "CAS refused: TCB_OUT_OF_DATE: tcb 3 < 5"
    assert status_last_error(b'{"agent": {"last_error": null}}') is None
    assert status_last_error(b"[1, 2]") is None


@given(st.binary(max_size=300))
def test_any_readyz_body_gives_one_line(body: bytes) -> None:
    line = readyz_reason(body)
    assert line and "\n" not in line


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=40),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    )
)
def test_any_json_status_or_readyz_document_is_read_without_raising(doc: object) -> None:
    body = json.dumps({"agent": doc, "error": doc}).encode()
    assert "\n" not in readyz_reason(body)
    last = status_last_error(body)
    assert last is None or (last and "\n" not in last)


@given(st.text(max_size=20))
def test_timeout_parser_accepts_only_positive_finite_seconds(text: str) -> None:
    try:
        value = parse_timeout(text)
    except UsageError as err:
        assert str(err).startswith("--timeout")
    else:
        assert value > 0 and value < float("inf")


def test_timeout_parser_examples() -> None:
    assert parse_timeout("2") == 2.0 and parse_timeout("0.5s") == 0.5
    for bad in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(UsageError):
            parse_timeout(bad)


def test_wait_returns_as_soon_as_readyz_is_200_and_gives_up_at_the_deadline() -> None:
    now = [0.0]
    answers = [Probe(None, error="Connection refused"), Probe(503, NOT_READY), Probe(200, b"{}")]

    def look(_addr: HostPort, _timeout: float) -> Probe:
        return answers.pop(0)

    def sleep(seconds: float) -> None:
        now[0] += seconds

    ok, last = wait_ready(ADDR, 10, look=look, clock=lambda: now[0], sleep=sleep, poll=1)
    assert ok and last is not None and last.status == 200 and now[0] == 2
    # negative twin: never ready -> False after the timeout, with the last thing seen
    now[0] = 0.0
    ok, last = wait_ready(
        ADDR, 3, look=lambda _a, _t: Probe(503, NOT_READY), clock=lambda: now[0], sleep=sleep
    )
    assert not ok and last is not None and last.status == 503 and 3 <= now[0] < 3.5


def test_the_timeout_line_names_what_was_last_seen() -> None:
    refused = describe(ADDR, Probe(None, error="Connection refused"), 2)
    assert refused.startswith("sidecar admin 127.0.0.1:15000 not ready after 2 s: nothing answers")
    attesting = describe(
        ADDR, Probe(503, NOT_READY, last_error="CAS refused: MEASUREMENT_NOT_ALLOWED: x"), 2
    )
    assert "NO_CREDENTIALS" in attesting and "MEASUREMENT_NOT_ALLOWED" in attesting


# --- against real sidecars -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = make_mesh(tmp_path)
    m.start_cas()
    yield m
    m.stop_all()


def run_wait(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(netshield_cmd("wait", *args), capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_wait_succeeds_once_a_real_sidecar_is_attested(mesh: Mesh) -> None:
    sidecar = mesh.start_sidecar(
        "frontend", outbound=[{"service": "orders", "listen": "127.0.0.1:0"}]
    )
    admin = ":".join(map(str, sidecar.addr("admin")))
    proc = run_wait("--admin", admin, "--timeout", "10")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"sidecar admin {admin} is ready"


@pytest.mark.slow
def test_wait_times_out_with_the_attestation_refusal_for_a_tampered_workload(mesh: Mesh) -> None:
    (mesh.root / "workloads" / "orders" / "app.py").write_text("print('steal orders')\n")
    port = free_port()
    config = mesh.sidecar_config(
        "orders",
        admin={"listen": f"127.0.0.1:{port}"},
        inbound={"listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
    )
    sidecar = subprocess.Popen(
        netshield_cmd("sidecar", "--config", str(config)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = time.monotonic()
        proc = run_wait("--admin", f"127.0.0.1:{port}", "--timeout", "4")
        assert proc.returncode == 1
        assert 4 <= time.monotonic() - started < 20
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr
        assert "NO_CREDENTIALS" in lines[0] and "MEASUREMENT_NOT_ALLOWED" in lines[0], lines
    finally:
        sidecar.terminate()
        sidecar.wait(timeout=20)


def test_wait_for_nothing_listening_is_one_line_and_exit_1() -> None:
    port = free_port()
    proc = run_wait("--admin", f"127.0.0.1:{port}", "--timeout", "0.5")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "nothing answers there" in proc.stderr


def test_wait_with_a_bad_address_or_timeout_is_a_usage_error() -> None:
    for args in (("--admin", "no-port"), ("--admin", "127.0.0.1:0"), ("--timeout", "-3")):
        proc = run_wait(*args)
        assert proc.returncode == 2, args
        assert proc.stderr.startswith("netshield: error: --") and proc.stderr.count("\n") == 1
