"""The integration point: the shield's hooks on `socket.socket`, where every Python networking
library ends (blocking sockets, http.client and urllib, requests/urllib3, asyncio streams and
protocols, aiohttp client and server, socketserver and http.server).

`SocketHooks.install(shield)` replaces, on the `socket.socket` class itself, the methods through
which a TCP or UDP socket meets the network (`connect`, `connect_ex`, `listen`, `accept`,
`sendto`, `sendmsg`), the ones through which a program learns about a socket (`getpeername`,
`getsockname`, `getsockopt`, `setsockopt`, `dup`), and `socket.getaddrinfo` (for the mesh
service names of the config). Patching the class reaches sockets made before and after, by any
import style; only the process-wide hook itself is global state, owned by the one `SocketHooks`.

What a shielded socket is: the program's file descriptor is re-pointed (`dup2`) at one end of an
in-process `socketpair`; the shield's own thread holds the other end and the real TCP socket,
and speaks mutual TLS on it. The program keeps its socket object, its fd number, its blocking
mode and timeout; `getpeername`/`getsockname` report the real TCP addresses, TCP-level options go
to the real socket. A listening socket's fd becomes a SOCK_SEQPACKET pair end on which the
shield passes (SCM_RIGHTS) one connected pair end per authorized caller, so `select`/`epoll`
readiness and `accept` keep their meaning. No plaintext leaves the process: the pair has no name
and no address anyone could connect to.

Guarantees: a socket of another family (AF_UNIX, ...) and the shield's own thread are never
touched; a refusal is an `OSError` subclass carrying the reason code (`refusals`); `uninstall`
restores the original methods. Per-socket state is keyed by fd and checked against the
socket's inode, so a reused fd number never inherits another socket's state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

INET = frozenset({socket.AF_INET, socket.AF_INET6})
# SOL_SOCKET options that describe the TCP connection, not the in-process pair end
_FORWARDED_SOCKET_OPTIONS = frozenset(
    {socket.SO_KEEPALIVE, socket.SO_LINGER, socket.SO_PRIORITY, socket.SO_RCVBUF, socket.SO_SNDBUF}
)

Address = tuple[Any, ...]
_MARK = "_netshield_hooks"  # set on socket.socket while hooks are installed (one shield a process)


@dataclass
class Shielded:
    """What the shield knows about one of the program's shielded sockets."""

    inode: int
    peer: Address | None = None  # None: a listener, or a connect still in progress
    local: Address | None = None
    real: socket.socket | None = None  # the real TCP socket (for options and addresses)
    listener: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    error: OSError | None = None  # a failed connect: raised from connect/getsockopt(SO_ERROR)


class Shield(Protocol):
    """What the hooks ask of the shield (implemented by `netshield.shield.engine`)."""

    def exempt(self) -> bool:
        """True on the shield's own thread (its sockets are its own business)."""
        ...

    def connect(self, sock: socket.socket, address: Address) -> None:
        """Connect `sock` as the rules say; raises a refusal, BlockingIOError (non-blocking and
        in progress) or nothing (connected)."""
        ...

    def listen(self, sock: socket.socket, backlog: int) -> bool:
        """Shield a socket about to listen; False: listen in plaintext (unprotected)."""
        ...

    def accept(self, sock: socket.socket, entry: Shielded) -> tuple[socket.socket, Address]:
        """The next authorized connection of a shielded listener."""
        ...

    def datagram(self, sock: socket.socket, address: Address) -> None:
        """Raise a refusal unless a UDP datagram to `address` may go out in plaintext."""
        ...

    def resolve(self, host: str, port: object) -> list[tuple[str, int]] | None:
        """The mesh addresses of a configured service name, or None (resolve as usual)."""
        ...


def _inode(fd: int) -> int:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return -1


