"""The kernel's TCP socket tables name the uid behind a loopback caller (parser pure, then real)."""

from __future__ import annotations

import os
import socket

from netshield.net.proctcp import SocketEntry, find_owner, owner_of, parse_table

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1
   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1001        0 2222 1
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3333 1
   3: garbage
"""
_HEAD6 = (
    "  sl  local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode"
)
_V6_LOOP = "00000000000000000000000001000000"  # ::1, word by word in host byte order
_V6_MAPPED = "0000000000000000FFFF00000100007F"  # ::ffff:127.0.0.1
_REST = "01 00000000:00000000 00:00000000 00000000"
TCP6 = f"""{_HEAD6}
   0: {_V6_LOOP}:A2C4 {_V6_LOOP}:1F90 {_REST}  1002        0 4444 1
   1: {_V6_MAPPED}:B000 {_V6_MAPPED}:1F90 {_REST}  1003        0 5555 1
"""


def test_the_callers_socket_is_the_one_whose_local_end_is_the_caller() -> None:
    entries = parse_table(TCP)
    assert len(entries) == 3  # the garbage row is skipped
    found = find_owner(entries, ("127.0.0.1", 0xD431), ("127.0.0.1", 8080))
    assert found is not None and (found.uid, found.inode) == (1001, 2222)
    # the twin: our own accepted socket (local == listener) is not taken for the caller's
    assert find_owner(entries, ("127.0.0.1", 8080), ("127.0.0.1", 0xD431)) == SocketEntry(
        entries[2].local, entries[2].remote, 0, 3333
    )
    assert find_owner(entries, ("127.0.0.1", 1), ("127.0.0.1", 8080)) is None


def test_ipv6_and_ipv4_mapped_callers_are_found() -> None:
    entries = parse_table(TCP6)
    found = find_owner(entries, ("::1", 0xA2C4), ("::1", 8080))
    assert found is not None and found.uid == 1002
    mapped = find_owner(entries, ("127.0.0.1", 0xB000), ("127.0.0.1", 8080))
    assert mapped is not None and mapped.uid == 1003


def test_a_real_loopback_connection_is_owned_by_this_process_uid() -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as server:
            server.bind((host, 0))
            server.listen()
            with socket.create_connection((host, server.getsockname()[1])) as client:
                conn, peer = server.accept()
                with conn:
                    found = owner_of(peer[:2], conn.getsockname()[:2])
                    assert found is not None and found.uid == os.getuid()
                    assert os.fstat(client.fileno()).st_ino == found.inode
