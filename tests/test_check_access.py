"""`netshield cas check-access CALLER CALLEE` against a real CAS process: the dry run follows the
CAS's current policy version and its revocations, explains itself like `netshield explain`, and
exits 0 for allowed, 1 for denied, 2 for errors (one line)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import POLICY, TD, CasProcess, Domain, cas_subprocess, make_domain, netshield_cmd

pytestmark = pytest.mark.slow


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[tuple[Domain, CasProcess]]:
    domain = make_domain(tmp_path)
    with cas_subprocess(domain) as proc:
        yield domain, proc


def cli(domain: Domain, proc: CasProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        netshield_cmd(*args, "--cas", proc.url, "--admin", str(domain.layout.admin_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def check(
    domain: Domain, proc: CasProcess, caller: str, callee: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return cli(domain, proc, "cas", "check-access", caller, callee, *extra)


def test_a_listed_caller_is_allowed_and_the_clause_named(cas: tuple[Domain, CasProcess]) -> None:
    domain, proc = cas
    result = check(domain, proc, "frontend", "orders")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"frontend → orders: ALLOWED under policy version 1 (the CAS at {proc.url})"
    )
    assert "checked: `orders`'s sidecar (inbound): allow" in result.stdout
    assert (
        "Allowed: `frontend` is in `services.orders.allowed_callers` (policy version 1)."
        in result.stdout
    )


def test_an_unlisted_caller_is_denied_until_the_policy_lists_it(
    cas: tuple[Domain, CasProcess], tmp_path: Path
) -> None:
    domain, proc = cas
    denied = check(domain, proc, "debuggy", f"spiffe://{TD}/svc/orders")
    assert denied.returncode == 1
    assert "debuggy → orders: DENIED under policy version 1" in denied.stdout
    assert (
        "To change it: add `debuggy` to `services.orders.allowed_callers`, policy version 1."
        in (denied.stdout)
    )
    shown = cli(domain, proc, "cas", "policy", "show")
    previous = shown.stdout.split()[3]
    assert previous.startswith("sha256:")
    new_policy = tmp_path / "policy-v2.yaml"
    new_policy.write_text(
        POLICY.replace("allowed_callers: [frontend]", "allowed_callers: [frontend, debuggy]")
    )
    applied = cli(domain, proc, "cas", "policy", "apply", str(new_policy), "--previous", previous)
    assert applied.returncode == 0, applied.stderr
    allowed = check(domain, proc, "debuggy", "orders")
    assert allowed.returncode == 0 and "ALLOWED under policy version 2" in allowed.stdout


def test_a_revoked_service_is_denied(cas: tuple[Domain, CasProcess]) -> None:
    domain, proc = cas
    assert check(domain, proc, "frontend", "orders").returncode == 0
    revoked = cli(domain, proc, "cas", "revoke", "--service", "frontend", "--note", "test")
    assert revoked.returncode == 0, revoked.stderr
    result = check(domain, proc, "frontend", "orders", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["reason"] == "SERVICE_REVOKED" and not data["allowed"]
    assert "caller `frontend` can attest: no, SERVICE_REVOKED" in data["steps"]


def test_services_the_policy_does_not_know_or_disables_are_denied(
    cas: tuple[Domain, CasProcess],
) -> None:
    domain, proc = cas
    unknown = check(domain, proc, "frontnd", "orders")
    assert unknown.returncode == 1 and "did you mean 'frontend'" in unknown.stdout
    assert "add a service `frontnd` under `services`" in unknown.stdout
    disabled = check(domain, proc, "frontend", "retired", "--json")
    assert disabled.returncode == 1 and json.loads(disabled.stdout)["reason"] == "SERVICE_DISABLED"


def test_a_local_policy_file_works_without_a_cas(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    env = {k: v for k, v in os.environ.items() if k not in ("NETSHIELD_CAS", "NETSHIELD_ADMIN")}
    result = subprocess.run(
        netshield_cmd("cas", "check-access", "frontend", "orders", "--policy", str(policy)),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0 and f"ALLOWED under the policy file {policy}" in result.stdout
    assert "revocations: not checked" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frontend", "orders"], "--cas URL is needed"),
        (
            ["spiffe://other.test/svc/frontend", "orders", "--policy", "POLICY"],
            "not in the trust domain",
        ),
        (["frontend", "orders", "--policy", "/nonexistent.yaml"], "cannot read"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    env = {k: v for k, v in os.environ.items() if k not in ("NETSHIELD_CAS", "NETSHIELD_ADMIN")}
    result = subprocess.run(
        netshield_cmd("cas", "check-access", *[str(policy) if a == "POLICY" else a for a in args]),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
