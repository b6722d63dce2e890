"""`netshield explain` on records from a real mesh run (CAS and sidecars as processes): an
allowed call, a caller refused by its own sidecar, and a caller with a genuine mesh certificate
refused by the callee's sidecar — each explained against the CAS's policy with its version. The
sidecar's own log verifies and summarises."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mesh_support import EchoServer, Mesh, make_mesh, roundtrip
from tests.support import netshield_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One mesh run: frontend → orders allowed, intruder → orders denied twice."""
    mesh = make_mesh(tmp_path_factory.mktemp("mesh"))
    echo = EchoServer()
    try:
        mesh.start_cas()
        orders = mesh.start_sidecar(
            "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}
        )
        host, port = orders.addr("inbound")
        outbound = [{"service": "orders", "listen": "127.0.0.1:0", "address": f"{host}:{port}"}]
        frontend = mesh.start_sidecar("frontend", outbound=outbound)
        intruder = mesh.start_sidecar("intruder", outbound=outbound)
        assert roundtrip(frontend.addr("outbound:orders"), b"hello") == b"hello"
        assert roundtrip(intruder.addr("outbound:orders"), b"SELECT secrets") == b""
        direct_tls_as_intruder(mesh, port)
        allowed = mesh.wait_record("orders", lambda r: r["decision"] == "allow")
        refused_in = mesh.wait_record("orders", lambda r: r["decision"] == "deny")
        refused_out = mesh.wait_record("intruder", lambda r: r["decision"] == "deny")
        yield {
            "mesh": mesh,
            "allowed": allowed,
            "refused_in": refused_in,
            "refused_out": refused_out,
            "cas": mesh.admin_args(),
            "orders_log": str(mesh.root / "orders.records.jsonl"),
        }
    finally:
        mesh.stop_all()
        echo.shutdown()
        echo.server_close()


def direct_tls_as_intruder(mesh: Mesh, port: int) -> None:
    """A client that bypasses its sidecar with a genuine mesh certificate for `intruder`."""
    cert_path, key_path = mesh.mint("intruder", "intruder")
    ctx = ssl.create_default_context(cafile=str(mesh.ca_pem))
    ctx.check_hostname = False
    ctx.load_cert_chain(cert_path, key_path)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            try:
                tls.sendall(b"SELECT secrets")
                assert tls.recv(100) == b""
            except (ssl.SSLError, OSError):
                pass  # refused after the handshake: an alert or a reset


def explain(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        netshield_cmd("explain", *args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_an_allowed_call_is_explained_with_the_clause_and_version(run: dict[str, Any]) -> None:
    rec = run["allowed"]
    result = explain(rec["conn_id"], "--log", run["orders_log"], *run["cas"])
    assert result.returncode == 0, result.stderr
    assert f"connection {rec['conn_id']} (inbound, frontend → orders)" in result.stdout
    assert "Allowed: `frontend` is in `services.orders.allowed_callers` (policy version 1)." in (
        result.stdout
    )
    assert "Both sides finished normally after 5 bytes in and 5 bytes out." in result.stdout


def test_a_callee_side_denial_says_what_to_add_and_where(run: dict[str, Any]) -> None:
    rec = run["refused_in"]
    assert rec["reason"] == "PEER_NOT_AUTHORIZED"
    result = explain(rec["conn_id"], "--log", run["orders_log"], *run["cas"])
    assert result.returncode == 0, result.stderr
    assert "Denied: `intruder` is not in `services.orders.allowed_callers` (policy version 1)." in (
        result.stdout
    )
    assert (
        "To change it: add `intruder` to `services.orders.allowed_callers`, policy version 1."
        in (result.stdout)
    )


def test_a_caller_side_denial_from_the_environment_as_json(run: dict[str, Any]) -> None:
    rec = run["refused_out"]
    mesh: Mesh = run["mesh"]
    env = {
        "NETSHIELD_RECORDS": str(mesh.root / "intruder.records.jsonl"),
        "NETSHIELD_CAS": run["cas"][1],
        "NETSHIELD_ADMIN": run["cas"][3],
    }
    result = explain(rec["conn_id"][:12], "--json", env=env)  # a unique prefix will do
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "denied" and data["policy"] == "policy version 1"
    assert data["change"] == "add `intruder` to `services.orders.allowed_callers`, policy version 1"
    assert data["record"]["direction"] == "outbound"


def test_a_local_policy_file_names_itself_instead_of_a_version(run: dict[str, Any]) -> None:
    mesh: Mesh = run["mesh"]
    rec = run["refused_in"]
    result = explain(
        rec["conn_id"], "--log", run["orders_log"], "--policy", str(mesh.layout.policy)
    )
    assert result.returncode == 0
    assert (
        f"add `intruder` to `services.orders.allowed_callers`, the policy file {mesh.layout.policy}"
        in (result.stdout)
    )


def test_an_unknown_connection_or_an_unreachable_cas_is_one_line(run: dict[str, Any]) -> None:
    missing = explain("nosuchconnection", "--log", run["orders_log"], *run["cas"])
    assert (
        missing.returncode == 2 and "no record of connection 'nosuchconnection'" in missing.stderr
    )
    assert missing.stderr.count("\n") == 1
    rec = run["allowed"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{s.getsockname()[1]}"
    unreachable = explain(
        rec["conn_id"], "--log", run["orders_log"], "--cas", dead, "--admin", run["cas"][3]
    )
    assert unreachable.returncode == 2 and "unreachable" in unreachable.stderr
    assert unreachable.stderr.count("\n") == 1 and "Traceback" not in unreachable.stderr


def test_the_sidecars_log_verifies_and_summarises(run: dict[str, Any]) -> None:
    verify = subprocess.run(
        netshield_cmd("logs", run["orders_log"], "--verify"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0 and "connection log intact: 2 records" in verify.stdout
    summary = subprocess.run(
        netshield_cmd("logs", run["orders_log"], "--summary", "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    pairs = {(p["caller"], p["callee"]): p for p in json.loads(summary.stdout)["pairs"]}
    assert pairs["frontend", "orders"]["allow"] == 1 and pairs["intruder", "orders"]["deny"] == 1
    table = subprocess.run(
        netshield_cmd("logs", run["orders_log"], "--denied"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        run["refused_in"]["conn_id"] in table.stdout
        and run["allowed"]["conn_id"] not in table.stdout
    )
    assert Path(run["orders_log"]).stat().st_size > 0
