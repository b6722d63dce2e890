"""Session resumption between real sidecar processes: the record says `resumed`; resumption off
means full handshakes; a revoked peer's ticket is not used again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mesh_support import EchoServer, Mesh, Proc, http_get, make_mesh, roundtrip

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


def pair(mesh: Mesh, echo: EchoServer, *, resumption: bool) -> tuple[Proc, Proc]:
    """Two sidecars that make one mTLS connection per connection (tunnels off: a tunnel's
    streams have no handshake of their own to resume)."""
    tls = {"resumption": resumption}
    orders = mesh.start_sidecar(
        "orders",
        inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"},
        tls=tls,
        tunnels={"enabled": False},
    )
    host, port = orders.addr("inbound")
    frontend = mesh.start_sidecar(
        "frontend",
        outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": f"{host}:{port}"}],
        tls=tls,
        tunnels={"enabled": False},
    )
    return orders, frontend


def calls(mesh: Mesh, frontend: Proc, count: int, tag: str) -> list[dict[str, Any]]:
    """`count` calls in a row, each after both sidecars recorded the last; the inbound records."""

    def allowed(service: str) -> list[dict[str, Any]]:
        return [r for r in mesh.records(service) if r["decision"] == "allow"]

    base, base_out = len(allowed("orders")), len(allowed("frontend"))
    for i in range(count):
        payload = f"{tag}-{i}".encode()
        assert roundtrip(frontend.addr("outbound:orders"), payload) == payload
        deadline = time.monotonic() + 10  # hang guard
        while time.monotonic() < deadline and (
            len(allowed("orders")) < base + i + 1 or len(allowed("frontend")) < base_out + i + 1
        ):
            time.sleep(0.02)
    return allowed("orders")[base:]


def test_the_second_connection_resumes_and_both_records_say_so(
    mesh: Mesh, echo: EchoServer
) -> None:
    _orders, frontend = pair(mesh, echo, resumption=True)
    inbound = calls(mesh, frontend, 3, "r")
    assert [r["resumed"] for r in inbound] == [False, True, True]
    outbound = [r for r in mesh.records("frontend") if r["direction"] == "outbound"]
    assert [r["resumed"] for r in outbound] == [False, True, True]
    assert {r["peer_identity"] for r in outbound} == {outbound[0]["peer_identity"]}
    assert {r["peer_serial"] for r in inbound} == {inbound[0]["peer_serial"]}


def test_with_resumption_off_every_connection_is_a_full_handshake(
    mesh: Mesh, echo: EchoServer
) -> None:
    _orders, frontend = pair(mesh, echo, resumption=False)
    inbound = calls(mesh, frontend, 3, "f")
    assert [r["resumed"] for r in inbound] == [False, False, False]


def test_after_the_server_is_revoked_its_ticket_is_not_used_again(
    mesh: Mesh, echo: EchoServer
) -> None:
    orders, frontend = pair(mesh, echo, resumption=True)
    before = calls(mesh, frontend, 2, "b")
    assert [r["resumed"] for r in before] == [False, True]
    admin = f"http://{':'.join(map(str, orders.addr('admin')))}/identity"
    status, ident = http_get(admin)
    assert status == 200 and isinstance(ident, dict)
    mesh.cas_admin("revoke", "--serial", ident["serial"])
    deadline = time.monotonic() + 20  # hang guard: orders re-attests with a new key
    while time.monotonic() < deadline:
        status, fresh = http_get(admin)
        if status == 200 and isinstance(fresh, dict) and fresh["serial"] != ident["serial"]:
            break
        time.sleep(0.1)
    after = calls(mesh, frontend, 2, "after")
    out = [r for r in mesh.records("frontend") if r["direction"] == "outbound"][-2:]
    assert [r["resumed"] for r in after] == [False, True]
    assert all(r["peer_serial"] != ident["serial"] for r in out)
