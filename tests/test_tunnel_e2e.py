"""Tunnels between real sidecar processes: connections as streams of one attested connection,
records on both sides that name the tunnel, interoperation with sidecars that do not tunnel
(both ways, and the per-outbound switch), a tunnel that is not authorized and streams that ask
for the wrong service, a cut and a restarted peer, GOAWAY on SIGTERM, `netshield logs
--by-tunnel`."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from netshield.tls.contexts import TUNNEL_ALPN
from tests.mesh_support import EchoServer, Mesh, Proc, make_mesh, roundtrip
from tests.support import netshield_cmd

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


def orders(
    mesh: Mesh, echo: EchoServer, *, tunnels: bool = True, listen: str = "127.0.0.1:0"
) -> Proc:
    return mesh.start_sidecar(
        "orders",
        inbound={"listen": listen, "upstream": f"127.0.0.1:{echo.port}"},
        tunnels={"enabled": tunnels},
    )


def frontend(mesh: Mesh, target: Proc | str, *, tunnels: bool = True, tunnel: bool = True) -> Proc:
    address = target if isinstance(target, str) else ":".join(map(str, target.addr("inbound")))
    return mesh.start_sidecar(
        "frontend",
        outbound=[
            {"service": "orders", "listen": "127.0.0.1:0", "address": address, "tunnel": tunnel}
        ],
        tunnels={"enabled": tunnels},
    )


def streams(mesh: Mesh, service: str, direction: str) -> list[dict[str, Any]]:
    return [r for r in mesh.records(service) if r["direction"] == direction]


def wait_count(mesh: Mesh, service: str, direction: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15  # hang guard
    while time.monotonic() < deadline and len(streams(mesh, service, direction)) < n:
        time.sleep(0.05)
    return streams(mesh, service, direction)


def test_connections_are_streams_of_one_tunnel_and_both_sidecars_name_it(
    mesh: Mesh, echo: EchoServer
) -> None:
    inbound = orders(mesh, echo)
    caller = frontend(mesh, inbound)
    for i in range(3):
        assert roundtrip(caller.addr("outbound:orders"), b"call %d" % i) == b"call %d" % i
    out = wait_count(mesh, "frontend", "outbound", 3)
    into = wait_count(mesh, "orders", "inbound", 3)
    assert len({r["tunnel_id"] for r in out + into}) == 1  # one tunnel, the same id on both
    assert sorted(r["stream_id"] for r in out) == sorted(r["stream_id"] for r in into) == [1, 3, 5]
    assert {(r["decision"], r["reason"], r["close_reason"]) for r in out + into} == {
        ("allow", "OK", "CLOSED")
    }
    assert {r["peer_identity"].rsplit("/", 1)[1] for r in out} == {"orders"}
    assert {r["peer_identity"].rsplit("/", 1)[1] for r in into} == {"frontend"}
    assert all(r["bytes_in"] == r["bytes_out"] == 6 for r in out + into)
    # SIGTERM: the caller's sidecar drains its tunnel (GOAWAY) and both sides record it
    assert caller.stop() == 0
    (mine,) = wait_count(mesh, "frontend", "tunnel", 1)
    (theirs,) = wait_count(mesh, "orders", "tunnel", 1)
    assert mine["conn_id"] == theirs["conn_id"] == out[0]["tunnel_id"]
    assert mine["streams"] == theirs["streams"] == 3
    assert mine["close_reason"] == theirs["close_reason"] == "DRAINED"
    assert mine["bytes_in"] == theirs["bytes_out"] > 18  # the frames both ways, framing included
    # `netshield logs --by-tunnel` lists the streams under their tunnel
    shown = subprocess.run(
        netshield_cmd(
            "logs", "--by-tunnel", "--color", "never", str(mesh.root / "orders.records.jsonl")
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    assert shown[1].split()[2] == theirs["conn_id"] and " tun " in shown[1]
    assert [line.split()[3] for line in shown[2:5]] == [r["conn_id"] for r in into]
    assert all(line.startswith("  └ ") for line in shown[2:5])
    # `--tunnel ID` selects the tunnel and its streams
    chosen = subprocess.run(
        netshield_cmd(
            "logs", "--json", "--tunnel", theirs["conn_id"], str(mesh.root / "orders.records.jsonl")
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    assert len(chosen) == 4


@pytest.mark.parametrize(
    ("server_tunnels", "client_tunnels", "outbound_switch"),
    [(False, True, True), (True, False, True), (True, True, False)],
    ids=["server-without-tunnels", "client-without-tunnels", "outbound-tunnel-false"],
)
def test_without_tunnels_on_either_side_each_connection_is_its_own_mtls_connection(
    mesh: Mesh, echo: EchoServer, server_tunnels: bool, client_tunnels: bool, outbound_switch: bool
) -> None:
    inbound = orders(mesh, echo, tunnels=server_tunnels)
    caller = frontend(mesh, inbound, tunnels=client_tunnels, tunnel=outbound_switch)
    for i in range(3):
        assert roundtrip(caller.addr("outbound:orders"), b"old %d" % i) == b"old %d" % i
    out = wait_count(mesh, "frontend", "outbound", 3)
    into = wait_count(mesh, "orders", "inbound", 3)
    assert [r.get("tunnel_id") for r in out + into] == [None] * 6  # no tunnel fields at all
    assert {(r["decision"], r["close_reason"]) for r in out + into} == {("allow", "CLOSED")}
    # today's path, tickets and resumption included; a client that offered a tunnel first
    # resumes from its second connection to a sidecar without tunnels on
    first_resumed = 2 if not server_tunnels and client_tunnels and outbound_switch else 1
    assert [r["resumed"] for r in into] == [i >= first_resumed for i in range(3)]
    caller.stop()
    inbound.stop()
    assert streams(mesh, "frontend", "tunnel") == streams(mesh, "orders", "tunnel") == []


def _tunnel_client(
    mesh: Mesh, service: str, port: int
) -> tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    """A hand-made tunnel client holding a certificate the CAS would issue to `service`."""
    cert, key = mesh.mint(f"{service}-h2", service)
    ctx = ssl.create_default_context(cafile=str(mesh.ca_pem))
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols([TUNNEL_ALPN])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    assert sock.selected_alpn_protocol() == TUNNEL_ALPN
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _answer(sock: ssl.SSLSocket, conn: h2.connection.H2Connection) -> list[h2.events.Event]:
    events: list[h2.events.Event] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        events += conn.receive_data(data)
        sock.sendall(conn.data_to_send())
        if any(
            isinstance(e, (h2.events.ResponseReceived, h2.events.ConnectionTerminated))
            for e in events
        ):
            break
    return events


def test_a_tunnel_from_a_caller_not_allowed_is_refused_and_streams_for_another_service_too(
    mesh: Mesh, echo: EchoServer
) -> None:
    inbound = orders(mesh, echo)
    _h, port = inbound.addr("inbound")
    # frontend may call orders, but a stream asking for another service is refused (404)
    sock, conn = _tunnel_client(mesh, "frontend", port)
    conn.send_headers(1, [(":method", "CONNECT"), (":authority", "payments")])
    sock.sendall(conn.data_to_send())
    response = next(e for e in _answer(sock, conn) if isinstance(e, h2.events.ResponseReceived))
    assert dict(response.headers)[b":status"] == b"404"
    assert dict(response.headers)[b"netshield-reason"] == b"DESTINATION_UNKNOWN"
    # ... and the same tunnel still serves a stream that asks for orders
    conn.send_headers(3, [(":method", "CONNECT"), (":authority", "orders")])
    conn.send_data(3, b"ping", end_stream=True)
    sock.sendall(conn.data_to_send())
    response = next(e for e in _answer(sock, conn) if isinstance(e, h2.events.ResponseReceived))
    assert dict(response.headers)[b":status"] == b"200"
    sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not echo.received:
        time.sleep(0.05)
    denied = mesh.wait_record("orders", lambda r: r["reason"] == "DESTINATION_UNKNOWN")
    assert denied["decision"] == "deny" and denied["stream_id"] == 1 and denied["tunnel_id"]
    assert echo.received == [b"ping"]
    # intruder is not in orders' allowed_callers: its tunnel is refused as a whole
    sock, conn = _tunnel_client(mesh, "intruder", port)
    conn.send_headers(1, [(":method", "CONNECT"), (":authority", "orders")])
    conn.send_data(1, b"let me in", end_stream=True)
    with contextlib.suppress(OSError):
        sock.sendall(conn.data_to_send())
        _answer(sock, conn)
    sock.close()
    refused = mesh.wait_record("orders", lambda r: r["reason"] == "PEER_NOT_AUTHORIZED")
    assert refused["direction"] == "tunnel" and refused["decision"] == "deny"
    assert echo.received == [b"ping"]  # not a byte of the intruder's got through


def test_a_cut_tunnel_says_how_far_each_stream_got_and_a_restarted_peer_gets_a_new_tunnel(
    mesh: Mesh, echo: EchoServer
) -> None:
    with socket.socket() as probe:  # a fixed port, so the restarted sidecar is found again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbound = orders(mesh, echo, listen=f"127.0.0.1:{port}")
    caller = frontend(mesh, f"127.0.0.1:{port}")
    assert roundtrip(caller.addr("outbound:orders"), b"first") == b"first"
    live = socket.create_connection(caller.addr("outbound:orders"), timeout=10)
    live.sendall(b"x" * 5000)
    got = b""
    while len(got) < 5000:
        got += live.recv(65536)
    inbound.stop(signal.SIGKILL)  # the tunnel's TCP connection goes with the process
    live.settimeout(10)
    with contextlib.suppress(OSError):
        assert live.recv(100) == b""
    live.close()
    cut = mesh.wait_record(
        "frontend", lambda r: r["direction"] == "outbound" and r["bytes_in"] == 5000
    )
    assert cut["close_reason"] == "UPSTREAM_RESET" and cut["bytes_out"] == 5000
    assert "tunnel" in cut["detail"]
    (tunnel,) = wait_count(mesh, "frontend", "tunnel", 1)
    assert tunnel["close_reason"] == "PEER_RESET" and tunnel["streams"] == 2
    orders(mesh, echo, listen=f"127.0.0.1:{port}")  # the peer's sidecar comes back
    assert roundtrip(caller.addr("outbound:orders"), b"again!") == b"again!"
    later = mesh.wait_record(
        "frontend", lambda r: r["direction"] == "outbound" and r["bytes_in"] == 6
    )
    assert later["tunnel_id"] not in (None, cut["tunnel_id"])


def test_sigterm_at_the_destination_drains_its_tunnels_with_goaway(
    mesh: Mesh, echo: EchoServer
) -> None:
    inbound = orders(mesh, echo)
    caller = frontend(mesh, inbound)
    live = socket.create_connection(caller.addr("outbound:orders"), timeout=10)
    live.sendall(b"before")
    assert live.recv(100) == b"before"
    inbound.popen.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # the destination sent GOAWAY; its listener is closed
    live.sendall(b"during")  # the open stream goes on
    assert live.recv(100) == b"during"
    # a new connection finds no new tunnel (the destination accepts none): refused, recorded
    assert roundtrip(caller.addr("outbound:orders"), b"new") == b""
    refused = mesh.wait_record(
        "frontend", lambda r: r["bytes_in"] == 0 and r["direction"] == "outbound"
    )
    assert refused["close_reason"] == "UPSTREAM_UNREACHABLE"  # as without tunnels
    live.shutdown(socket.SHUT_WR)
    assert live.recv(100) == b""
    live.close()
    assert inbound.popen.wait(timeout=30) == 0
    (tunnel,) = wait_count(mesh, "orders", "tunnel", 1)
    assert tunnel["close_reason"] == "DRAINED" and tunnel["streams"] == 1
    stream = mesh.wait_record("orders", lambda r: r["direction"] == "inbound")
    assert stream["close_reason"] == "CLOSED" and stream["bytes_in"] == 12


def test_stream_and_tunnel_limits_and_the_tunnel_lifetime(mesh: Mesh, echo: EchoServer) -> None:
    inbound = mesh.start_sidecar(
        "orders",
        inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"},
        tunnels={"max_streams": 1},
    )
    caller = mesh.start_sidecar(
        "frontend",
        outbound=[
            {
                "service": "orders",
                "listen": "127.0.0.1:0",
                "address": ":".join(map(str, inbound.addr("inbound"))),
            }
        ],
        tunnels={"max_streams": 1, "max_per_peer": 1, "max_lifetime": "2s"},
    )
    live = socket.create_connection(caller.addr("outbound:orders"), timeout=10)
    live.sendall(b"one")
    assert live.recv(10) == b"one"
    # orders allows one stream per tunnel and frontend one tunnel per peer: the next is refused
    assert roundtrip(caller.addr("outbound:orders"), b"two") == b""
    full = mesh.wait_record("frontend", lambda r: r["reason"] == "TUNNEL_LIMIT")
    assert full["decision"] == "deny" and "tunnels.max_per_peer 1" in full["detail"]
    live.close()
    # past its lifetime the tunnel drains; the next connection opens a new one
    (old,) = wait_count(mesh, "frontend", "tunnel", 1)
    assert old["close_reason"] == "TUNNEL_LIFETIME" and old["streams"] == 1
    assert roundtrip(caller.addr("outbound:orders"), b"three") == b"three"
    fresh = mesh.wait_record(
        "frontend", lambda r: r["bytes_in"] == 5 and r["direction"] == "outbound"
    )
    assert fresh["tunnel_id"] not in (None, old["conn_id"])


def test_a_tunnel_peer_that_refuses_without_a_reason_is_recorded_as_stream_refused(
    mesh: Mesh,
) -> None:
    """Another tunnel peer (not netshield) holding an orders certificate answers 503 to every
    stream, without a reason header."""
    cert, key = mesh.mint("orders-other", "orders")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(str(mesh.ca_pem))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([TUNNEL_ALPN])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            raw, _ = listener.accept()
            with ctx.wrap_socket(raw, server_side=True) as sock:
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
                conn.initiate_connection()
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            conn.send_headers(
                                event.stream_id, [(":status", "503")], end_stream=True
                            )
                    sock.sendall(conn.data_to_send())

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    caller = frontend(mesh, f"127.0.0.1:{port}")
    assert roundtrip(caller.addr("outbound:orders"), b"hello") == b""
    rec = mesh.wait_record("frontend", lambda r: r["direction"] == "outbound")
    assert rec["decision"] == "deny" and rec["reason"] == "STREAM_REFUSED"
    assert "503 without a reason" in rec["detail"] and rec["tunnel_id"]
    caller.stop()
    listener.close()
