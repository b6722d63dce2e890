"""`netshield demo` plays the whole story with real processes, narrates one line per step with
expected and observed outcome, and exits 0 only when every step behaved."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from netshield.casclient import CasRefused
from netshield.demo import Narrator, expect_refusal, read_records
from tests.demo_readme import block, readme_block, workdir_of
from tests.support import netshield_cmd

pytestmark = pytest.mark.slow

CODES = (
    "PEER_NOT_AUTHORIZED",
    "PEER_CERT_UNTRUSTED",
    "MEASUREMENT_NOT_ALLOWED",
    "TCB_OUT_OF_DATE",
    "NONCE_REUSED",
    "PEER_REVOKED",
    "WAF_BLOCKED",
)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_demo_plays_every_step_with_real_processes_in_under_a_minute(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        netshield_cmd("demo", "--dir", str(tmp_path / "demo")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert took < 60, took
    steps = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(steps) == 11 and all(line.startswith("[ok]") for line in steps), steps
    assert all("expected" in line and "observed" in line for line in steps)
    for code in CODES:
        assert code in proc.stdout, code
    assert "Traceback" not in proc.stderr
    # the outcomes really are in the connection records the demo points at
    recs = tmp_path / "demo" / "records"
    assert f"netshield logs {recs / 'orders.jsonl'}" in proc.stdout
    orders = records(recs / "orders.jsonl")
    assert any(
        r["decision"] == "allow" and r["peer_identity"].endswith("/svc/frontend") for r in orders
    )
    assert any(r["close_reason"] == "PEER_REVOKED" for r in orders)
    # the WAF steps ran ModSecurity + the OWASP CRS (installed by scripts/test), egress and ingress
    frontend = [r for r in records(recs / "frontend.jsonl") if r["reason"] == "WAF_BLOCKED"]
    assert {r["listener"] == "ingress:orders" for r in frontend} == {True, False}
    assert all(r["waf"]["engine"] == "crs" for r in frontend)
    assert any("942100" in r["waf"]["rule_ids"] for r in frontend)
    assert "OWASP CRS 3.3.4" in proc.stdout
    intruder = records(recs / "intruder.jsonl")
    assert [r["reason"] for r in intruder if r["decision"] == "deny"] == ["PEER_NOT_AUTHORIZED"]
    # the intruder's attempts of its own: a quote through the host's platform service measured
    # its own workload (and its sidecar attested that way), a self-made certificate was refused
    assert re.search(r"the platform measured [0-9a-f]{16}… \(intruder; orders' is", proc.stdout)
    assert any(r["decision"] == "deny" and r["reason"] == "PEER_CERT_UNTRUSTED" for r in orders), (
        orders
    )
    platform_log = (tmp_path / "demo" / "logs" / "platform.log").read_text()
    assert platform_log.count("quoted for pid") >= 2, platform_log  # the sidecar's, the attempt
    # every sidecar kept its witness of the CAS's newest signed checkpoint
    assert json.loads((tmp_path / "demo" / "witness" / "orders.json").read_text())["checkpoint"]
    # nothing is left running: every child process was stopped
    url = re.search(r"CAS running at (\S+)", proc.stdout)
    assert url is not None
    gone = subprocess.run(
        ["curl", "-sk", "--max-time", "3", f"{url.group(1)}/healthz"], capture_output=True
    )
    assert gone.returncode != 0


def test_without_dir_the_throwaway_trust_domain_is_deleted_but_the_records_stay() -> None:
    """As `./scripts/demo` runs it; its output is the README's demo block."""
    proc = subprocess.run(netshield_cmd("demo"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    work = Path(workdir_of(proc.stdout))
    try:
        assert not (work / "trust-domain").exists()  # the mesh CA key and the operator key
        assert not list(work.rglob("*.key"))
        assert read_records(work / "records" / "orders.jsonl")
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=True)
    assert readme_block() == block(proc.stdout), "regenerate with: python -m tests.demo_readme"


def test_a_step_that_misbehaves_fails_the_demo() -> None:
    out = io.StringIO()
    n = Narrator(out, color=False)
    n.step("good", "x", "x", True)
    assert n.all_ok
    n.step("bad", "refused NONCE_REUSED", "a certificate was issued", False)
    assert not n.all_ok
    assert "[FAIL]" in out.getvalue()
    assert not Narrator(io.StringIO(), color=False).all_ok  # no steps is not success


async def test_a_refusal_step_fails_when_the_cas_says_something_else_or_nothing() -> None:
    n = Narrator(io.StringIO(), color=False)

    async def refused() -> None:
        raise CasRefused(403, "TCB_OUT_OF_DATE", "tcb 3 < 5", "")

    async def issued() -> None:
        return None

    await expect_refusal(n, "old platform", "TCB_OUT_OF_DATE", refused)
    assert n.results == [True]
    await expect_refusal(n, "old platform", "MEASUREMENT_NOT_ALLOWED", refused)
    await expect_refusal(n, "old platform", "TCB_OUT_OF_DATE", issued)
    assert n.results == [True, False, False]


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=30
    )


def test_keep_running_leaves_the_mesh_up_until_interrupted(tmp_path: Path) -> None:
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
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "cas revoke --service intruder" in line or not line:
                break
        text = "".join(lines)
        assert "the mesh stays up" in text, text
        tries = [line.strip() for line in text.split("try (Ctrl-C")[1].splitlines()[1:]]
        assert any(t.startswith("netshield logs --follow ") for t in tries)
        assert any(t.startswith("netshield status --admin 127.0.0.1:") for t in tries)
        frontend_url = tries[0].split()[1]
        intruder_url = tries[1].split()[1]
        # the frontend instance was revoked in the story; it re-attested and works again
        deadline = time.monotonic() + 15
        while True:
            got = _curl(frontend_url)
            if got.stdout == "orders: 3 open orders\n" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert got.stdout == "orders: 3 open orders\n", got.stderr
        denied = _curl(intruder_url)  # negative twin: the intruder still gets nothing
        assert denied.returncode != 0 and denied.stdout == ""
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert _curl(frontend_url).returncode != 0  # the sidecars went down with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_readme_block_masks_only_what_changes_between_runs() -> None:
    out = (
        "work directory: /tmp/netshield-demo-ab12\n"
        "[ok]    8. revoke (serial 9f0a): observed 0.12 s; (conn 01abc) 127.0.0.1:4321; "
        "intact: 16 entries; measured 3f9d2788c49673dd…\n"
    )
    assert block(out) == (
        "```\n$ ./scripts/demo\nwork directory: /tmp/netshield-demo-XXXX\n"
        "[ok]    8. revoke (serial SERIAL): observed N.NN s; (conn ID) 127.0.0.1:PORT; "
        "intact: N entries; measured HASH…\n```"
    )
    assert block(out.replace("revoke", "revoked")) != block(out)  # a changed step shows
