"""The in-process shield end to end (issue 16): unmodified Python programs under `netshield run`,
a real CAS, real sidecars, real sockets.

orders runs tests/shield_programs/server.py (http.server, aiohttp, asyncio streams, an asyncio
protocol and a blocking socket server in one process); frontend and intruder run client.py, one
request the way APP_MODE's library makes it. Neither program imports netshield.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from netshield.identity import SpiffeId
from netshield.pki.ca import issue_certificate, load_ca
from netshield.pki.certext import AttestationClaims
from netshield.pki.keys import generate_key, private_key_pem
from netshield.policy import policy_hash
from tests.mesh_support import TD, EchoServer
from tests.shield_support import Program, ShieldMesh, free_ports, make_shield_mesh, ports_env
from tests.support import netshield_cmd

pytestmark = pytest.mark.slow

FRONTEND = f"spiffe://{TD}/svc/frontend"
ORDERS = f"spiffe://{TD}/svc/orders"


@pytest.fixture(scope="module")
def native() -> EchoServer:
    """The native service "legacy" (no sidecar, no certificate), in the policy's native_services."""
    return EchoServer()


@pytest.fixture(scope="module")
def sm(native: EchoServer) -> Iterator[ShieldMesh]:
    root = Path(tempfile.mkdtemp(prefix="netshield-shield-"))
    extra = f"native_services:\n  legacy:\n    address: 127.0.0.1:{native.port}\n    waf: false\n"
    world = make_shield_mesh(root, policy_extra=extra)
    world.mesh.start_cas()
    try:
        yield world
    finally:
        world.stop_all()


@pytest.fixture(scope="module")
def orders(sm: ShieldMesh) -> Program:
    admin_port = _free_port()
    config = sm.config("orders", admin={"listen": f"127.0.0.1:{admin_port}"})
    program = sm.start("orders", ports_env(sm.ports), config=config)
    program.ready["admin"] = f"127.0.0.1:{admin_port}"
    return program


def _free_port() -> int:
    return free_ports(1)[0]


def _client(sm: ShieldMesh, mode: str, service: str = "frontend", **extra: str) -> tuple:
    env = ports_env(sm.ports, APP_MODE=mode, APP_TARGET="127.0.0.1", **extra)
    return sm.run(service, env)


def _orders_saw(sm: ShieldMesh, since: int) -> list[dict]:
    return [r for r in sm.records("orders")[since:] if r["direction"] == "inbound"]


# --- point 1: transparent for unmodified programs -----------------------------------------------

MODES = [
    ("socket", "socket"),
    ("http.client", "http"),
    ("urllib", "aiohttp"),
    ("requests", "http"),
    ("asyncio-streams", "streams"),
    ("asyncio-protocol", "protocol"),
    ("aiohttp", "aiohttp"),
]


@pytest.mark.parametrize(("mode", "server"), MODES)
def test_an_unmodified_client_reaches_an_unmodified_server_over_mesh_mtls(
    sm: ShieldMesh, orders: Program, mode: str, server: str
) -> None:
    seen_f, seen_o = len(sm.records("frontend")), len(sm.records("orders"))
    marker = f"m-{mode}-{os.urandom(4).hex()}"
    rc, out, err = _client(sm, mode, APP_MARKER=marker)
    assert rc == 0 and out is not None and out["ok"], (out, err)
    assert marker in out["reply"]
    # the server saw the caller's real address, not a socketpair's or a proxy's
    assert "127.0.0.1" in out["reply"]
    if mode == "asyncio-streams":  # and the client's peername is the real server address
        assert json.loads(out["reply"])["peername"][1] == sm.ports["streams"]
    target = f"127.0.0.1:{sm.ports[server]}"
    rec = _new_record(sm, "frontend", seen_f, lambda r: r["dst"] == target)
    assert rec["proxy"] == "in-process" and rec["decision"] == "allow"
    assert rec["peer_identity"] == ORDERS and rec["tls_version"] == "TLSv1.3"
    assert rec["bytes_in"] > len(marker) and rec["bytes_out"] > len(marker)
    inbound = _new_record(sm, "orders", seen_o, lambda r: r["listener"] == target)
    assert inbound["proxy"] == "in-process" and inbound["peer_identity"] == FRONTEND
    assert inbound["decision"] == "allow" and inbound["direction"] == "inbound"


