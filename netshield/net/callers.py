"""Who is calling a local (plaintext) listener: its address and, when asked, its uid.

Outbound listeners accept local callers only: a TCP caller must come from a loopback address.
When the listener has `allowed_uids`, the caller's uid must be in it: for a unix socket the
kernel's SO_PEERCRED, for TCP on loopback the owner of the caller's own socket in the kernel's
socket tables (`/proc/net/tcp`, `tcp6`: the row whose local address is the caller's). Neither
can be forged by the caller; a caller whose uid cannot be found is refused.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from netshield.net.proctcp import owner_of

_UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True, slots=True)
class Caller:
    address: str  # "127.0.0.1:50312", or the unix socket path
    uid: int | None = None
    pid: int | None = None
    loopback: bool = False
    unix: bool = False
    inode: int | None = None  # TCP: the caller's socket inode, when its uid was looked up


def caller_of(sock: socket.socket | Any, *, want_uid: bool = False) -> Caller:
    """Describe the peer of an accepted socket (TCP or unix); `want_uid` looks up a loopback
    TCP caller's uid in the kernel's socket tables (unix sockets always carry it)."""
    if getattr(sock, "family", None) == socket.AF_UNIX:
        pid: int | None
        uid: int | None
        try:
            pid, uid, _gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
        except OSError:
            pid, uid = None, None
        name = sock.getsockname()
        return Caller(
            address=name if isinstance(name, str) and name else "unix",
            uid=uid,
            pid=pid,
            loopback=True,
            unix=True,
        )
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return Caller(address="unknown")
    try:
        ip = ipaddress.ip_address(host)
        loop = ip.is_loopback or (
            isinstance(ip, ipaddress.IPv6Address)
            and ip.ipv4_mapped is not None
            and ip.ipv4_mapped.is_loopback
        )
    except ValueError:
        loop = False
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not (want_uid and loop):
        return Caller(address=shown, loopback=loop)
    try:
        entry = owner_of((host, port), sock.getsockname()[:2])
    except (OSError, ValueError):
        entry = None
    return Caller(
        address=shown,
        loopback=loop,
        uid=entry.uid if entry else None,
        inode=entry.inode if entry else None,
    )


def local_caller_problem(caller: Caller, *, allowed_uids: Collection[int] | None) -> str | None:
    """Why `caller` may not use a local listener, or None if it may."""
    if not caller.unix and not caller.loopback:
        return f"caller {caller.address} is not on loopback; outbound listeners serve local callers only"
    if not allowed_uids or (caller.uid is not None and caller.uid in allowed_uids):
        return None
    allowed = sorted(allowed_uids)
    if caller.unix:
        return f"unix socket caller uid {caller.uid} (pid {caller.pid}) is not in allowed_uids {allowed}"
    if caller.uid is None:
        return (
            f"loopback caller {caller.address}: no socket of this network namespace's "
            f"/proc/net/tcp matches it, so its uid is unknown; allowed_uids {allowed}"
        )
    return (
        f"loopback caller {caller.address} is uid {caller.uid} (socket inode {caller.inode}), "
        f"not in allowed_uids {allowed}"
    )
