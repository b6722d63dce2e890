"""Ingress WAF routes end to end: a native HTTP client (no sidecar, no mesh certificate) calls the
confidential service orders through frontend's sidecar, in plain HTTP and in server-only TLS
with frontend's mesh certificate. The sidecar runs ModSecurity + CRS, then forwards over mesh
mutual TLS to orders' sidecar on a pooled keep-alive connection; attacks never reach orders."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mesh_support import Mesh, Proc, make_mesh
from tests.test_native_route_e2e import HttpServer

pytestmark = pytest.mark.slow


@pytest.fixture
def ingress_mesh(tmp_path: Path) -> Iterator[tuple[Mesh, HttpServer, Proc, Proc]]:
    server = HttpServer(tmp_path)
    mesh = make_mesh(tmp_path)
    try:
        mesh.start_cas()
        orders = mesh.start_sidecar(
            "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{server.port}"}
        )
        address = orders.ready["listen"]["inbound"]
        frontend = mesh.start_sidecar(
            "frontend",
            ingress=[
                {"listen": "127.0.0.1:0", "service": "orders", "address": address},
                {"listen": "127.0.0.1:0", "service": "orders", "address": address, "tls": "server"},
            ],
        )
        yield mesh, server, orders, frontend
    finally:
        mesh.stop_all()
        server.stop()


def exchange(sock: socket.socket, requests: list[bytes]) -> list[bytes]:
    """Send each request on the same connection and read its response head and body."""
    answers = []
    stream = sock.makefile("rb")
    for request in requests:
        sock.sendall(request)
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += stream.readline()
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        answers.append(head + stream.read(length))
    return answers


def get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: orders.example\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n".encode()


def test_plain_http_ingress_inspects_then_forwards_over_mesh_mtls(
    ingress_mesh: tuple[Mesh, HttpServer, Proc, Proc],
) -> None:
    mesh, server, _orders, frontend = ingress_mesh
    with socket.create_connection(frontend.addr("ingress:orders"), timeout=20) as sock:
        first, attack, second = exchange(
            sock,
            [
                get("/index.html?name=O%27Brien"),
                get("/?id=1%27%20OR%20%271%27=%271"),
                get("/index.html"),
            ],
        )
    assert first.startswith(b"HTTP/1.1 200") and b"hello from the native service" in first
    assert attack.startswith(b"HTTP/1.1 403") and b"request id" in attack
    assert second.startswith(b"HTTP/1.1 200")
    rec = mesh.wait_record("frontend", lambda r: r["listener"] == "ingress:orders")
    assert rec["direction"] == "inbound" and rec["reason"] == "WAF_BLOCKED"
    assert [q["action"] for q in rec["waf"]["requests"]] == ["pass", "block", "pass"]
    assert "942100" in rec["waf"]["rule_ids"] and rec["waf"]["engine"] == "crs"
    # orders saw frontend's attested identity over mTLS, on one pooled connection, and no attack
    inbound = mesh.wait_record("orders", lambda r: r["direction"] == "inbound", timeout=20)
    assert (
        inbound["peer_identity"].endswith("/svc/frontend") and inbound["tls_version"] == "TLSv1.3"
    )
    time.sleep(0.3)
    log = server.access_log()
    assert log.count("GET /index.html") == 2 and "id=1" not in log


def test_server_only_tls_ingress_presents_the_mesh_certificate_and_needs_no_client_cert(
    ingress_mesh: tuple[Mesh, HttpServer, Proc, Proc],
) -> None:
    mesh, _server, _orders, frontend = ingress_mesh
    ctx = ssl.create_default_context(cafile=str(mesh.ca_pem))
    ctx.check_hostname = False  # the mesh certificate names a SPIFFE id, not a host name
    with socket.create_connection(frontend.addr("ingress:orders#2"), timeout=20) as raw:
        with ctx.wrap_socket(raw) as tls:
            assert "svc/frontend" in str(tls.getpeercert()["subjectAltName"])
            (answer,) = exchange(tls, [get("/index.html")])
    assert answer.startswith(b"HTTP/1.1 200")
    rec = mesh.wait_record(
        "frontend", lambda r: r["listener"] == "ingress:orders" and r["tls_version"]
    )
    assert rec["decision"] == "allow" and rec["peer_identity"] is None
    untrusting = ssl.create_default_context()  # the system store does not know the mesh CA
    untrusting.check_hostname = False
    with socket.create_connection(frontend.addr("ingress:orders#2"), timeout=20) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusting.wrap_socket(raw)
