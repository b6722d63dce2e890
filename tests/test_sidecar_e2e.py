"""The data plane end to end: a real CAS, sidecars as processes, plain echo services, and real
peers (openssl s_client, curl). Each operator-visible behaviour of issue 3 has a test here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netshield.identity import SpiffeId
from netshield.pki.ca import create_root_ca, issue_certificate, load_ca
from netshield.pki.certext import AttestationClaims
from netshield.pki.keys import generate_key, private_key_pem
from tests.mesh_support import (
    TD,
    EchoServer,
    Mesh,
    Proc,
    http_get,
    make_mesh,
    roundtrip,
    s_client,
    sha256,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = make_mesh(tmp_path)
    m.start_cas()
    yield m
    m.stop_all()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.shutdown()
    server.server_close()


def orders_and_frontend(mesh: Mesh, echo: EchoServer) -> tuple[Proc, Proc]:
    orders = mesh.start_sidecar(
        "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}
    )
    host, port = orders.addr("inbound")
    frontend = mesh.start_sidecar(
        "frontend",
        outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": f"{host}:{port}"}],
    )
    return orders, frontend


def test_allowed_call_relays_every_byte_and_both_sides_record_it(
    mesh: Mesh, echo: EchoServer
) -> None:
    _orders, frontend = orders_and_frontend(mesh, echo)
    payload = os.urandom(3 * 1024 * 1024 + 7)
    back = roundtrip(frontend.addr("outbound:orders"), payload)
    assert sha256(back) == sha256(payload)
    out = mesh.wait_record("frontend", lambda r: r["direction"] == "outbound")
    inn = mesh.wait_record("orders", lambda r: r["direction"] == "inbound")
    assert out["decision"] == inn["decision"] == "allow"
    assert inn["peer_identity"] == f"spiffe://{TD}/svc/frontend"
    assert out["peer_identity"].endswith("/svc/orders")
    assert inn["tls_version"] == "TLSv1.3"
    assert inn["bytes_in"] == len(payload) and inn["bytes_out"] == len(payload)
    assert inn["close_reason"] == "CLOSED"
    # many connections at once keep integrity
    results: list[bool] = []

    def one() -> None:
        data = os.urandom(200_000)
        results.append(roundtrip(frontend.addr("outbound:orders"), data) == data)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 16


def test_caller_not_in_policy_gets_no_byte_through_and_is_recorded(
    mesh: Mesh, echo: EchoServer
) -> None:
    orders, _frontend = orders_and_frontend(mesh, echo)
    host, port = orders.addr("inbound")
    intruder = mesh.start_sidecar(
        "intruder",
        outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": f"{host}:{port}"}],
    )
    before = echo.bytes_received
    back = roundtrip(intruder.addr("outbound:orders"), b"SELECT secrets")
    assert back == b""
    rec = mesh.wait_record("intruder", lambda r: r["decision"] == "deny")
    assert rec["reason"] == "PEER_NOT_AUTHORIZED"
    assert "services.orders.allowed_callers" in rec["detail"]
    assert echo.bytes_received == before
    # an intruder that bypasses its own sidecar with a genuine mesh certificate meets the callee's check
    cert, key = _write_cert(mesh, "intruder", ca_kind="mesh", service="intruder")
    direct = _s_client(
        port, "-CAfile", str(mesh.ca_pem), "-cert", cert, "-key", key, data=b"SELECT secrets\n"
    )
    assert b"SELECT" not in direct.stdout
    rec = mesh.wait_record("orders", lambda r: r["decision"] == "deny")
    assert rec["reason"] == "PEER_NOT_AUTHORIZED" and rec["peer_identity"].endswith("/svc/intruder")
    assert (
        f"conn={rec['conn_id']}" in orders.stderr()
    )  # the diagnostic log names the same connection
    assert "add `intruder` there" in rec["detail"]
    assert echo.bytes_received == before


def _s_client(
    port: int, *args: str, data: bytes = b"hello\n"
) -> subprocess.CompletedProcess[bytes]:
    return s_client(port, "-tls1_3", *args, data=data)


def _write_cert(
    mesh: Mesh,
    name: str,
    *,
    ca_kind: str,
    service: str = "frontend",
    lifetime: timedelta = timedelta(minutes=10),
    now: datetime | None = None,
) -> tuple[str, str]:
    if ca_kind == "mesh":
        return mesh.mint(name, service, lifetime=lifetime, now=now)
    now = now or datetime.now(UTC)
    key = generate_key()
    cert = issue_certificate(
        create_root_ca("rogue", now=now),
        public_key=key.public_key(),
        spiffe_id=SpiffeId.for_service(TD, service),
        now=now,
        lifetime=lifetime,
        claims=AttestationClaims(mesh.measurements[service], 1, 1, "p1"),
    )
    cert_path, key_path = mesh.root / f"{name}.pem", mesh.root / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private_key_pem(key))
    return str(cert_path), str(key_path)


def _write_expired_cert(mesh: Mesh) -> tuple[str, str]:
    """A frontend certificate from the real mesh CA whose validity ended before now."""
    ca = load_ca(mesh.layout.cas_state / "mesh-ca.pem", mesh.layout.cas_state / "mesh-ca.key")
    key = generate_key()
    start = ca.cert.not_valid_before_utc
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "frontend")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(seconds=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/frontend")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = mesh.root / "expired.pem", mesh.root / "expired.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private_key_pem(key))
    return str(cert_path), str(key_path)


def test_rejected_clients_see_the_tls_alert_that_says_why(mesh: Mesh, echo: EchoServer) -> None:
    orders, _ = orders_and_frontend(mesh, echo)
    _, port = orders.addr("inbound")
    ca = str(mesh.ca_pem)
    no_cert = _s_client(port, "-CAfile", ca)
    assert b"certificate required" in no_cert.stdout + no_cert.stderr
    rogue_cert, rogue_key = _write_cert(mesh, "rogue", ca_kind="rogue")
    rogue = _s_client(port, "-CAfile", ca, "-cert", rogue_cert, "-key", rogue_key)
    assert b"unknown ca" in rogue.stdout + rogue.stderr
    old_cert, old_key = _write_expired_cert(mesh)
    expired = _s_client(port, "-CAfile", ca, "-cert", old_cert, "-key", old_key)
    assert b"certificate expired" in expired.stdout + expired.stderr
    reasons = {r["reason"] for r in mesh.records("orders") if r["decision"] == "deny"}
    assert {"PEER_CERT_MISSING", "PEER_CERT_UNTRUSTED", "PEER_CERT_EXPIRED"} <= reasons
    assert echo.bytes_received == 0
    # the twin: a valid mesh certificate for an allowed caller gets through to the service
    good_cert, good_key = _write_cert(mesh, "good", ca_kind="mesh")
    good = _s_client(port, "-CAfile", ca, "-cert", good_cert, "-key", good_key, data=b"marker-42\n")
    assert b"marker-42" in good.stdout
    assert echo.bytes_received > 0
    # TLS 1.2 is refused unless the sidecar config asks for it (inbound.tls_min_version: "1.2")
    v12 = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-tls1_2",
            "-CAfile",
            ca,
            "-cert",
            good_cert,
            "-key",
            good_key,
        ],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    assert b"protocol version" in v12.stdout + v12.stderr


def test_garbage_and_plain_http_on_the_inbound_port_are_denied_and_survived(
    mesh: Mesh, echo: EchoServer
) -> None:
    orders, frontend = orders_and_frontend(mesh, echo)
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096)):
        with socket.create_connection(orders.addr("inbound"), timeout=10) as s:
            s.sendall(payload)
            s.settimeout(10)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    rec = mesh.wait_record("orders", lambda r: r["reason"] == "TLS_HANDSHAKE_FAILED")
    assert rec["decision"] == "deny"
    assert roundtrip(frontend.addr("outbound:orders"), b"still works") == b"still works"


def test_revoked_peer_is_cut_off_mid_connection(mesh: Mesh, echo: EchoServer) -> None:
    _orders, frontend = orders_and_frontend(mesh, echo)
    status, ident = http_get(f"http://{':'.join(map(str, frontend.addr('admin')))}/identity")
    assert status == 200 and isinstance(ident, dict)
    with socket.create_connection(frontend.addr("outbound:orders"), timeout=10) as s:
        s.sendall(b"ping")
        assert s.recv(100) == b"ping"
        assert mesh.cas is not None
        mesh.cas_admin("revoke", "--serial", ident["serial"])
        s.settimeout(30)  # the feed brings it within seconds; left open, this recv times out
        closed = b""
        try:
            closed = s.recv(100)
        except TimeoutError:
            pytest.fail("the revoked peer's connection stayed open")
        except OSError:
            pass  # a reset: cut off as well
    assert closed == b""
    rec = mesh.wait_record(
        "orders", lambda r: r["close_reason"] == "PEER_REVOKED" and r["direction"] == "inbound"
    )
    assert rec["decision"] == "allow" and rec["bytes_in"] == 4
    assert rec["peer_serial"] == ident["serial"]
    # the connection was a stream of a tunnel, and the tunnel closed with it, for the same reason
    tunnel = mesh.wait_record("orders", lambda r: r["direction"] == "tunnel")
    assert tunnel["conn_id"] == rec["tunnel_id"] and tunnel["close_reason"] == "PEER_REVOKED"
    assert tunnel["streams"] == 1 and tunnel["peer_serial"] == ident["serial"]
    # the revoked certificate is dead; the (still attestable) workload re-attested with a new key
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, fresh = http_get(f"http://{':'.join(map(str, frontend.addr('admin')))}/identity")
        if status == 200 and isinstance(fresh, dict) and fresh["serial"] != ident["serial"]:
            break
        time.sleep(0.1)
    assert roundtrip(frontend.addr("outbound:orders"), b"again") == b"again"
    later = mesh.wait_record("orders", lambda r: r["bytes_in"] == 5 and r["direction"] == "inbound")
    assert later["peer_serial"] != ident["serial"]
    assert later["tunnel_id"] not in (None, rec["tunnel_id"])  # a fresh tunnel, new certificate


def test_revoked_service_is_refused_in_both_directions(mesh: Mesh, echo: EchoServer) -> None:
    orders, frontend = orders_and_frontend(mesh, echo)
    assert roundtrip(frontend.addr("outbound:orders"), b"before") == b"before"
    cert, key = _write_cert(mesh, "frontend-copy", ca_kind="mesh", service="frontend")
    assert mesh.cas is not None
    mesh.cas_admin("revoke", "--service", "frontend")
    _, port = orders.addr("inbound")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # orders learns it from the feed within seconds
        direct = _s_client(
            port, "-CAfile", str(mesh.ca_pem), "-cert", cert, "-key", key, data=b"after\n"
        )
        if b"after" not in direct.stdout:
            break
        time.sleep(0.2)
    rec = mesh.wait_record("orders", lambda r: r["reason"] == "PEER_REVOKED")
    assert rec["decision"] == "deny" and rec["peer_identity"].endswith("/svc/frontend")
    # frontend itself dropped its certificate and cannot re-attest: it fails closed
    assert roundtrip(frontend.addr("outbound:orders"), b"after") == b""
    out = mesh.wait_record("frontend", lambda r: r["decision"] == "deny")
    assert out["reason"] == "NO_CREDENTIALS"
    status, _ready = http_get(f"http://{':'.join(map(str, frontend.addr('admin')))}/readyz")
    assert status == 503


def test_sigterm_drains_live_connections_then_exits(mesh: Mesh, echo: EchoServer) -> None:
    _orders, frontend = orders_and_frontend(mesh, echo)
    s = socket.create_connection(frontend.addr("outbound:orders"), timeout=10)
    s.sendall(b"before")
    assert s.recv(100) == b"before"
    frontend.popen.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # the live connection still works during the drain …
    s.sendall(b"during")
    assert s.recv(100) == b"during"
    # … new ones are not accepted
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(frontend.addr("outbound:orders"), timeout=2)
    s.shutdown(socket.SHUT_WR)
    assert s.recv(100) == b""
    s.close()
    assert frontend.popen.wait(timeout=20) == 0
    rec = mesh.wait_record(
        "frontend", lambda r: r["direction"] == "outbound" and r["bytes_in"] == 12
    )
    assert rec["close_reason"] == "CLOSED"


def test_sighup_with_a_broken_config_keeps_the_old_one(mesh: Mesh, echo: EchoServer) -> None:
    _orders, frontend = orders_and_frontend(mesh, echo)
    cfg = mesh.root / "frontend.sidecar.yaml"
    good = cfg.read_text()
    cfg.write_text(good + "\nbogus_key: [\n")
    frontend.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "kept the old configuration" not in frontend.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "kept the old configuration" in frontend.stderr()
    assert roundtrip(frontend.addr("outbound:orders"), b"alive") == b"alive"
    assert frontend.popen.poll() is None
    cfg.write_text(
        good.replace("max_connections: 1024", "max_connections: 1000")
        if "max_connections" in good
        else good + "limits:\n  max_connections: 1000\n"
    )
    frontend.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reloaded" not in frontend.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "reloaded" in frontend.stderr()


def test_admin_listener_reports_health_identity_connections_and_metrics(
    mesh: Mesh, echo: EchoServer
) -> None:
    orders, frontend = orders_and_frontend(mesh, echo)
    base = f"http://{':'.join(map(str, orders.addr('admin')))}"
    assert http_get(base + "/healthz")[0] == 200
    status, _ready = http_get(base + "/readyz")
    assert status == 200
    status, ident = http_get(base + "/identity")
    assert isinstance(ident, dict) and ident["spiffe_id"].endswith("/svc/orders")
    with socket.create_connection(frontend.addr("outbound:orders"), timeout=10) as s:
        s.sendall(b"x")
        assert s.recv(10) == b"x"
        status, live = http_get(base + "/connections")
        assert isinstance(live, list) and len(live) == 2
        # the connection, and the tunnel that carries it (named by the connection)
        (conn,) = (c for c in live if c["direction"] == "inbound")
        (tunnel,) = (c for c in live if c["direction"] == "tunnel")
        assert conn["peer_identity"].endswith("/svc/frontend")
        assert conn["tunnel_id"] == tunnel["conn_id"] == tunnel["tunnel_id"]
        assert conn["stream_id"] == 1 and tunnel["stream_id"] is None
    roundtrip(frontend.addr("outbound:orders"), b"y")
    mesh.wait_record("orders", lambda r: r["bytes_in"] == 1 and r["close_reason"] == "CLOSED")
    status, metrics = http_get(base + "/metrics")
    text = str(metrics)
    for name in (
        "netshield_connections_total",
        "netshield_active_connections",
        "netshield_bytes_total",
        "netshield_handshake_seconds",
        "netshield_certificate_expiry_seconds",
        "netshield_renewals_total",
    ):
        assert name in text
    assert 'decision="allow"' in text


def test_curl_through_an_outbound_listener_reaches_an_http_service(
    mesh: Mesh, tmp_path: Path
) -> None:
    web_root = tmp_path / "www"
    web_root.mkdir()
    (web_root / "index.html").write_text("hello through the mesh\n")
    http = subprocess.Popen(
        ["python3", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(web_root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert http.stdout is not None
        line = http.stdout.readline()
        port = int(line.split("port ")[1].split()[0])
        orders = mesh.start_sidecar(
            "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{port}"}
        )
        host, iport = orders.addr("inbound")
        frontend = mesh.start_sidecar(
            "frontend",
            outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": f"{host}:{iport}"}],
        )
        fhost, fport = frontend.addr("outbound:orders")
        curl = subprocess.run(
            ["curl", "-sS", f"http://{fhost}:{fport}/index.html"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert curl.stdout == "hello through the mesh\n", curl.stderr
    finally:
        http.terminate()
        http.wait()