def _new_record(sm: ShieldMesh, service: str, seen: int, pred: object) -> dict:
    return sm.wait_record(service, lambda r: r in sm.records(service)[seen:] and pred(r))  # type: ignore[operator]


def test_a_program_can_start_the_shield_itself_with_one_call(
    sm: ShieldMesh, orders: Program
) -> None:
    """`import netshield.shield; netshield.shield.start(CONFIG)`: the process measures its own
    command line (sys.orig_argv) and code tree; the policy approves that build of frontend."""
    embedded = sm.workload("frontend-embedded")
    config = sm.config("frontend", name="frontend-embedded")
    seen = len(sm.records("frontend"))
    env = {
        **os.environ,
        **ports_env(sm.ports, APP_MODE="urllib", APP_TARGET="127.0.0.1", APP_MARKER="embedded"),
        "SHIELD_CONFIG": str(config),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    done = subprocess.run(
        [sys.executable, "app.py"],
        cwd=embedded,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "embedded" in done.stdout, done.stderr
    target = f"127.0.0.1:{sm.ports['aiohttp']}"
    rec = _new_record(sm, "frontend", seen, lambda r: r["dst"] == target)
    assert rec["proxy"] == "in-process" and rec["peer_identity"] == ORDERS
    # one shield a process: a second start (here: under netshield run) is refused
    twice = subprocess.run(
        netshield_cmd("run", "--config", str(config), "--", sys.executable, "app.py"),
        cwd=embedded,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert twice.returncode == 1 and "already runs in this process" in twice.stderr


def test_a_mesh_service_name_of_the_config_resolves_to_its_registry_address(
    sm: ShieldMesh, orders: Program
) -> None:
    """`names` in the config: the program dials http://orders.mesh/ (port 80, no DNS entry);
    the name stands for orders' first registry address, its http.server."""
    config = sm.config(
        "frontend",
        name="frontend-names",
        outbound={"destinations": [{"service": "orders", "names": ["orders.mesh"]}]},
    )
    env = ports_env(
        {**sm.ports, "http": 80}, APP_MODE="requests", APP_TARGET="orders.mesh", APP_MARKER="named"
    )
    rc, out, err = sm.run("frontend", env, config=config)
    assert rc == 0 and out is not None and "named" in out["reply"], (out, err)
    rc, out, _err = sm.run("frontend", env)  # without the name in the config: no such host
    assert rc == 3 and out is not None and not out["ok"]


def test_concurrent_connections_from_threads_and_an_event_loop_all_get_through(
    sm: ShieldMesh, orders: Program
) -> None:
    rc, out, err = _client(sm, "many")
    assert rc == 0 and out is not None, (out, err)
    assert out["reply"] == "asyncio 200/200 threads 80/80"


def test_a_plaintext_caller_never_reaches_the_shielded_server(
    sm: ShieldMesh, orders: Program
) -> None:
    seen = len(sm.records("orders"))
    with socket.create_connection(("127.0.0.1", sm.ports["http"]), timeout=10) as s:
        s.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        try:
            reply = s.recv(100)
        except ConnectionResetError:
            reply = b""
    assert b"HTTP/1" not in reply  # no answer from the program: it never saw the request
    denied = _new_record(sm, "orders", seen, lambda r: r["decision"] == "deny")
    assert denied["reason"] == "TLS_HANDSHAKE_FAILED" and denied["proxy"] == "in-process"


def test_a_caller_not_in_allowed_callers_is_refused_at_connect_with_the_reason(
    sm: ShieldMesh, orders: Program
) -> None:
    rc, out, _err = _client(sm, "urllib", service="intruder")
    assert rc == 3 and out is not None and not out["ok"]
    assert "netshield PEER_NOT_AUTHORIZED" in out["message"]
    rec = sm.wait_record("intruder", lambda r: r["decision"] == "deny")
    assert rec["reason"] == "PEER_NOT_AUTHORIZED" and rec["proxy"] == "in-process"


def test_the_server_side_enforces_allowed_callers_against_an_attested_looking_intruder(
    sm: ShieldMesh, orders: Program
) -> None:
    """A caller with a valid mesh certificate for intruder (not in orders' allowed_callers),
    straight from the mesh CA: the shield terminates its mTLS and refuses it; the program never
    sees the request."""
    layout = sm.mesh.layout
    ca = load_ca(layout.cas_state / "mesh-ca.pem", layout.cas_state / "mesh-ca.key")
    key = generate_key()
    cert = issue_certificate(
        ca,
        public_key=key.public_key(),
        spiffe_id=SpiffeId.for_service(TD, "intruder"),
        now=datetime.now(UTC),
        lifetime=timedelta(minutes=5),
        claims=AttestationClaims(sm.mesh.measurements["intruder"], 1, 1, "p1"),
    )
    cert_path, key_path = sm.root / "intruder.pem", sm.root / "intruder.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private_key_pem(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(sm.mesh.ca_pem))
    ctx.load_cert_chain(str(cert_path), str(key_path))
    with (
        socket.create_connection(("127.0.0.1", sm.ports["http"]), timeout=10) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"GET /intruder HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = tls.recv(100)
        except (ssl.SSLError, ConnectionResetError):
            reply = b""
    assert b"HTTP/1" not in reply
    rec = sm.wait_record(
        "orders", lambda r: r["reason"] == "PEER_NOT_AUTHORIZED" and r["direction"] == "inbound"
    )
    assert rec["decision"] == "deny" and rec["peer_identity"] == f"spiffe://{TD}/svc/intruder"


# --- everything else: refused or passed through as configured ------------------------------------


def test_a_destination_outside_the_mesh_is_refused_unless_a_rule_passes_it(
    sm: ShieldMesh, orders: Program
) -> None:
    echo = EchoServer()
    ports = {**sm.ports, "socket": echo.port}
    env = ports_env(ports, APP_MODE="socket", APP_TARGET="127.0.0.1", APP_MARKER="outside")
    rc, out, _err = sm.run("frontend", env)
    assert rc == 3 and out is not None and "netshield DESTINATION_NOT_IN_MESH" in out["message"]
    assert out["errno"] == 13 and echo.bytes_received == 0  # EACCES: a PermissionError
    passing = sm.config(
        "frontend",
        name="frontend-unprotected",
        outbound={"destinations": [{"address": f"127.0.0.1:{echo.port}", "mode": "unprotected"}]},
    )
    rc, out, err = sm.run("frontend", env, config=passing)
    assert rc == 0 and out is not None and "outside" in out["reply"], err
    rec = sm.wait_record(
        "frontend", lambda r: r["dst"] == f"127.0.0.1:{echo.port}" and r["decision"] == "allow"
    )
    assert rec["reason"] == "DESTINATION_NOT_IN_MESH" and rec["peer_identity"] is None
    assert rec["bytes_in"] > 0 and rec["proxy"] == "in-process"


def test_a_native_service_of_the_policy_takes_the_native_route(
    sm: ShieldMesh, orders: Program, native: EchoServer
) -> None:
    env = ports_env(
        {**sm.ports, "socket": native.port},
        APP_MODE="socket",
        APP_TARGET="127.0.0.1",
        APP_MARKER="to-legacy",
    )
    rc, out, err = sm.run("frontend", env)
    assert rc == 0 and out is not None and "to-legacy" in out["reply"], (out, err)
    rec = sm.wait_record("frontend", lambda r: r["dst"] == f"127.0.0.1:{native.port}")
    assert rec["decision"] == "allow" and rec["proxy"] == "in-process"
    assert rec["peer_identity"] is None and rec["bytes_in"] > 0


def test_udp_to_a_mesh_service_and_sockets_of_a_forked_child_are_refused(
    sm: ShieldMesh, orders: Program
) -> None:
    rc, out, _err = _client(sm, "udp")
    assert rc == 3 and out is not None and "netshield UDP_NOT_PROTECTED" in out["message"]
    rc, out, _err = _client(sm, "fork")
    assert rc == 0 and out is not None, out
    assert "netshield SHIELD_NOT_INHERITED" in out["reply"]


def test_a_c_extension_with_sockets_of_its_own_is_refused_at_import_unless_allowed(
    sm: ShieldMesh, orders: Program
) -> None:
    rc, out, err = _client(sm, "uvloop")
    assert rc == 3 and out is not None and out["error"] == "ImportError", out
    assert "netshield EXTENSION_SOCKETS: uvloop.loop" in out["message"]
    assert "EXTENSION_SOCKETS" in err  # and one log line says so
    allowing = sm.config("frontend", name="frontend-allow", c_extensions="allow")
    env = ports_env(sm.ports, APP_MODE="uvloop", APP_TARGET="127.0.0.1")
    rc, out, err = sm.run("frontend", env, config=allowing)
    assert rc == 0 and out is not None and out["reply"] == "imported uvloop", (out, err)
    assert "uvloop.loop opens its connections" in err and "allowed: c_extensions is allow" in err


def test_a_tcp_connection_opened_past_python_sockets_is_found_and_cut(
    sm: ShieldMesh, orders: Program
) -> None:
    """Any C code's socket (here: libc through ctypes), not only the known extensions."""
    echo = EchoServer()
    env = ports_env({**sm.ports, "socket": echo.port}, APP_MODE="ctypes", APP_TARGET="127.0.0.1")
    rc, out, err = sm.run("frontend", env)
    assert rc == 0 and out is not None and out["reply"] == "first 6 later cut", (out, err)
    assert "netshield EXTENSION_SOCKETS: a TCP connection 127.0.0.1:" in err
    rec = sm.wait_record("frontend", lambda r: r["dst"] == f"127.0.0.1:{echo.port}")
    assert rec["decision"] == "deny" and rec["reason"] == "EXTENSION_SOCKETS"
    allowing = sm.config("frontend", name="frontend-allow-ctypes", c_extensions="allow")
    rc, out, err = sm.run("frontend", env, config=allowing)
    assert rc == 0 and out is not None and out["reply"] == "first 6 later open", (out, err)
    assert "left open (c_extensions: allow)" in err


# --- point 2: same trust plane, same records, admin listener, interop ---------------------------


def test_the_admin_listener_reports_readiness_and_metrics(sm: ShieldMesh, orders: Program) -> None:
    rc, out, _err = _client(sm, "socket")  # one connection counted, whatever ran before
    assert rc == 0 and out is not None and out["ok"]
    admin = orders.ready["admin"]
    with urllib.request.urlopen(f"http://{admin}/readyz", timeout=10) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"http://{admin}/identity", timeout=10) as resp:
        identity = json.loads(resp.read())
    assert identity["spiffe_id"] == ORDERS
    assert identity["measurement"] == sm.mesh.measurements["orders"]
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert (
        'netshield_connections_total{decision="allow",direction="inbound",reason="OK"}' in metrics
    )
    assert "netshield_ready 1.0" in metrics
    # the key lives in the process's memory only: not in its output, records, admin answers or files
    written = [orders.stderr(), metrics, json.dumps(identity)]
    written += [p.read_text() for p in sm.root.glob("*.shield.records.jsonl")]
    assert not any("PRIVATE KEY" in text for text in written)
    own_files = {
        Path(os.readlink(f"/proc/{orders.popen.pid}/fd/{fd}")).name
        for fd in os.listdir(f"/proc/{orders.popen.pid}/fd")
    }
    assert not any(name.endswith((".key", ".pem")) for name in own_files), own_files


def test_an_in_process_client_calls_a_sidecar_fronted_service_and_a_sidecar_calls_it(
    sm: ShieldMesh, orders: Program
) -> None:
    plain_ports = {k: v for k, v in sm.sidecar_ports.items() if k != "inbound"}
    sm.start("orders", ports_env(plain_ports), shielded=False, name="orders-plain")
    sidecar = sm.mesh.start_sidecar(
        "orders",
        inbound={
            "listen": f"127.0.0.1:{sm.sidecar_ports['inbound']}",
            "upstream": f"127.0.0.1:{plain_ports['http']}",
        },
    )
    assert sidecar.ready["listen"]["inbound"]
    ports = {**sm.ports, "http": sm.sidecar_ports["inbound"]}
    env = ports_env(ports, APP_MODE="requests", APP_TARGET="127.0.0.1", APP_MARKER="to-sidecar")
    rc, out, err = sm.run("frontend", env)
    assert rc == 0 and out is not None and "to-sidecar" in out["reply"], (out, err)
    sm.mesh.wait_record(
        "orders", lambda r: r["peer_identity"] == FRONTEND and r["decision"] == "allow"
    )
    # and the other way: a sidecar's outbound listener to the in-process orders
    outbound_port = _free_port()
    caller = sm.mesh.start_sidecar(
        "frontend",
        outbound=[
            {
                "service": "orders",
                "listen": f"127.0.0.1:{outbound_port}",
                "address": f"127.0.0.1:{sm.ports['http']}",
            }
        ],
    )
    assert caller.ready["listen"]
    with urllib.request.urlopen(f"http://127.0.0.1:{outbound_port}/from-sidecar", timeout=20) as r:
        body = json.loads(r.read())
    assert body["server"] == "http.server" and body["path"] == "/from-sidecar"
    rec = sm.wait_record(
        "orders", lambda r: r["peer_identity"] == FRONTEND and r["proxy"] == "in-process"
    )
    assert rec["decision"] == "allow"


def test_revoking_the_callers_instance_cuts_its_live_connection(
    sm: ShieldMesh, orders: Program
) -> None:
    env = ports_env(sm.ports, APP_MODE="hold", APP_TARGET="127.0.0.1")
    holder = sm.start("frontend", env, name="frontend-hold")
    ready = next(
        json.loads(line) for line in holder.stderr().splitlines() if '"component": "shield"' in line
    )
    serial = ready["serial"]
    sm.mesh.cas_admin("revoke", "--serial", serial, "--note", "test")
    rec = sm.wait_record(
        "orders", lambda r: r["close_reason"] == "PEER_REVOKED" and r["peer_serial"] == serial
    )
    assert rec["decision"] == "allow" and rec["proxy"] == "in-process"
    holder.stop()


# --- point 3: fail closed ------------------------------------------------------------------------


def test_a_process_whose_attestation_is_refused_gets_a_clear_error_and_one_log_line(
    sm: ShieldMesh, orders: Program
) -> None:
    tampered = sm.root / "tampered-frontend"
    subprocess.run(["cp", "-r", str(sm.workload("frontend")), str(tampered)], check=True)
    with (tampered / "app.py").open("a") as f:
        f.write("# one more line\n")
    config = sm.config("frontend", name="frontend-tampered", workload={"path": str(tampered)})
    before = len(sm.records("orders"))
    env = ports_env(sm.ports, APP_MODE="urllib", APP_TARGET="127.0.0.1")
    rc, out, err = sm.run("frontend", env, config=config, cwd=tampered)
    assert rc == 3 and out is not None and out["error"] in ("URLError", "PermissionError")
    assert "netshield NO_CREDENTIALS" in out["message"]
    assert "MEASUREMENT_NOT_ALLOWED" in out["message"]
    lines = [ln for ln in err.splitlines() if "connect to" in ln and "NO_CREDENTIALS" in ln]
    assert len(lines) == 1 and "MEASUREMENT_NOT_ALLOWED" in lines[0], err
    assert _orders_saw(sm, before) == []  # nothing left the process


def test_a_server_whose_attestation_is_refused_fails_its_accepts_and_readyz(
    sm: ShieldMesh,
) -> None:
    tampered = sm.root / "tampered-orders"
    subprocess.run(["cp", "-r", str(sm.workload("orders")), str(tampered)], check=True)
    with (tampered / "app.py").open("a") as f:
        f.write("# one more line\n")
    admin_port = _free_port()
    config = sm.config(
        "orders",
        name="orders-tampered",
        workload={"path": str(tampered)},
        admin={"listen": f"127.0.0.1:{admin_port}"},
    )
    ports = dict(
        zip(("http", "aiohttp", "streams", "protocol", "socket"), free_ports(5), strict=True)
    )
    program = sm.start(
        "orders", ports_env(ports), config=config, cwd=tampered, name="orders-tampered"
    )
    try:
        with socket.create_connection(("127.0.0.1", ports["socket"]), timeout=10) as s:
            s.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=10)
            raise AssertionError("readyz answered 200 without credentials")
        except urllib.error.HTTPError as err:
            assert err.code == 503 and "NO_CREDENTIALS" in err.read().decode()
        deadline = time.monotonic() + 15
        while "netshield NO_CREDENTIALS" not in program.stderr() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "netshield NO_CREDENTIALS" in program.stderr()  # the program's accept raised it
        assert "MEASUREMENT_NOT_ALLOWED" in program.stderr()
    finally:
        program.stop()


def test_raising_the_epoch_reattests_the_process_and_cuts_off_its_stale_peers(
    sm: ShieldMesh, orders: Program
) -> None:
    """Last in this module: it moves the whole mesh to epoch 2. Renewal is a fresh attestation
    (the agent's, unchanged): the shielded server's /identity shows the new epoch and /status
    counts the renewal; a live connection from a peer still on epoch 1 is closed (POLICY_STALE)."""
    env = ports_env(sm.ports, APP_MODE="hold", APP_TARGET="127.0.0.1")
    holder = sm.start("frontend", env, name="frontend-hold-epoch")
    seen = len(sm.records("orders"))
    text = sm.mesh.layout.policy.read_text()
    new_file = sm.root / "policy-v2.yaml"
    new_file.write_text(text.replace("min_epoch: 1", "min_epoch: 2"))
    sm.mesh.cas_admin("policy", "apply", str(new_file), "--previous", policy_hash(text))
    rec = _new_record(sm, "orders", seen, lambda r: r["close_reason"] == "POLICY_STALE")
    assert rec["peer_epoch"] == 1 and rec["peer_identity"] == FRONTEND
    admin = orders.ready["admin"]
    deadline = time.monotonic() + 15
    identity: dict = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{admin}/identity", timeout=10) as resp:
            identity = json.loads(resp.read())
        if identity.get("epoch") == 2:
            break
        time.sleep(0.1)
    assert identity["epoch"] == 2
    with urllib.request.urlopen(f"http://{admin}/status", timeout=10) as resp:
        status = json.loads(resp.read())
    assert status["mode"] == "in-process" and status["agent"]["renewals"] >= 1
    holder.stop()
    rc, out, err = _client(sm, "urllib")  # a fresh process attests under epoch 2 and gets in
    assert rc == 0 and out is not None and out["ok"], (out, err)
