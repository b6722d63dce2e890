"""Finding TCP sockets no Python socket object holds (netshield.shield.bypass), on real sockets."""

from __future__ import annotations

import ctypes
import socket

from netshield.shield.bypass import SocketRegistry, cut, find_bypasses, parse_net_tcp

TABLE = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1
   2: 0100007F:9C41 0100007F:1F90 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0 0 0 0 0
"""
TABLE6 = (
    "  sl  local_address remote_address st\n"
    "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 333 1 0\n"
)


def test_proc_net_tcp_tables_are_read_for_live_sockets_only() -> None:
    assert parse_net_tcp(TABLE) == {
        111: ("127.0.0.1:8080", "0.0.0.0:0", "listen"),
        222: ("127.0.0.1:40000", "127.0.0.1:8080", "established"),
    }
    assert parse_net_tcp(TABLE6) == {333: ("[::1]:8080", "[::]:0", "listen")}
    assert parse_net_tcp("header\ngarbage line\n") == {}


def test_a_socket_made_past_the_socket_module_is_found_and_can_be_cut() -> None:
    registry = SocketRegistry()
    server = socket.create_server(("127.0.0.1", 0))
    registry.add(server)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    port = server.getsockname()[1]
    addr = socket.inet_aton("127.0.0.1")
    raw = int(socket.AF_INET).to_bytes(2, "little") + port.to_bytes(2, "big") + addr + bytes(8)
    assert libc.connect(fd, raw, len(raw)) == 0
    accepted, _ = server.accept()
    registry.add(accepted)
    try:
        found = {b.fd: b for b in find_bypasses(registry)}  # (other tests' sockets may be open)
        assert fd in found and server.fileno() not in found and accepted.fileno() not in found
        mine = found[fd]
        assert mine.state == "established" and mine.remote == f"127.0.0.1:{port}"
        assert "TCP connection" in str(mine)
        assert fd not in {b.fd for b in find_bypasses(registry, known={mine.inode})}
        assert cut(mine)
        accepted.settimeout(5)
        assert accepted.recv(10) == b""  # the peer sees the connection end
    finally:
        libc.close(fd)
        accepted.close()
        server.close()
