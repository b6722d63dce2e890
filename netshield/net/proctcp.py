"""Which uid owns the other end of a loopback TCP connection, from `/proc/net/tcp` and `tcp6`.

Responsibility: a TCP listener on loopback learns its caller's address from `getpeername`, not
who the caller is. The kernel's socket tables (`/proc/net/tcp`, `/proc/net/tcp6`, per network
namespace) list every socket with its local and remote address, its owner's uid and its inode;
the caller's socket is the one whose local address is the caller's and whose remote address is
the listener's. `parse_table` and `find_owner` are pure (text in, value out); `owner_of` reads
the tables of this process's network namespace.

Guarantees: `parse_table` never raises on odd lines (they are skipped); `owner_of` returns None
when no socket matches (the caller already went away, or it is in another network namespace),
so a caller that cannot be identified is refused, never waved through.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class SocketEntry:
    """One row of a kernel TCP socket table."""

    local: tuple[IPAddress, int]
    remote: tuple[IPAddress, int]
    uid: int
    inode: int


def _address(text: str) -> tuple[IPAddress, int]:
    """``0100007F:1F90`` (IPv4) or 32 hex digits ``:port`` (IPv6), each 32-bit word in host
    (little-endian) byte order."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address: IPAddress
    if len(words) == 4:
        address = ipaddress.IPv4Address(words)
    elif len(words) == 16:
        address = ipaddress.IPv6Address(words)
    else:
        raise ValueError(f"not an address: {text!r}")
    return address, int(port, 16)


def parse_table(text: str) -> list[SocketEntry]:
    """The rows of one table (`/proc/net/tcp` or `tcp6` text); malformed rows are skipped."""
    entries = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            entries.append(
                SocketEntry(
                    _address(fields[1]), _address(fields[2]), int(fields[7]), int(fields[9])
                )
            )
        except ValueError:
            continue
    return entries


def _plain(address: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (a v4 caller of a dual-stack socket) as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def find_owner(
    entries: list[SocketEntry], caller: tuple[str, int], listener: tuple[str, int]
) -> SocketEntry | None:
    """The caller's own socket: local == `caller`, remote == `listener` (host, port)."""
    want_local = (_plain(ipaddress.ip_address(caller[0])), caller[1])
    want_remote = (_plain(ipaddress.ip_address(listener[0])), listener[1])
    for entry in entries:
        local = (_plain(entry.local[0]), entry.local[1])
        remote = (_plain(entry.remote[0]), entry.remote[1])
        if local == want_local and remote == want_remote:
            return entry
    return None


def owner_of(caller: tuple[str, int], listener: tuple[str, int]) -> SocketEntry | None:
    """The uid and inode of the socket that called `listener` from `caller`, in this network
    namespace; None if the kernel lists no such socket."""
    for table in TABLES:
        try:
            text = table.read_text()
        except OSError:
            continue
        found = find_owner(parse_table(text), caller, listener)
        if found is not None:
            return found
    return None
