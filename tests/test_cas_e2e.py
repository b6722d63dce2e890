"""End to end: `netshield` as a subprocess — init, platform, measure, cas serve, the operator
commands, state rollback and audit tampering, and curl / openssl as real clients of the CAS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sqlite3
import ssl
import subprocess
from pathlib import Path

import pytest

from netshield.agent.attest import InProcessQuoter, Workload, attest
from netshield.casclient import CasRefused
from tests.store_support import rewrite_from, write_counter
from tests.support import ORDERS_M, SIGNER, TD, Domain, cas_subprocess, make_domain, netshield_cmd

pytestmark = pytest.mark.slow


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(netshield_cmd(*args), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"netshield {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("netshield: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture
def domain(tmp_path: Path) -> Domain:
    return make_domain(tmp_path)


def attest_once(domain: Domain, url_domain: Domain, measurement: str = ORDERS_M) -> str:
    async def go() -> str:
        async with url_domain.client() as cas:
            try:
                got = await attest(
                    cas,
                    InProcessQuoter(
                        domain.platforms["p-good"],
                        Workload("orders", measurement, SIGNER, product_id=7, svn=3),
                    ),
                    "orders",
                    trust_domain=TD,
                )
            except CasRefused as err:
                return err.code
            return got.credentials.serial

    return asyncio.run(go())


def test_init_platform_measure_and_config_check_from_the_command_line(tmp_path: Path) -> None:
    td = tmp_path / "td"
    out = run("init", str(td), "--trust-domain", "acme.example").stdout
    assert "policy.yaml" in out and "next:" in out
    for key in ("vendor/vendor-root.key", "cas/mesh-ca.key", "admin/admin.key"):
        assert (td / key).stat().st_mode & 0o777 == 0o600
    keys = [p for p in td.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    assert sorted(p.relative_to(td).as_posix() for p in keys) == [
        "admin/admin.key",
        "cas/mesh-ca.key",
        "vendor/vendor-root.key",
    ]
    assert_one_line_error(run("init", str(td), check=False), "already")

    out = run(
        "platform",
        "init",
        "--vendor",
        str(td / "vendor"),
        "--out",
        str(td / "platforms/p1"),
        "--tcb",
        "4",
    ).stdout
    assert "p1" in out and "TCB level 4" in out
    assert (td / "platforms/p1/platform.key").stat().st_mode & 0o777 == 0o600

    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("print('hi')\n")
    m1 = run("measure", str(app), "--cmd", "python3 main.py").stdout.strip()
    assert (
        len(m1) == 64 and m1 == run("measure", str(app), "--cmd", "python3 main.py").stdout.strip()
    )
    (app / "main.py").write_text("print('hI')\n")
    assert run("measure", str(app), "--cmd", "python3 main.py").stdout.strip() != m1
    assert_one_line_error(run("measure", str(tmp_path / "missing"), check=False))

    ok = run("config", "check", str(td / "policy.yaml"))
    assert "valid policy" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "trust_domain: acme.example\nservices:\n  orders:\n    measurements: [xyz]\n    colour: red\n"
    )
    proc = run("config", "check", str(bad), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "services.orders.measurements[0]" in proc.stderr
    assert "services.orders.colour" in proc.stderr


def test_cas_serve_attests_through_the_client_and_answers_curl_and_openssl(domain: Domain) -> None:
    with cas_subprocess(domain) as cas:
        assert cas.ready["event"] == "ready" and cas.ready["component"] == "cas"
        serial = attest_once(domain, domain)
        assert len(serial) > 4
        assert attest_once(domain, domain, measurement="ee" * 32) == "MEASUREMENT_NOT_ALLOWED"

        ca = str(domain.layout.cas_state / "mesh-ca.pem")
        curl = subprocess.run(
            [
                "curl",
                "-sS",
                "--cacert",
                ca,
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                "{}",
                f"{cas.url}/v1/nonce",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert curl.returncode == 0, curl.stderr
        assert len(json.loads(curl.stdout)["nonce"]) == 64
        admin = domain.layout.admin_dir
        curl = subprocess.run(
            [
                "curl",
                "-sS",
                "--cacert",
                ca,
                "--cert",
                str(admin / "admin.pem"),
                "--key",
                str(admin / "admin.key"),
                f"{cas.url}/v1/admin/policy",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert json.loads(curl.stdout)["version"] == 1
        curl = subprocess.run(
            ["curl", "-sS", "--cacert", ca, f"{cas.url}/v1/admin/policy"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert json.loads(curl.stdout)["error"]["reason"] == "ADMIN_CERT_REQUIRED"
        # curl without the mesh CA refuses the CAS (its certificate is not from a public CA)
        curl = subprocess.run(
            ["curl", "-sS", f"{cas.url}/healthz"], capture_output=True, text=True, timeout=20
        )
        assert curl.returncode != 0

        s_client = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{cas.port}",
                "-CAfile",
                ca,
                "-verify_return_error",
                "-brief",
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert "Verification: OK" in s_client.stderr + s_client.stdout
        pem = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{cas.port}", "-showcerts"],
            input="",
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        text = subprocess.run(
            ["openssl", "x509", "-noout", "-text"],
            input=pem,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        assert f"URI:spiffe://{TD}/cas" in text

        # operator commands through the CLI
        admin_args = ["--cas", cas.url, "--admin", str(admin)]
        out = run("cas", "revoke", "--serial", serial, *admin_args).stdout
        assert "revoked instance" in out
        show = run("cas", "policy", "show", *admin_args).stdout
        assert "policy version 1" in show
        audit = run("cas", "audit", "--verify", *admin_args)
        assert "audit log intact" in audit.stdout and "attest.allow" in audit.stdout
        assert_one_line_error(
            run("cas", "revoke", "--service", "ghost", *admin_args, check=False),
            "REVOCATION_TARGET_UNKNOWN",
        )
        assert cas.proc.poll() is None


def test_garbage_and_plaintext_on_the_cas_port_do_not_hurt_it(domain: Domain) -> None:
    with cas_subprocess(domain) as cas:
        for payload in (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\xff\xff" + b"\x00" * 64,
            bytes(range(256)) * 8,
        ):
            with socket.create_connection(("127.0.0.1", cas.port), timeout=5) as s:
                s.sendall(payload)
                s.settimeout(5)
                with contextlib.suppress(TimeoutError, ConnectionResetError):
                    s.recv(4096)
        # a TLS client that stalls mid-handshake does not block others
        stalled = socket.create_connection(("127.0.0.1", cas.port), timeout=5)
        stalled.sendall(b"\x16\x03\x01")
        assert attest_once(domain, domain) not in ("MEASUREMENT_NOT_ALLOWED",)
        stalled.close()
        assert cas.proc.poll() is None
        ctx = ssl.create_default_context(cafile=str(domain.layout.cas_state / "mesh-ca.pem"))
        with (
            socket.create_connection(("127.0.0.1", cas.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert b"200 OK" in tls.recv(4096)


def test_cas_refuses_to_start_on_a_rolled_back_state(domain: Domain, tmp_path: Path) -> None:
    with cas_subprocess(domain):
        attest_once(domain, domain)
    backup = tmp_path / "backup"
    shutil.copytree(domain.layout.cas_state, backup)
    with cas_subprocess(domain) as cas:  # the twin: a normal restart works
        serial = attest_once(domain, domain)
        run(
            "cas",
            "revoke",
            "--serial",
            serial,
            "--cas",
            cas.url,
            "--admin",
            str(domain.layout.admin_dir),
        )
    shutil.rmtree(domain.layout.cas_state)
    shutil.copytree(backup, domain.layout.cas_state)  # the adversary restores the old copy
    proc = run(
        "cas",
        "serve",
        "--policy",
        str(domain.layout.policy),
        "--state",
        str(domain.layout.cas_state),
        "--listen",
        "127.0.0.1:0",
        "--counter",
        str(domain.counter_file),
        check=False,
    )
    assert_one_line_error(proc, "rolled back")


@pytest.mark.parametrize("tamper", ["edit", "delete-last", "delete-middle", "swap", "rewrite"])
def test_audit_verify_detects_tampering(domain: Domain, tamper: str) -> None:
    with cas_subprocess(domain):
        for _ in range(3):
            attest_once(domain, domain)
        attest_once(domain, domain, measurement="ee" * 32)
    state, counter = str(domain.layout.cas_state), str(domain.counter_file)
    clean = run("cas", "audit", "--state", state, "--counter", counter, "--verify")
    assert "audit log intact" in clean.stdout  # the untampered twin
    db = sqlite3.connect(domain.layout.cas_state / "cas.db")
    table = "audit"
    cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
    rows = db.execute(f"SELECT seq FROM {table} ORDER BY seq").fetchall()
    seqs = [r[0] for r in rows]
    data_col = "data" if "data" in cols else cols[3]
    with db:
        if tamper == "edit":
            db.execute(
                f"UPDATE {table} SET {data_col} = replace({data_col}, 'MEASUREMENT', 'MEASUREMENX')"
            )
        elif tamper == "delete-last":
            db.execute(f"DELETE FROM {table} WHERE seq = ?", (seqs[-1],))
        elif tamper == "delete-middle":
            db.execute(f"DELETE FROM {table} WHERE seq = ?", (seqs[len(seqs) // 2],))
        elif tamper == "rewrite":  # an intact chain and a counter that agrees: only the
            write_counter(domain.counter_file, *rewrite_from(db, seqs[2]))  # signatures tell
        else:
            a, b = seqs[1], seqs[2]
            ra = db.execute(f"SELECT * FROM {table} WHERE seq = ?", (a,)).fetchone()
            rb = db.execute(f"SELECT * FROM {table} WHERE seq = ?", (b,)).fetchone()
            others = [c for c in cols if c != "seq"]
            sets = ", ".join(f"{c} = ?" for c in others)
            db.execute(f"UPDATE {table} SET {sets} WHERE seq = ?", (*ra[1:], b))
            db.execute(f"UPDATE {table} SET {sets} WHERE seq = ?", (*rb[1:], a))
    db.close()
    proc = run("cas", "audit", "--state", state, "--counter", counter, "--verify", check=False)
    assert proc.returncode != 0
    if tamper == "rewrite":
        assert "is not the entry the CAS signed in its checkpoint" in proc.stdout, proc.stdout
    assert (
        "BROKEN" in proc.stdout + proc.stderr or "AUDIT_CHAIN_BROKEN" in proc.stdout + proc.stderr
    )
    assert "Traceback" not in proc.stderr
