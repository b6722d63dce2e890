"""File-descriptor plumbing of the in-process shield: re-pointing a program's socket at an
in-process pair end, holding a non-blocking connect "in progress", and passing accepted
connections to a program's listening socket.

- `graft(sock, other)`: `sock`'s fd number now refers to `other`'s socket (dup2, close-on-exec
  kept), in the blocking mode `sock`'s timeout implies; the program's socket object is unchanged.
- `Stall`: a pair end that the program sees as "connect in progress": its send buffer is shrunk
  to the kernel minimum and filled, so poll/epoll report it not writable until `release` (the
  buffer restored, which wakes the program's event loop); the relay side discards the filler
  (`discard_filler`) before the first real byte. A plain kernel behaviour of AF_UNIX stream
  sockets, checked at `stall` time: if the kernel still reports the end writable, `stall`
  returns None and the caller waits in `connect` instead.
- `pass_connection` / `receive_connection`: one connected pair end plus a JSON description per
  SOCK_SEQPACKET message (SCM_RIGHTS), so each `accept` takes exactly one connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
from dataclasses import dataclass
from typing import Any

_FILLER = b"\0" * 256
MAX_META = 4096


def graft(sock: socket.socket, other: socket.socket) -> None:
    """Make `sock`'s file descriptor refer to `other`'s socket; `other` stays open (the caller
    closes its own copy when done with it)."""
    fd = sock.fileno()
    os.dup2(other.fileno(), fd, inheritable=False)
    os.set_blocking(fd, sock.gettimeout() is None)


@dataclass
class Stall:
    """A pair end held "connecting": `filler` bytes sit in it, its send buffer at the minimum.
    `holds` is False if the kernel reports it writable all the same (then wait in `connect`)."""

    end: socket.socket
    filler: int
    sndbuf: int
    holds: bool

    def release(self) -> None:
        """Restore the send buffer (the program's poller sees it writable) and let go of it."""
        with contextlib.suppress(OSError):
            self.end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(self.sndbuf // 2, 4096))
        self.end.close()


def stall(end: socket.socket) -> Stall:
    """Hold `end` not writable (see the module docstring)."""
    sndbuf = end.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
    end.setblocking(False)
    filler = 0
    with contextlib.suppress(BlockingIOError):
        for _ in range(4096):
            filler += end.send(_FILLER)
    poller = select.poll()
    poller.register(end.fileno(), select.POLLOUT)
    return Stall(end, filler, sndbuf, holds=not poller.poll(0))


def discard_filler(relay: socket.socket, filler: int) -> None:
    """Read and drop the `filler` bytes a `Stall` put first into the stream (they are there
    already: they were written before the program could write anything)."""
    left = filler
    while left > 0:
        chunk = relay.recv(min(left, 65536), socket.MSG_WAITALL)
        if not chunk:
            return
        left -= len(chunk)


def pass_connection(
    channel: socket.socket, end: socket.socket | None, meta: dict[str, Any]
) -> None:
    """Send one connection (or, with `end` None, one refusal description) down `channel`;
    BlockingIOError when the program is not accepting fast enough."""
    data = json.dumps(meta, separators=(",", ":")).encode()
    socket.send_fds(channel, [data], [end.fileno()] if end is not None else [])


def receive_connection(channel: socket.socket) -> tuple[int | None, dict[str, Any] | None]:
    """The next (fd, description) from `channel`, honouring its timeout; (None, None) at EOF."""
    data, fds, _flags, _addr = socket.recv_fds(channel, MAX_META, 1)
    if not data and not fds:
        return None, None
    try:
        meta = json.loads(data)
    except ValueError:
        for fd in fds:
            os.close(fd)
        return None, None
    return (fds[0] if fds else None), meta


__all__ = [
    "MAX_META",
    "Stall",
    "discard_filler",
    "graft",
    "pass_connection",
    "receive_connection",
    "stall",
]