class SocketHooks:
    """The patch of `socket.socket` and the per-fd state of shielded sockets."""

    def __init__(self) -> None:
        self._state: dict[int, Shielded] = {}
        self._lock = threading.Lock()
        self._orig: dict[str, Any] = {}
        self._orig_getaddrinfo: Callable[..., Any] | None = None
        self.shield: Shield | None = None

    # --- state -----------------------------------------------------------------------------
    def register(self, sock: socket.socket, entry: Shielded) -> None:
        with self._lock:
            self._state[sock.fileno()] = entry

    def lookup(self, sock: socket.socket) -> Shielded | None:
        fd = sock.fileno()
        if fd < 0:
            return None
        entry = self._state.get(fd)
        if entry is None:
            return None
        if entry.inode != _inode(fd):  # the fd number was reused by another socket
            with self._lock:
                if self._state.get(fd) is entry:
                    del self._state[fd]
            return None
        return entry

    def original(self, name: str) -> Callable[..., Any]:
        """The unpatched `socket.socket` method `name`."""
        return self._orig[name]  # type: ignore[no-any-return]

    def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        """The unpatched `socket.getaddrinfo`."""
        assert self._orig_getaddrinfo is not None
        return self._orig_getaddrinfo(*args, **kwargs)

    # --- install ---------------------------------------------------------------------------
    @property
    def installed(self) -> bool:
        return self.shield is not None

    def install(self, shield: Shield) -> None:
        cls = socket.socket
        if self.shield is not None or getattr(cls, _MARK, None) is not None:
            raise RuntimeError("the in-process shield already runs in this process")
        names = (
            "connect",
            "connect_ex",
            "listen",
            "accept",
            "sendto",
            "sendmsg",
            "getpeername",
            "getsockname",
            "getsockopt",
            "setsockopt",
            "dup",
        )
        self._orig = {name: getattr(cls, name) for name in names}
        self._orig_getaddrinfo = socket.getaddrinfo
        self.shield = shield
        hooks = self
        orig = self._orig

        def skip(sock: socket.socket) -> Shield | None:
            current = hooks.shield
            if current is None or sock.family not in INET or current.exempt():
                return None
            return current

        def connect(sock: socket.socket, address: Address) -> None:
            shield = skip(sock)
            if shield is None:
                return orig["connect"](sock, address)  # type: ignore[no-any-return]
            if sock.type == socket.SOCK_DGRAM:
                shield.datagram(sock, address)
                return orig["connect"](sock, address)  # type: ignore[no-any-return]
            if sock.type != socket.SOCK_STREAM:
                return orig["connect"](sock, address)  # type: ignore[no-any-return]
            return shield.connect(sock, address)

        def connect_ex(sock: socket.socket, address: Address) -> int:
            try:
                connect(sock, address)
            except BlockingIOError:
                return errno.EINPROGRESS
            except OSError as err:
                return err.errno or -1
            return 0

        def listen(sock: socket.socket, *backlog: int) -> None:
            shield = skip(sock)
            if shield is None or sock.type != socket.SOCK_STREAM:
                return orig["listen"](sock, *backlog)  # type: ignore[no-any-return]
            if not shield.listen(sock, backlog[0] if backlog else 128):
                return orig["listen"](sock, *backlog)  # type: ignore[no-any-return]
            return None

        def accept(sock: socket.socket) -> tuple[socket.socket, Address]:
            entry = hooks.lookup(sock)
            if entry is None or not entry.listener or hooks.shield is None:
                return orig["accept"](sock)  # type: ignore[no-any-return]
            return hooks.shield.accept(sock, entry)

        def sendto(sock: socket.socket, data: Any, *args: Any) -> int:
            shield = skip(sock)
            if shield is not None and sock.type == socket.SOCK_DGRAM and args:
                shield.datagram(sock, args[-1])
            return orig["sendto"](sock, data, *args)  # type: ignore[no-any-return]

        def sendmsg(sock: socket.socket, buffers: Any, *args: Any) -> int:
            shield = skip(sock)
            dgram = shield is not None and sock.type == socket.SOCK_DGRAM
            if shield is not None and dgram and len(args) >= 3 and args[2] is not None:
                shield.datagram(sock, args[2])
            return orig["sendmsg"](sock, buffers, *args)  # type: ignore[no-any-return]

        def getpeername(sock: socket.socket) -> Address:
            entry = hooks.lookup(sock)
            if entry is None:
                return orig["getpeername"](sock)  # type: ignore[no-any-return]
            if entry.peer is None:
                raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
            return entry.peer

        def getsockname(sock: socket.socket) -> Address:
            entry = hooks.lookup(sock)
            if entry is None:
                return orig["getsockname"](sock)  # type: ignore[no-any-return]
            if entry.local is None and entry.real is not None:
                with contextlib.suppress(OSError):
                    return orig["getsockname"](entry.real)  # type: ignore[no-any-return]
            if entry.local is None:
                if sock.family == socket.AF_INET:
                    return ("0.0.0.0", 0)  # noqa: S104 -- reported, not bound
                return ("::", 0, 0, 0)
            return entry.local

        def getsockopt(sock: socket.socket, level: int, option: int, *args: Any) -> Any:
            entry = hooks.lookup(sock)
            if entry is None:
                return orig["getsockopt"](sock, level, option, *args)
            if level == socket.SOL_SOCKET and option == socket.SO_ERROR:
                if entry.error is not None:
                    raise entry.error
                return 0
            if entry.real is not None and (
                level != socket.SOL_SOCKET or option in _FORWARDED_SOCKET_OPTIONS
            ):
                with contextlib.suppress(OSError):
                    return orig["getsockopt"](entry.real, level, option, *args)
            return orig["getsockopt"](sock, level, option, *args)

        def setsockopt(sock: socket.socket, level: int, option: int, *args: Any) -> None:
            entry = hooks.lookup(sock)
            if entry is None:
                return orig["setsockopt"](sock, level, option, *args)  # type: ignore[no-any-return]
            if level != socket.SOL_SOCKET or option in _FORWARDED_SOCKET_OPTIONS:
                if entry.real is not None:  # TCP options belong to the real connection
                    with contextlib.suppress(OSError):
                        orig["setsockopt"](entry.real, level, option, *args)
                return None
            return orig["setsockopt"](sock, level, option, *args)  # type: ignore[no-any-return]

        def dup(sock: socket.socket) -> socket.socket:
            copy: socket.socket = orig["dup"](sock)
            entry = hooks.lookup(sock)
            if entry is not None:
                hooks.register(copy, entry)
            return copy

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            shield = hooks.shield
            if shield is not None and isinstance(host, str | bytes):
                name = host.decode("idna") if isinstance(host, bytes) else host
                mesh = shield.resolve(name, port)
                if mesh is not None:
                    out = []
                    for ip, mesh_port in mesh:
                        for info in hooks.getaddrinfo(ip, mesh_port, *args, **kwargs):
                            out.append(info)
                    return out
            return hooks.getaddrinfo(host, port, *args, **kwargs)

        patched = {
            "connect": connect,
            "connect_ex": connect_ex,
            "listen": listen,
            "accept": accept,
            "sendto": sendto,
            "sendmsg": sendmsg,
            "getpeername": getpeername,
            "getsockname": getsockname,
            "getsockopt": getsockopt,
            "setsockopt": setsockopt,
            "dup": dup,
        }
        for name, function in patched.items():
            function.__qualname__ = f"socket.{name}"
            function.__doc__ = f"{orig[name].__doc__ or ''}\n\n(netshield in-process shield)"
            setattr(cls, name, function)
        socket.getaddrinfo = getaddrinfo
        setattr(cls, _MARK, self)

    def uninstall(self) -> None:
        """Put the original methods back (idempotent)."""
        if self.shield is None:
            return
        for name, function in self._orig.items():
            setattr(socket.socket, name, function)
        if self._orig_getaddrinfo is not None:
            socket.getaddrinfo = self._orig_getaddrinfo
        with contextlib.suppress(AttributeError):
            delattr(socket.socket, _MARK)
        self.shield = None


__all__ = ["INET", "Address", "Shield", "Shielded", "SocketHooks"]
