"""Every wrong invocation is one readable line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import POLICY, Domain, cas_subprocess, make_domain, netshield_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory) -> Domain:
    return make_domain(tmp_path_factory.mktemp("cli"))


def one_line_error(*args: str) -> str:
    proc = subprocess.run(netshield_cmd(*args), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("netshield: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cas_serve_bad_inputs_are_one_line(domain: Domain, tmp_path: Path) -> None:
    td = domain.layout
    base = [
        "cas",
        "serve",
        "--policy",
        str(td.policy),
        "--state",
        str(td.cas_state),
        "--counter",
        str(domain.counter_file),
    ]
    assert "--listen" in one_line_error(*base, "--listen", "nonsense")
    assert "no such directory" in one_line_error(
        "cas", "serve", "--policy", str(td.policy), "--state", str(tmp_path / "nope")
    )
    assert "cannot read" in one_line_error(
        "cas", "serve", "--policy", str(tmp_path / "nope.yaml"), "--state", str(td.cas_state)
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("trust_domain: UPPER\nsurprise: 1\n")
    msg = one_line_error(
        "cas",
        "serve",
        "--policy",
        str(bad),
        "--state",
        str(td.cas_state),
        "--counter",
        str(domain.counter_file),
    )
    assert "trust_domain" in msg and "surprise" in msg


def test_cas_refuses_a_changed_policy_file_at_restart(domain: Domain, tmp_path: Path) -> None:
    with cas_subprocess(domain):
        pass  # the first start stores policy version 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(POLICY.replace("min_tcb: 5", "min_tcb: 6"))
    msg = one_line_error(
        "cas",
        "serve",
        "--policy",
        str(changed),
        "--state",
        str(domain.layout.cas_state),
        "--listen",
        "127.0.0.1:0",
        "--counter",
        str(domain.counter_file),
    )
    assert "netshield cas policy apply" in msg and "--previous sha256:" in msg
    with cas_subprocess(domain) as cas:  # the twin: the same file starts fine
        assert cas.proc.poll() is None


def test_cas_refuses_to_start_when_its_port_is_taken(domain: Domain) -> None:
    with cas_subprocess(domain) as cas:
        msg = one_line_error(
            "cas",
            "serve",
            "--policy",
            str(domain.layout.policy),
            "--state",
            str(domain.layout.cas_state),
            "--listen",
            f"127.0.0.1:{cas.port}",
            "--counter",
            str(domain.counter_file),
        )
        assert "cas.lock" in msg or "cannot bind" in msg or "in use" in msg


@pytest.mark.parametrize(
    "args",
    [
        ("cas", "revoke", "--service", "orders"),
        (
            "cas",
            "revoke",
            "--service",
            "orders",
            "--platform",
            "p",
            "--cas",
            "https://127.0.0.1:1",
            "--admin",
            "/",
        ),
        ("cas", "policy", "show", "--cas", "https://127.0.0.1:1", "--admin", "/nonexistent"),
        ("platform", "init", "--vendor", "/nonexistent", "--out", "/tmp/never"),
        ("platform", "serve", "--config", "/nonexistent.yaml"),
        ("config", "check", "/nonexistent.yaml"),
        ("measure", "/nonexistent"),
    ],
)
def test_operator_mistakes_are_one_line(args: tuple[str, ...]) -> None:
    one_line_error(*args)


def test_unreachable_cas_is_named_in_one_line(domain: Domain) -> None:
    msg = one_line_error(
        "cas",
        "policy",
        "show",
        "--cas",
        "https://127.0.0.1:1",
        "--admin",
        str(domain.layout.admin_dir),
    )
    assert "unreachable" in msg and "127.0.0.1:1" in msg
