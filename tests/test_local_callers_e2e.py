"""Outbound listeners know who calls them: real processes under other uids (root: setpriv).

A TCP loopback listener (IPv4 and IPv6) with `allowed_uids` looks the caller's socket up in the
kernel's socket tables and refuses every other uid (`CALLER_NOT_LOCAL`, nothing dialled); a unix
socket listener is created with the owner, group and mode its config names, so the kernel
refuses callers without write permission before the sidecar sees them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mesh_support import EchoServer, Mesh, Proc, make_mesh
from tests.netns_lab import ENV, as_user

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs callers under other uids)"),
]

APP, OTHER, GROUPMATE, GROUP = 1002, 1001, 1005, 1003

CLIENT = r"""
import json, socket, sys
target, payload = sys.argv[1], sys.argv[2].encode()
try:
    if target.startswith("/"):
        s = socket.socket(socket.AF_UNIX)
        s.connect(target)
    else:
        host, port = target.rsplit(":", 1)
        s = socket.create_connection((host.strip("[]"), int(port)), timeout=20)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    print(json.dumps({"echo": got.decode()}))
except OSError as err:
    print(json.dumps({"error": err.errno}))
"""


def call(uid: int, target: str, payload: str, *, gid: int | None = None) -> dict[str, object]:
    prefix = as_user(uid)
    if gid is not None:
        prefix = [f"--regid={gid}" if p.startswith("--regid=") else p for p in prefix]
    done = subprocess.run(
        [*prefix, sys.executable, "-c", CLIENT, target, payload],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
        check=True,
    )
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Proc, Path]]:
    mesh = make_mesh(tmp_path_factory.mktemp("callers"))
    echo = EchoServer()
    sockets = Path(tempfile.mkdtemp(prefix="ns-callers-"))
    sockets.chmod(0o755)  # other uids must reach the socket file
    try:
        mesh.start_cas()
        orders = mesh.start_sidecar(
            "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}
        )
        address = ":".join(map(str, orders.addr("inbound")))
        out = {"service": "orders", "address": address}
        frontend = mesh.start_sidecar(
            "frontend",
            outbound=[
                {**out, "listen": "127.0.0.1:0", "allowed_uids": [APP]},
                {**out, "listen": "[::1]:0", "allowed_uids": [APP]},
                {
                    **out,
                    "unix": str(sockets / "orders.sock"),
                    "unix_owner": APP,
                    "unix_group": GROUP,
                    "unix_mode": "0660",
                },
            ],
        )
        yield mesh, frontend, sockets
    finally:
        mesh.stop_all()
        echo.shutdown()
        echo.server_close()
        for item in sockets.iterdir():
            item.unlink()
        sockets.rmdir()


def listeners(frontend: Proc) -> list[str]:
    """The TCP outbound listeners' addresses (the unix one is named by its path)."""
    return [
        str(v)
        for k, v in frontend.ready["listen"].items()
        if k.startswith("outbound:orders") and not str(v).startswith("unix:")
    ]


@pytest.mark.parametrize("family", [4, 6])
def test_a_tcp_loopback_listener_refuses_a_uid_not_in_allowed_uids(
    world: tuple[Mesh, Proc, Path], family: int
) -> None:
    mesh, frontend, _ = world
    (target,) = [a for a in listeners(frontend) if a.startswith("[") == (family == 6)]
    refused = call(OTHER, target, f"as-1001-v{family}")
    assert refused in ({"echo": ""}, {"error": 104})  # nothing back: a close, or a reset
    rec = mesh.wait_record(
        "frontend", lambda r: r["reason"] == "CALLER_NOT_LOCAL" and "uid 1001" in r["detail"]
    )
    assert rec["decision"] == "deny" and "allowed_uids [1002]" in rec["detail"]
    # the twin: the service's own uid gets through to orders
    assert call(APP, target, f"as-1002-v{family}") == {"echo": f"as-1002-v{family}"}


def test_a_unix_listener_has_the_owner_group_and_mode_its_config_names(
    world: tuple[Mesh, Proc, Path],
) -> None:
    _mesh, _frontend, sockets = world
    path = sockets / "orders.sock"
    info = path.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (APP, GROUP, 0o660)
    assert call(APP, str(path), "owner") == {"echo": "owner"}
    assert call(GROUPMATE, str(path), "group", gid=GROUP) == {"echo": "group"}
    # the twin: neither owner nor in the group, the kernel refuses the connect (EACCES)
    assert call(OTHER, str(path), "stranger") == {"error": 13}
