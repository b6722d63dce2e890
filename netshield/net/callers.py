"""Who is calling a local (plaintext) listener: address, and for unix sockets the peer's uid.

Outbound listeners accept local callers only: a TCP caller must come from a loopback address, a
unix-socket caller's uid (from SO_PEERCRED, which the kernel fills in, so it cannot be forged)
must be in the listener's allowlist when one is configured.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

_UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True, slots=True)
class Caller:
    address: str  # "127.0.0.1:50312", or the unix socket path
    uid: int | None = None
    pid: int | None = None
    loopback: bool = False
    unix: bool = False


def caller_of(sock: socket.socket | Any) -> Caller:
    """Describe the peer of an accepted socket (TCP or unix)."""
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
    return Caller(address=shown, loopback=loop)


def local_caller_problem(caller: Caller, *, allowed_uids: Collection[int] | None) -> str | None:
    """Why `caller` may not use a local listener, or None if it may."""
    if caller.unix:
        if allowed_uids and (caller.uid is None or caller.uid not in allowed_uids):
            allowed = sorted(allowed_uids)
            return f"unix socket caller uid {caller.uid} (pid {caller.pid}) is not in allowed_uids {allowed}"
        return None
    if not caller.loopback:
        return f"caller {caller.address} is not on loopback; outbound listeners serve local callers only"
    return None
