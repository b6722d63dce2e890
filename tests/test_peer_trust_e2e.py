"""Defence in depth in the data plane, end to end: a real CAS and sidecar processes, openssl
s_client and Python's ssl as the peers.

Someone who holds the mesh CA key but not the policy cannot get a certificate accepted that the
CAS would not issue; a TLS 1.2 session resumed after its certificate expired is refused; TLS 1.2
offers only ECDHE with AEAD; a live connection closes when the peer's certificate expires; a
record tampered with mid-stream closes the connection with a reason of its own.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.mesh_support import EchoServer, Mesh, Proc, make_mesh, roundtrip
from tests.mesh_support import s_client as openssl_client

pytestmark = pytest.mark.slow


@dataclass
class World:
    mesh: Mesh
    echo: EchoServer
    orders: Proc
    port: int  # orders' inbound (TLS 1.2 allowed)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    mesh = make_mesh(tmp_path_factory.mktemp("trust"))
    echo = EchoServer()
    try:
        mesh.start_cas()
        orders = mesh.start_sidecar(
            "orders",
            inbound={
                "listen": "127.0.0.1:0",
                "upstream": f"127.0.0.1:{echo.port}",
                "tls_min_version": "1.2",
            },
        )
        yield World(mesh, echo, orders, orders.addr("inbound")[1])
    finally:
        mesh.stop_all()
        echo.shutdown()
        echo.server_close()


def s_client(port: int, *args: str, data: bytes) -> str:
    """openssl s_client as the peer; all it printed."""
    done = openssl_client(port, *args, data=data)
    return (done.stdout + done.stderr).decode(errors="replace")


def serial_of(cert_path: str) -> str:
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return format(cert.serial_number, "x")


def records_of(w: World, cert_path: str, count: int = 1) -> list[dict[str, Any]]:
    """orders' records of the connections made with the certificate at `cert_path`, once there
    are `count` of them."""
    serial = serial_of(cert_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [r for r in w.mesh.records("orders") if r.get("peer_serial") == serial]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} orders records for serial {serial}")


def tls_client(w: World, cert: str, key: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(w.mesh.ca_pem))
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    raw = socket.create_connection(("127.0.0.1", w.port), timeout=20)
    return ctx.wrap_socket(raw)


def echo_once(tls: ssl.SSLSocket, payload: bytes) -> bytes:
    tls.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = tls.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def not_after(cert_path: str) -> datetime:
    return x509.load_pem_x509_certificate(Path(cert_path).read_bytes()).not_valid_after_utc


def wait_until(moment: datetime) -> None:
    while datetime.now(UTC) < moment:
        time.sleep(0.05)


# --- certificates the CAS would not issue ---------------------------------------------------


@pytest.mark.parametrize(
    ("minted", "reason"),
    [
        ({"lifetime": timedelta(hours=24)}, "PEER_CERT_LIFETIME_EXCEEDED"),
        ({"measurement": "e" * 64}, "PEER_MEASUREMENT_NOT_ALLOWED"),
        ({"epoch": 99}, "PEER_EPOCH_UNKNOWN"),
    ],
)
def test_a_certificate_minted_with_the_mesh_ca_key_but_outside_policy_is_refused(
    world: World, minted: dict[str, Any], reason: str
) -> None:
    w = world
    cert, key = w.mesh.mint(f"minted-{reason}", "frontend", **minted)
    seen = w.echo.bytes_received
    marker = f"minted-{reason}".encode()
    out = s_client(w.port, "-tls1_3", "-cert", cert, "-key", key, data=marker + b"\n")
    (rec,) = records_of(w, cert)
    assert (rec["decision"], rec["reason"]) == ("deny", reason)
    assert rec["peer_identity"].endswith("/svc/frontend")
    assert marker not in out.encode() and w.echo.bytes_received == seen


def test_the_twin_a_certificate_as_the_cas_issues_it_gets_through(world: World) -> None:
    w = world
    cert, key = w.mesh.mint("conform", "frontend")
    out = s_client(w.port, "-tls1_3", "-cert", cert, "-key", key, data=b"conform-marker\n")
    assert "conform-marker" in out
    (rec,) = records_of(w, cert)
    assert (rec["decision"], rec["reason"]) == ("allow", "OK")


# --- TLS 1.2: resumption and cipher suites ---------------------------------------------------


def test_a_tls12_session_resumed_after_the_certificate_expired_is_refused(
    world: World, tmp_path: Path
) -> None:
    w = world
    # a genuine, policy-conform frontend certificate with 10 s left to live
    expires = datetime.now(UTC) + timedelta(seconds=10)
    cert, key = w.mesh.mint(
        "short", "frontend", lifetime=timedelta(minutes=1), now=expires - timedelta(minutes=1)
    )
    session = str(tmp_path / "tls12.session")
    common = ["-tls1_2", "-cert", cert, "-key", key]
    first = s_client(w.port, *common, "-sess_out", session, data=b"full-handshake\n")
    assert "full-handshake" in first and "New, TLSv1.2" in first
    # the twin: resumed while the certificate is valid, the session is allowed
    again = s_client(w.port, *common, "-sess_in", session, data=b"resumed-valid\n")
    assert "Reused, TLSv1.2" in again and "resumed-valid" in again
    assert datetime.now(UTC) < not_after(cert), "the machine was too slow for this test's window"
    recs = records_of(w, cert, 2)
    assert [(r["decision"], r["resumed"]) for r in recs] == [("allow", False), ("allow", True)]
    # after not_after the same session still resumes at the TLS level, and is refused
    wait_until(not_after(cert) + timedelta(seconds=0.5))
    seen = w.echo.bytes_received
    late = s_client(w.port, *common, "-sess_in", session, data=b"resumed-expired\n")
    assert "Reused, TLSv1.2" in late and "resumed-expired" not in late
    rec = records_of(w, cert, 3)[2]
    assert (rec["decision"], rec["reason"], rec["resumed"]) == ("deny", "PEER_CERT_EXPIRED", True)
    assert "resumed" in rec["detail"]
    assert w.echo.bytes_received == seen


def _no_shared_cipher(w: World) -> list[dict[str, Any]]:
    return [
        r
        for r in w.mesh.records("orders")
        if r["reason"] == "TLS_HANDSHAKE_FAILED" and "no cipher suite" in r["detail"]
    ]


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384"])
def test_tls12_refuses_cbc_suites(world: World, cipher: str) -> None:
    """Both suites are in OpenSSL's (and Python's) default list: ECDHE, but CBC with HMAC."""
    w = world
    cert, key = w.mesh.mint(f"cipher-{cipher}", "frontend")
    before = len(_no_shared_cipher(w))
    out = s_client(w.port, "-tls1_2", "-cipher", cipher, "-cert", cert, "-key", key, data=b"weak\n")
    assert "handshake failure" in out and "weak" not in out.split("---")[-1]
    deadline = time.monotonic() + 20
    while len(_no_shared_cipher(w)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    rec = _no_shared_cipher(w)[-1]
    assert rec["decision"] == "deny" and rec["tls_version"] is None


@pytest.mark.parametrize(
    "cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"]
)
def test_tls12_twin_ecdhe_with_aead_gets_through(world: World, cipher: str) -> None:
    w = world
    cert, key = w.mesh.mint(f"cipher-{cipher}", "frontend")
    out = s_client(
        w.port, "-tls1_2", "-cipher", cipher, "-cert", cert, "-key", key, data=b"aead-ok\n"
    )
    assert "aead-ok" in out
    (rec,) = records_of(w, cert)
    assert (rec["decision"], rec["cipher"], rec["tls_version"]) == ("allow", cipher, "TLSv1.2")


# --- live connections end with the peer's certificate ----------------------------------------


def test_a_live_connection_closes_when_the_peers_certificate_expires(world: World) -> None:
    w = world
    expires = datetime.now(UTC) + timedelta(seconds=6)
    short = w.mesh.mint(
        "live-short", "frontend", lifetime=timedelta(minutes=1), now=expires - timedelta(minutes=1)
    )
    long = w.mesh.mint("live-long", "frontend")
    with tls_client(w, *short) as doomed, tls_client(w, *long) as twin:
        assert echo_once(doomed, b"before-expiry") == b"before-expiry"
        assert echo_once(twin, b"twin-before") == b"twin-before"
        wait_until(not_after(short[0]))
        doomed.settimeout(20)
        with contextlib.suppress(OSError):
            assert doomed.recv(100) == b""  # closed by the sidecar (close_notify or reset)
        (rec,) = records_of(w, short[0])
        assert (rec["decision"], rec["close_reason"]) == ("allow", "PEER_CERT_EXPIRED")
        # the twin, whose certificate is valid, keeps its connection
        assert echo_once(twin, b"twin-after") == b"twin-after"
    (rec,) = records_of(w, long[0])
    assert rec["close_reason"] in ("CLOSED", "PEER_RESET")
    assert rec["bytes_in"] == len(b"twin-before") + len(b"twin-after")


# --- a TLS failure mid-stream ------------------------------------------------------------------


class Tamperer:
    """A TCP forwarder on loopback that, once armed for a direction, flips one bit (in a record's
    authentication tag) of the first chunk that direction carries after the other direction of
    the same connection has carried `after` bytes (so the handshake passes untouched)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = {"up": threading.Event(), "down": threading.Event()}
        self.after = {"up": 0, "down": 0}
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, way: str, *, after: int = 0) -> None:
        self.after[way] = after
        self.armed[way].set()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target, timeout=20)
                carried = {"up": 0, "down": 0}
                for src, dst, way in ((client, server, "up"), (server, client, "down")):
                    threading.Thread(
                        target=self._pump, args=(src, dst, way, carried), daemon=True
                    ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, way: str, carried: dict[str, int]
    ) -> None:
        other = "down" if way == "up" else "up"
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                if self.armed[way].is_set() and carried[other] >= self.after[way]:
                    self.armed[way].clear()
                    chunk = chunk[:-1] + bytes([chunk[-1] ^ 0x01])
                carried[way] += len(chunk)
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def _tampered_call(w: World, tamper: bool) -> dict[str, Any]:
    cert, key = w.mesh.mint(f"tamper-{tamper}", "frontend")
    ctx = ssl.create_default_context(cafile=str(w.mesh.ca_pem))
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    box = Tamperer(("127.0.0.1", w.port))
    try:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", box.port), timeout=20)) as tls:
            assert echo_once(tls, b"intact") == b"intact"
            if tamper:
                box.arm("up")
            with contextlib.suppress(OSError):
                tls.sendall(b"tampered-record")
                while tls.recv(100):
                    pass
    finally:
        box.close()
    (rec,) = records_of(w, cert)
    return rec


