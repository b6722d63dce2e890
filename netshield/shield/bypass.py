"""TCP sockets of the process that did not come from Python's `socket` module: connections a C
extension (or ctypes, or a library loaded later) opened past the in-process shield.

Responsibility: every Python socket object announces itself (the "socket.__new__" audit event,
raised for every socket object, accepted and `fromfd` ones included); `find_bypasses` compares
the process's open TCP sockets (`/proc/self/fd` and `/proc/self/net/tcp{,6}`) with the sockets
of those objects and returns the ones no Python object holds. The engine scans every
`SCAN_SECONDS`, logs each one with its addresses (reason EXTENSION_SOCKETS), writes a deny
record and shuts it down (`c_extensions: refuse`), or only logs it (`allow`).

Guarantees and limits: the parsing is pure and tested on /proc's text; a scan reads /proc/net
only when some socket of the process is unaccounted for. It is detection after the fact: what
such a connection sent before the scan has left the process (the import-time refusal of known
extensions, `netshield.shield.extensions`, keeps those from loading at all). A socket a parent
passed in and no Python object wraps counts as a bypass too.
"""

from __future__ import annotations

import os
import socket
import weakref
from dataclasses import dataclass
from pathlib import Path

SCAN_SECONDS = 1.0
_STATES = {"01": "established", "02": "syn-sent", "0A": "listen"}


@dataclass(frozen=True, slots=True)
class Bypass:
    fd: int
    inode: int
    local: str
    remote: str
    state: str  # established, syn-sent or listen

    def __str__(self) -> str:
        if self.state == "listen":
            return f"a listening TCP socket on {self.local} (fd {self.fd})"
        return f"a TCP connection {self.local} -> {self.remote} (fd {self.fd}, {self.state})"


def _address(hex_addr: str) -> str:
    """``0100007F:1F90`` (or a 32-digit IPv6 one) as ``127.0.0.1:8080``."""
    host_hex, _, port_hex = hex_addr.partition(":")
    port = int(port_hex, 16)
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, raw[::-1])}:{port}"
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return f"[{socket.inet_ntop(socket.AF_INET6, words)}]:{port}"


def parse_net_tcp(text: str) -> dict[int, tuple[str, str, str]]:
    """inode -> (local, remote, state) of the live (established, connecting, listening)
    sockets in a /proc/net/tcp or tcp6 table."""
    found: dict[int, tuple[str, str, str]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] not in _STATES:
            continue
        try:
            inode = int(fields[9])
            found[inode] = (_address(fields[1]), _address(fields[2]), _STATES[fields[3]])
        except ValueError:
            continue
    return found


class SocketRegistry:
    """The Python socket objects alive in the process (fed by the audit hook)."""

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def add(self, sock: object) -> None:
        if isinstance(sock, socket.socket):
            self._sockets.add(sock)

    def inodes(self) -> set[int]:
        inodes = set()
        for sock in list(self._sockets):
            fd = sock.fileno()
            if fd < 0:
                continue
            try:
                inodes.add(os.fstat(fd).st_ino)
            except OSError:
                continue
        return inodes


def socket_fds(proc: Path = Path("/proc/self")) -> dict[int, int]:
    """fd -> socket inode of the process's open sockets."""
    found = {}
    for entry in os.listdir(proc / "fd"):
        try:
            target = os.readlink(proc / "fd" / entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            found[int(entry)] = int(target[8:-1])
    return found


def find_bypasses(
    registry: SocketRegistry, *, known: set[int] | None = None, proc: Path = Path("/proc/self")
) -> list[Bypass]:
    """TCP sockets of the process that no Python socket object holds."""
    accounted = registry.inodes() | (known or set())
    unknown = {fd: inode for fd, inode in socket_fds(proc).items() if inode not in accounted}
    if not unknown:
        return []
    tables: dict[int, tuple[str, str, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            tables.update(parse_net_tcp((proc / "net" / name).read_text()))
        except OSError:
            continue
    return [
        Bypass(fd, inode, *tables[inode])
        for fd, inode in sorted(unknown.items())
        if inode in tables
    ]


def cut(bypass: Bypass) -> bool:
    """Shut the socket down (both ways) without closing the extension's fd; False if it went."""
    try:
        dup = socket.socket(fileno=os.dup(bypass.fd))
    except OSError:
        return False
    try:
        if os.fstat(dup.fileno()).st_ino != bypass.inode:
            return False
        dup.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        dup.close()


__all__ = [
    "SCAN_SECONDS",
    "Bypass",
    "SocketRegistry",
    "cut",
    "find_bypasses",
    "parse_net_tcp",
    "socket_fds",
]
