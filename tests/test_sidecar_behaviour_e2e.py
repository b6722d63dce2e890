"""Data-plane behaviours beyond the happy path, each against real processes: local-caller checks,
limits and timeouts, audit mode, raising the certificate epoch, the CAS going away during renewal,
and the private key never leaving the sidecar's memory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from netshield.pki.keys import private_key_pem
from netshield.policy import policy_hash
from netshield.tls.credentials import MeshCredentials
from tests.mesh_support import EchoServer, Mesh, http_get, make_mesh, roundtrip
from tests.test_sidecar_e2e import _s_client, _write_cert

pytestmark = pytest.mark.slow


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def running_mesh(root: Path, **kwargs: Any) -> Iterator[Mesh]:
    mesh = make_mesh(root, **kwargs)
    mesh.start_cas()
    try:
        yield mesh
    finally:
        mesh.stop_all()


def admin_url(proc_addr: tuple[str, int]) -> str:
    return f"http://{proc_addr[0]}:{proc_addr[1]}"


def test_unix_socket_listener_checks_the_callers_uid(tmp_path: Path, echo: EchoServer) -> None:
    with running_mesh(tmp_path) as mesh:
        orders = mesh.start_sidecar(
            "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}
        )
        address = ":".join(map(str, orders.addr("inbound")))
        mine, theirs = tmp_path / "mine.sock", tmp_path / "theirs.sock"
        mesh.start_sidecar(
            "frontend",
            outbound=[
                {
                    "service": "orders",
                    "unix": str(mine),
                    "allowed_uids": [os.getuid()],
                    "address": address,
                },
                {
                    "service": "orders",
                    "unix": str(theirs),
                    "allowed_uids": [os.getuid() + 4242],
                    "address": address,
                },
            ],
        )
        for path, expected in ((mine, b"through"), (theirs, b"")):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                s.sendall(b"through")
                s.shutdown(socket.SHUT_WR)
                got = b""
                with contextlib.suppress(ConnectionResetError):
                    while chunk := s.recv(100):
                        got += chunk
            assert got == expected
        rec = mesh.wait_record("frontend", lambda r: r["decision"] == "deny")
        assert rec["reason"] == "CALLER_NOT_LOCAL" and "allowed_uids" in rec["detail"]


def test_limits_unknown_destinations_and_unreachable_upstreams_are_recorded(tmp_path: Path) -> None:
    with running_mesh(tmp_path) as mesh:
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()  # nothing listens there: the orders upstream is down
        orders = mesh.start_sidecar(
            "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{dead_port}"}
        )
        full = socket.socket()  # a listener that never accepts, with a full backlog: connects hang
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        stuck = [socket.socket() for _ in range(8)]
        for s in stuck:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError, OSError):
                s.connect(full.getsockname())
        address = ":".join(map(str, orders.addr("inbound")))
        frontend = mesh.start_sidecar(
            "frontend",
            outbound=[
                {"service": "orders", "listen": "127.0.0.1:0", "address": address},
                {"service": "orders", "listen": "127.0.0.1:0"},  # no address anywhere
                {
                    "service": "orders",
                    "listen": "127.0.0.1:0",
                    "address": f"127.0.0.1:{full.getsockname()[1]}",
                },
            ],
            limits={"max_connections": 1, "connect_timeout": "1s"},
        )
        listen = frontend.ready["listen"]
        via_orders, no_address, blackhole = (
            tuple(str(v).rsplit(":", 1))
            for k, v in sorted(listen.items())
            if k.startswith("outbound")
        )
        # the upstream behind orders is down: allowed by policy, closed as UPSTREAM_UNREACHABLE
        assert roundtrip((via_orders[0], int(via_orders[1])), b"x") == b""
        rec = mesh.wait_record("orders", lambda r: r["close_reason"] == "UPSTREAM_UNREACHABLE")
        assert rec["decision"] == "allow" and str(dead_port) in rec["detail"]
        # no address for the destination
        assert roundtrip((no_address[0], int(no_address[1])), b"x") == b""
        assert (
            mesh.wait_record("frontend", lambda r: r["reason"] == "DESTINATION_UNKNOWN")["decision"]
            == "deny"
        )
        # the connection limit: one connection hangs in its connect, the next is refused
        hanging = socket.create_connection((blackhole[0], int(blackhole[1])), timeout=10)
        time.sleep(0.3)
        assert roundtrip((via_orders[0], int(via_orders[1])), b"x") == b""
        assert (
            mesh.wait_record("frontend", lambda r: r["reason"] == "CONNECTION_LIMIT")["decision"]
            == "deny"
        )
        # … and the hanging one gives up after limits.connect_timeout
        rec = mesh.wait_record("frontend", lambda r: r["close_reason"] == "CONNECT_TIMEOUT")
        assert "within 1 s" in rec["detail"]
        hanging.close()
        for s in stuck:
            s.close()
        full.close()


def test_audit_mode_lets_a_would_be_denial_through_and_marks_it(
    tmp_path: Path, echo: EchoServer
) -> None:
    with running_mesh(tmp_path, overrides={"orders": {"authorization": "audit"}}) as mesh:
        orders = mesh.start_sidecar(
            "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}
        )
        cert, key = _write_cert(mesh, "intruder", ca_kind="mesh", service="intruder")
        got = _s_client(
            orders.addr("inbound")[1],
            "-CAfile",
            str(mesh.ca_pem),
            "-cert",
            cert,
            "-key",
            key,
            data=b"audited-call\n",
        )
        assert b"audited-call" in got.stdout
        rec = mesh.wait_record(
            "orders", lambda r: r["peer_identity"] and r["peer_identity"].endswith("/intruder")
        )
        assert (rec["decision"], rec["mode"], rec["reason"]) == (
            "allow",
            "audit",
            "PEER_NOT_AUTHORIZED",
        )
        assert "audit mode" in rec["detail"]


def test_raising_the_epoch_reattests_everyone_and_cuts_off_stale_peers(
    tmp_path: Path, echo: EchoServer
) -> None:
    with running_mesh(tmp_path) as mesh:
        orders = mesh.start_sidecar(
            "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}
        )
        address = ":".join(map(str, orders.addr("inbound")))
        frontend = mesh.start_sidecar(
            "frontend",
            outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": address}],
        )
        # a frozen peer: a genuine frontend certificate minted under epoch 1, connected now
        cert, key = _write_cert(mesh, "frozen", ca_kind="mesh", service="frontend")
        ctx = ssl.create_default_context(cafile=str(mesh.ca_pem))
        ctx.check_hostname = False
        ctx.load_cert_chain(cert, key)
        frozen = ctx.wrap_socket(socket.create_connection(orders.addr("inbound"), timeout=10))
        frozen.sendall(b"ping")
        assert frozen.recv(10) == b"ping"
        assert roundtrip(frontend.addr("outbound:orders"), b"before") == b"before"  # a tunnel
        text = mesh.layout.policy.read_text()
        new = text.replace("min_epoch: 1", "min_epoch: 2")
        new_file = tmp_path / "policy-v2.yaml"
        new_file.write_text(new)
        assert mesh.cas is not None
        mesh.cas_admin("policy", "apply", str(new_file), "--previous", policy_hash(text))
        t0 = time.monotonic()
        closed = b"?"
        frozen.settimeout(10)
        with contextlib.suppress(OSError):
            closed = frozen.recv(10)
        assert closed == b"" and time.monotonic() - t0 < 5
        rec = mesh.wait_record("orders", lambda r: r["close_reason"] == "POLICY_STALE")
        assert rec["peer_epoch"] == 1
        for proc in (orders, frontend):  # both sidecars re-attested under the new epoch at once
            deadline = time.monotonic() + 5
            epoch = None
            while time.monotonic() < deadline:
                _status, ident = http_get(admin_url(proc.addr("admin")) + "/identity")
                epoch = ident.get("epoch") if isinstance(ident, dict) else None
                if epoch == 2:
                    break
                time.sleep(0.1)
            assert epoch == 2
        assert roundtrip(frontend.addr("outbound:orders"), b"fresh") == b"fresh"
        # the tunnel frontend opened under epoch 1 was closed as stale; the call went over a new one
        stale = mesh.wait_record(
            "orders", lambda r: r["direction"] == "tunnel" and r["close_reason"] == "POLICY_STALE"
        )
        assert stale["peer_epoch"] == 1 and stale["streams"] == 1
        fresh = mesh.wait_record(
            "orders", lambda r: r["bytes_in"] == 5 and r["direction"] == "inbound"
        )
        assert fresh["tunnel_id"] not in (None, stale["conn_id"]) and fresh["peer_epoch"] == 2


def test_cas_down_during_renewal_serves_until_expiry_then_fails_closed_and_recovers(
    tmp_path: Path, echo: EchoServer
) -> None:
    with running_mesh(tmp_path, lifetime="1m") as mesh:
        orders = mesh.start_sidecar(
            "orders",
            inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"},
            renewal={"fraction": 0.2, "jitter": 0.05},
        )
        address = ":".join(map(str, orders.addr("inbound")))
        frontend = mesh.start_sidecar(
            "frontend",
            outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": address}],
            renewal={"fraction": 0.2, "jitter": 0.05},
        )
        base = admin_url(frontend.addr("admin"))
        _, ident = http_get(base + "/identity")
        assert isinstance(ident, dict)
        live = socket.create_connection(frontend.addr("outbound:orders"), timeout=10)
        live.sendall(b"a")
        assert live.recv(1) == b"a"
        assert mesh.cas is not None
        mesh.cas.stop()  # the CAS goes away
        deadline = time.monotonic() + 40
        failures = 0.0
        while time.monotonic() < deadline and not failures:
            _, metrics = http_get(base + "/metrics")
            for line in str(metrics).splitlines():
                if line.startswith("netshield_renewal_failures_total"):
                    failures = float(line.split()[-1])
            time.sleep(0.5)
        assert failures >= 1
        # renewal failed, but the certificate is still valid: the sidecar keeps serving
        assert http_get(base + "/readyz")[0] == 200
        assert roundtrip(frontend.addr("outbound:orders"), b"still") == b"still"
        # … until it expires: then it fails closed
        deadline = time.monotonic() + 75
        while time.monotonic() < deadline and http_get(base + "/readyz")[0] == 200:
            time.sleep(0.5)
        status, body = http_get(base + "/readyz")
        assert status == 503 and "NO_CREDENTIALS" in str(body)
        assert roundtrip(frontend.addr("outbound:orders"), b"late") == b""
        assert (
            mesh.wait_record("frontend", lambda r: r["reason"] == "NO_CREDENTIALS")["decision"]
            == "deny"
        )
        live.settimeout(10)
        with contextlib.suppress(OSError):
            assert live.recv(1) == b""
        # both certificates end within seconds of each other: the live connection closes at
        # whichever comes first, its own (CREDENTIALS_EXPIRED) or the peer's (PEER_CERT_EXPIRED)
        rec = mesh.wait_record(
            "frontend",
            lambda r: (
                r["close_reason"] in ("CREDENTIALS_EXPIRED", "PEER_CERT_EXPIRED")
                and r["direction"] == "outbound"
            ),
        )
        assert rec["bytes_in"] == 1
        # the tunnel that carried it closed with it, for the same reasons
        tunnel = mesh.wait_record("frontend", lambda r: r["direction"] == "tunnel")
        assert tunnel["close_reason"] in ("CREDENTIALS_EXPIRED", "PEER_CERT_EXPIRED")
        # the CAS comes back: both sidecars attest again by themselves and serve again
        mesh.restart_cas()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and http_get(base + "/readyz")[0] != 200:
            time.sleep(0.5)
        assert http_get(base + "/readyz")[0] == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if roundtrip(frontend.addr("outbound:orders"), b"back") == b"back":
                break
            time.sleep(0.5)
        assert roundtrip(frontend.addr("outbound:orders"), b"again") == b"again"


async def test_private_key_never_leaves_the_sidecars_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from netshield.sidecar.app import run_sidecar

    caplog.set_level("DEBUG")
    mesh = make_mesh(tmp_path)
    await asyncio.to_thread(mesh.start_cas)
    try:
        echo = EchoServer()
        config = mesh.sidecar_config(
            "orders",
            inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"},
            records={"file": str(tmp_path / "orders.records.jsonl"), "stdout": True},
        )
        out = io.StringIO()
        stop = asyncio.Event()
        task = asyncio.create_task(run_sidecar(config, out=out, stop=stop))
        for _ in range(300):
            if out.getvalue():
                break
            await asyncio.sleep(0.05)
        assert '"event": "ready"' in out.getvalue()
        creds = [o for o in gc.get_objects() if isinstance(o, MeshCredentials)]
        assert creds
        key = creds[-1].key
        pem = private_key_pem(key)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        secrets = [
            pem.splitlines()[1],
            format(key.private_numbers().private_value, "x").encode(),
            der[-32:],
        ]
        stop.set()
        await asyncio.wait_for(task, 30)
        echo.shutdown()
        echo.server_close()
    finally:
        await asyncio.to_thread(mesh.stop_all)
    haystacks = [
        caplog.text.encode(),
        out.getvalue().encode(),
        repr(creds[-1]).encode(),
        "\n".join(f"{k}={v}" for k, v in os.environ.items()).encode(),
    ]
    haystacks += [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    haystacks += [
        p.read_bytes() for p in Path("/tmp").glob("*") if p.is_file() and p.stat().st_size < 10**6
    ]
    for secret in secrets:
        for hay in haystacks:
            assert secret not in hay