def test_a_record_tampered_with_mid_stream_closes_with_tls_stream_error(world: World) -> None:
    rec = _tampered_call(world, tamper=True)
    assert (rec["decision"], rec["close_reason"]) == ("allow", "TLS_STREAM_ERROR")
    assert "bad record mac" in rec["detail"] and "from the client" in rec["detail"]


def test_the_twin_an_untampered_stream_closes_cleanly(world: World) -> None:
    rec = _tampered_call(world, tamper=False)
    assert (rec["decision"], rec["close_reason"]) == ("allow", "CLOSED")
    assert "bad record mac" not in rec["detail"]


def test_a_tampered_answer_is_seen_by_the_calling_sidecar_too(world: World) -> None:
    """The outbound side: frontend's sidecar dials orders through the tamperer, which corrupts
    one record of orders' answer; frontend records TLS_STREAM_ERROR (the server's record)."""
    w = world
    box = Tamperer(("127.0.0.1", w.port))
    try:
        frontend = w.mesh.start_sidecar(
            "frontend",
            outbound=[
                {"service": "orders", "listen": "127.0.0.1:0", "address": f"127.0.0.1:{box.port}"}
            ],
        )
        assert roundtrip(frontend.addr("outbound:orders"), b"clean") == b"clean"
        # the client's handshake flight is a few KiB: past 16 KiB up, what comes down is data
        box.arm("down", after=16384)
        roundtrip(frontend.addr("outbound:orders"), b"x" * 65536)
        rec = w.mesh.wait_record(
            "frontend",
            lambda r: r["close_reason"] == "TLS_STREAM_ERROR" and r["direction"] == "outbound",
            timeout=20,
        )
        assert "from the server" in rec["detail"]
        if rec.get("tunnel_id") is not None:  # carried by a tunnel: the tunnel closed for it
            tunnel = w.mesh.wait_record("frontend", lambda r: r["direction"] == "tunnel")
            assert tunnel["close_reason"] == "TLS_STREAM_ERROR"
        clean = w.mesh.wait_record("frontend", lambda r: r["bytes_in"] == len(b"clean"))
        assert clean["close_reason"] == "CLOSED"
    finally:
        box.close()
