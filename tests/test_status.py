"""`netshield status`: rendering what a sidecar's admin API says (pure), and against a real
sidecar process: identity, serial, time to expiry, CAS reachable (and not, once the CAS is
gone), a live connection while it is open, per-peer counters after it closed."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from netshield.commands.status import Snapshot, base_url, peer_counters, render, span
from netshield.record import ConnectionRecord
from netshield.sidecar.metrics import MAX_PEERS, SidecarMetrics
from tests.mesh_support import TD, EchoServer, Mesh, http_get, make_mesh
from tests.support import netshield_cmd

NOW = datetime(2025, 1, 31, 12, tzinfo=UTC)


def closed(
    peer: str | None, direction: str = "inbound", decision: str = "allow", n: int = 10
) -> ConnectionRecord:
    return ConnectionRecord(
        ts="2025-01-31T11:00:00.000Z",
        conn_id="c",
        direction=direction,  # type: ignore[arg-type]
        listener="l",
        src=f"10.9.{n // 250}.{n % 250}:4000",
        dst="127.0.0.1:9000",
        local_identity=f"spiffe://{TD}/svc/orders",
        peer_identity=peer,
        decision=decision,  # type: ignore[arg-type]
        reason="OK" if decision == "allow" else "PEER_NOT_AUTHORIZED",
        detail="d",
        bytes_in=n,
        bytes_out=2 * n,
    )


def test_per_peer_counters_come_from_the_metrics_text() -> None:
    metrics = SidecarMetrics()
    for _ in range(3):
        metrics.connection_opened("inbound")
        metrics.connection_closed(closed(f"spiffe://{TD}/svc/frontend"))
    metrics.connection_opened("inbound")
    metrics.connection_closed(closed(f"spiffe://{TD}/svc/intruder", decision="deny", n=0))
    rows = peer_counters(metrics.render().decode())
    assert rows == [
        {"direction": "inbound", "peer": "frontend", "allow": 3, "deny": 0, "in": 30, "out": 60},
        {"direction": "inbound", "peer": "intruder", "allow": 0, "deny": 1, "in": 0, "out": 0},
    ]


def test_per_peer_labels_are_bounded() -> None:
    metrics = SidecarMetrics()
    for n in range(MAX_PEERS + 50):
        metrics.connection_opened("inbound")
        metrics.connection_closed(closed(None, n=n))  # unauthenticated scanners, many addresses
    rows = peer_counters(metrics.render().decode())
    assert len(rows) == MAX_PEERS + 1
    assert next(r for r in rows if r["peer"] == "other")["allow"] == 50


def snapshot(**kw: object) -> Snapshot:
    base = {
        "base": "http://127.0.0.1:15000",
        "status": {
            "service": "orders",
            "agent": {
                "cas_reachable": True,
                "last_renewal": (NOW - timedelta(minutes=2)).isoformat(),
                "next_renewal": (NOW + timedelta(minutes=3)).isoformat(),
                "last_error": None,
                "renewals": 4,
                "renewal_failures": 1,
                "min_epoch": 1,
            },
            "records_written": 12,
        },
        "identity": {
            "spiffe_id": f"spiffe://{TD}/svc/orders",
            "serial": "3fa2",
            "not_after": (NOW + timedelta(minutes=9, seconds=41)).isoformat(),
            "policy_version": 7,
            "epoch": 1,
        },
        "connections": [],
        "metrics": "",
        "ready": True,
    }
    return Snapshot(**{**base, **kw})  # type: ignore[arg-type]


def test_render_shows_identity_expiry_cas_renewal_and_errors() -> None:
    text = "\n".join(render(snapshot(), NOW))
    assert f"identity      spiffe://{TD}/svc/orders" in text
    assert "serial 3fa2, expires in 9m41s" in text
    assert "CAS           reachable" in text and "(2m00s ago)" in text and "(in 3m00s)" in text
    assert (
        "last error    none" in text
        and "4 ok, 1 failed" in text
        and "policy        version 7" in text
    )


def test_render_says_what_is_wrong_when_things_are_wrong() -> None:
    agent = {
        "cas_reachable": False,
        "last_error": "CAS at https://x unreachable",
        "last_renewal": None,
    }
    text = "\n".join(
        render(
            snapshot(
                identity=None,
                ready=False,
                not_ready_why="not ready: NO_CREDENTIALS",
                status={"service": "orders", "agent": agent},
            ),
            NOW,
        )
    )
    assert "ready         NO: not ready: NO_CREDENTIALS" in text
    assert "identity      none" in text and "CAS           NOT reachable" in text
    assert "witness" not in text  # nothing seen yet
    refused = {
        **agent,
        "cas_reachable": True,
        "cas_refused": "CAS_ROLLED_BACK: the CAS's signed audit head is entry 6, but ...",
        "checkpoint_seen": 7,
    }
    text = "\n".join(render(snapshot(status={"service": "orders", "agent": refused}), NOW))
    assert "CAS           reachable, its history REFUSED: CAS_ROLLED_BACK: the CAS's" in text
    assert "witness       newest signed checkpoint seen: audit entry 7" in text
    assert "last renewal  never" in text and "last error    CAS at https://x unreachable" in text
    expired = snapshot(
        identity={"serial": "1", "not_after": (NOW - timedelta(seconds=5)).isoformat()}
    )
    assert "EXPIRED 5s ago" in "\n".join(render(expired, NOW))


def test_small_helpers() -> None:
    assert span(95) == "1m35s" and span(7300) == "2h01m40s" and span(3) == "3s"
    assert base_url("127.0.0.1:15000") == "http://127.0.0.1:15000"
    assert base_url("http://[::1]:15000/") == "http://[::1]:15000"


# --- a real sidecar --------------------------------------------------------------------------------


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = make_mesh(tmp_path)
    m.start_cas()
    yield m
    m.stop_all()


def status(addr: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        netshield_cmd("status", "--admin", addr, *extra), capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_status_of_a_real_sidecar(mesh: Mesh) -> None:
    echo = EchoServer()
    try:
        orders = mesh.start_sidecar(
            "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}
        )
        host, port = orders.addr("inbound")
        frontend = mesh.start_sidecar(
            "frontend",
            outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": f"{host}:{port}"}],
        )
        admin = str(orders.ready["listen"]["admin"])
        _code, identity = http_get(f"http://{admin}/identity")
        assert isinstance(identity, dict)
        # a connection held open shows as live, with its peer
        with socket.create_connection(frontend.addr("outbound:orders"), timeout=10) as conn:
            conn.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            live = status(admin)
        assert live.returncode == 0, live.stderr
        out = live.stdout
        assert out.startswith(f"sidecar orders at http://{admin}")
        assert f"identity      spiffe://{TD}/svc/orders" in out
        assert f"serial {identity['serial']}, expires in 9m" in out  # lifetime 10m
        assert "CAS           reachable" in out and "last error    none" in out
        assert "connections   1 live" in out and f"spiffe://{TD}/svc/frontend" in out
        # closed: counted per peer
        mesh.wait_record("orders", lambda r: r["decision"] == "allow")
        data = json.loads(status(admin, "--json").stdout)
        assert data["connections"] == [] and data["ready"] is True
        assert {
            "direction": "inbound",
            "peer": "frontend",
            "allow": 1,
            "deny": 0,
            "in": 4,
            "out": 4,
        } in data["peers"]
        # the CAS goes away: the sidecar keeps serving and says the CAS is not reachable
        assert mesh.cas is not None
        mesh.cas.stop()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = status(admin).stdout
            if "CAS           NOT reachable" in text:
                break
            time.sleep(0.5)
        assert "CAS           NOT reachable" in text
    finally:
        echo.shutdown()
        echo.server_close()


def test_status_of_nothing_is_one_line_and_exit_2() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    result = status(addr)
    assert (
        result.returncode == 2
        and f"sidecar admin API at http://{addr} unreachable" in result.stderr
    )
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_status_of_something_that_is_not_a_sidecar_is_one_line() -> None:
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = status(f"127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
