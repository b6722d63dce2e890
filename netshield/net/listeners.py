"""Listening sockets and their accept loops.

A listener hands each accepted socket to a flow; the flow owns the socket from then on. Accept
errors (out of file descriptors, a connection reset before accept) are logged and survived.
Each wake-up accepts up to `ACCEPT_BATCH` queued connections, so that under a flood the kernel's
accept queue drains at the pace the flows can take, not at one connection per event-loop turn
(a legitimate caller queued behind a flood waits queue length / accept rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from netshield.errors import NetshieldError
from netshield.netaddr import HostPort

log = logging.getLogger("netshield.net")

OnAccept = Callable[[socket.socket], None]
BACKLOG = 1024
ACCEPT_BATCH = 32
"""Connections accepted per wake-up at most (well under limits.max_handshakes, so that one
batch cannot shed a legitimate handshake accepted at its start)."""


def bind_tcp(address: HostPort, *, what: str) -> socket.socket:
    """A non-blocking listening TCP socket; NetshieldError names the listener and the cause."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        sock = socket.create_server(
            (address.host, address.port), family=family, backlog=BACKLOG, reuse_port=False
        )
    except OSError as err:
        raise NetshieldError(f"{what} {address}: cannot listen ({err.strerror or err})") from None
    sock.setblocking(False)
    return sock


def bind_unix(
    path: Path,
    *,
    what: str,
    mode: int = 0o660,
    owner: int | None = None,
    group: int | None = None,
) -> socket.socket:
    """A non-blocking listening unix socket at `path` (a stale socket file is replaced), owned
    by `owner`:`group` (None: this process's) with permission bits `mode`, set before it listens
    (the kernel checks write permission on the file at connect)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_socket():
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        if owner is not None or group is not None:
            os.chown(path, -1 if owner is None else owner, -1 if group is None else group)
        os.chmod(path, mode)
        sock.listen(BACKLOG)
    except OSError as err:
        sock.close()
        raise NetshieldError(f"{what} unix:{path}: cannot listen ({err.strerror or err})") from None
    sock.setblocking(False)
    return sock


def bound_address(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, str):
        return f"unix:{name}"
    return str(HostPort(name[0], name[1]))


async def accept_loop(sock: socket.socket, on_accept: OnAccept) -> None:
    """Accept until cancelled; each accepted socket goes to `on_accept` (non-blocking)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, _addr = await loop.sock_accept(sock)
        except (ConnectionAbortedError, ConnectionResetError):
            continue
        except OSError as err:
            if _out_of_resources(sock, err):
                await asyncio.sleep(0.1)
                continue
            raise
        conn.setblocking(False)
        on_accept(conn)
        for _ in range(ACCEPT_BATCH - 1):  # drain what else is queued, without waiting
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except (ConnectionAbortedError, ConnectionResetError):
                continue
            except OSError as err:
                if _out_of_resources(sock, err):
                    break
                raise
            conn.setblocking(False)
            on_accept(conn)


def _out_of_resources(sock: socket.socket, err: OSError) -> bool:
    if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
        log.warning("accept on %s failed (%s); retrying", bound_address(sock), err.strerror)
        return True
    return False
