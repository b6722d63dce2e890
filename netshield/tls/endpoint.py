"""Sans-IO TLS: one connection's TLS state over `ssl.MemoryBIO`, bytes in and events out.

Responsibility: drive an `ssl.SSLObject` for a caller that owns the socket. The caller feeds the
ciphertext it read (`receive`, b"" for transport EOF), gets events back (`HandshakeComplete`,
`Plaintext`, `PeerClosedWrite`, `TlsFailed`), hands plaintext in (`send`), half-closes
(`close_write`: close_notify, reading continues) and after every call writes `outgoing()` to its
socket.
Guarantees:
- The events and plaintext do not depend on how the ciphertext is chunked (one byte at a time or
  all at once give the same plaintext, in order, and the same events).
- On a handshake failure `outgoing()` holds the alert OpenSSL prepared; the caller must send it
  before closing (asyncio's own TLS transport drops it, CPython gh-98078).
- A transport EOF after the handshake is a half-close (`PeerClosedWrite`), like close_notify: this
  side can still send. Nothing is accepted after a close or a failure; `TlsFailed` comes once.
- Plaintext is read into one reused buffer (no per-read large allocations); each `Plaintext`
  carries exactly the bytes read, coalesced over the records of one `receive` call.
`TlsStateError` is raised only for local misuse (sending before the handshake or after
`close_write`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from netshield.tls.failures import TlsFailure, translate
from netshield.tls.peer import PeerInfo, peer_info

_ReadInto = Callable[[int, memoryview], int]
"""SSLObject.read with a buffer: returns the byte count (typeshed says bytes)."""

READ_SIZE = 256 * 1024
"""Size of the plaintext read buffer: records are decrypted into it, then copied out once."""


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The handshake finished; `peer` is the verified peer."""

    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class Plaintext:
    """Application bytes from the peer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PeerClosedWrite:
    """The peer will send nothing more (close_notify or transport EOF after the handshake)."""


@dataclass(frozen=True, slots=True)
class TlsFailed:
    """The connection failed; send `outgoing()` (it may hold an alert), then close."""

    failure: TlsFailure


TlsEvent = HandshakeComplete | Plaintext | PeerClosedWrite | TlsFailed


class TlsStateError(RuntimeError):
    """The caller used the endpoint in a state that does not allow it (local misuse)."""


class TlsEndpoint:
    """The TLS state machine of one connection, without I/O."""

    def __init__(
        self,
        ctx: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        scratch: memoryview | None = None,
    ) -> None:
        """`scratch` is a writable byte buffer for decrypted records; it may be shared by all
        endpoints of one thread, since its content never outlives a `receive` call."""
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=None if server_side else server_hostname,
        )
        self._server_side = server_side
        self._scratch = scratch if scratch is not None else memoryview(bytearray(READ_SIZE))
        self._started = False
        self.handshake_done = False
        self.peer: PeerInfo | None = None
        self.failure: TlsFailure | None = None
        self.read_closed = False
        self.write_closed = False

    @property
    def server_side(self) -> bool:
        return self._server_side

    def start(self) -> list[TlsEvent]:
        """Begin the handshake: a client puts its ClientHello into `outgoing()`."""
        events: list[TlsEvent] = []
        if not self._started and self.failure is None:
            self._started = True
            if not self._server_side:
                self._handshake(events)
        return events

    def receive(self, data: bytes | bytearray | memoryview) -> list[TlsEvent]:
        """Feed ciphertext from the transport (b"" = EOF); returns what happened."""
        events: list[TlsEvent] = []
        if self.failure is not None or self.read_closed:
            return events
        self._started = True
        if data:
            self._incoming.write(data)
        elif self.handshake_done:
            # EOF after the handshake: a half-close. Not fed to OpenSSL, which would mark the
            # connection failed (unexpected EOF) and refuse our remaining writes.
            self.read_closed = True
            events.append(PeerClosedWrite())
            return events
        else:
            self._incoming.write_eof()
        if not self.handshake_done and not self._handshake(events):
            return events
        self._read(events)
        return events

    def send(self, plaintext: bytes | bytearray | memoryview) -> None:
        """Encrypt application bytes (consumed entirely before returning) into `outgoing()`."""
        if self.write_closed:
            raise TlsStateError("cannot send after close_write()")
        if not self.handshake_done:
            raise TlsStateError("cannot send before the handshake completed")
        if self.failure is not None or not plaintext:
            return  # the failure was reported as an event; the connection is going away
        try:
            self._ssl.write(plaintext)
        except ssl.SSLError as err:
            self.failure = translate(err, server_side=self._server_side, after_handshake=True)

    def close_write(self) -> None:
        """Send close_notify (TLS half-close); receiving goes on until the peer closes too."""
        if self.write_closed or self.failure is not None:
            return
        if not self.handshake_done:
            raise TlsStateError("cannot half-close before the handshake completed")
        self.write_closed = True
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify sent; the peer's comes later through receive()
        except ssl.SSLError as err:
            self.failure = translate(err, server_side=self._server_side, after_handshake=True)

    def outgoing(self) -> bytes:
        """Ciphertext to write to the transport now (b"" if none)."""
        if self._outgoing.pending:
            return self._outgoing.read()
        return b""

    # --- internals -----------------------------------------------------------------------------

    def _handshake(self, events: list[TlsEvent]) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as err:
            self._fail(events, err)
            return False
        self.handshake_done = True
        self.peer = peer_info(self._ssl)
        events.append(HandshakeComplete(self.peer))
        return True

    def _fail(self, events: list[TlsEvent], err: BaseException) -> None:
        self.failure = translate(
            err, server_side=self._server_side, after_handshake=self.handshake_done
        )
        events.append(TlsFailed(self.failure))

    def _read(self, events: list[TlsEvent]) -> None:
        scratch = self._scratch
        size = len(scratch)
        filled = 0
        read = cast(_ReadInto, self._ssl.read)
        try:
            while True:
                if filled == size:
                    events.append(Plaintext(bytes(scratch)))
                    filled = 0
                n = read(size - filled, scratch[filled:])
                if n == 0:
                    # close_notify. CPython returns 0 while only the peer has closed, and
                    # raises SSLZeroReturnError once we have sent ours too.
                    raise ssl.SSLZeroReturnError
                filled += n
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.read_closed = True
            if filled:
                events.append(Plaintext(bytes(scratch[:filled])))
                filled = 0
            events.append(PeerClosedWrite())
        except ssl.SSLError as err:
            if filled:
                events.append(Plaintext(bytes(scratch[:filled])))
                filled = 0
            self._fail(events, err)
        if filled:
            events.append(Plaintext(bytes(scratch[:filled])))
