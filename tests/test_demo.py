"""`netshield demo` tells the trust-plane story and exits 0 only when every step behaved."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from netshield.demo import Narrator
from tests.support import netshield_cmd

pytestmark = pytest.mark.slow


def test_demo_runs_every_step_and_exits_zero(tmp_path: Path) -> None:
    proc = subprocess.run(netshield_cmd("demo"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(steps) == 6 and all(line.startswith("[ok]") for line in steps)
    for code in ("MEASUREMENT_NOT_ALLOWED", "TCB_OUT_OF_DATE", "NONCE_REUSED"):
        assert f"observed refused {code}" in proc.stdout
    assert "announced after" in proc.stdout and "intact" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_step_that_misbehaves_fails_the_demo() -> None:
    out = io.StringIO()
    n = Narrator(out, color=False)
    n.step("good", "x", "x", True)
    assert n.all_ok
    n.step("bad", "refused NONCE_REUSED", "a certificate was issued", False)
    assert not n.all_ok
    assert "[FAIL]" in out.getvalue()
    assert not Narrator(io.StringIO(), color=False).all_ok  # no steps is not success


def test_keep_running_leaves_the_cas_up_until_interrupted(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.Popen(
        netshield_cmd("demo", "--keep-running", "--dir", str(work)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "stays up at" in line or not line:
                break
        text = "".join(lines)
        assert "stays up at" in text, text
        url = text.split("stays up at ")[1].split(";")[0]
        curl = subprocess.run(
            [
                "curl",
                "-sS",
                "--cacert",
                str(work / "trust-domain/cas/mesh-ca.pem"),
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                "{}",
                f"{url}/v1/nonce",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert len(json.loads(curl.stdout)["nonce"]) == 64
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        # the CAS went down with it
        curl = subprocess.run(
            [
                "curl",
                "-sS",
                "--cacert",
                str(work / "trust-domain/cas/mesh-ca.pem"),
                f"{url}/healthz",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert curl.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
