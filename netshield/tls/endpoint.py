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
A client can offer a session to resume and learns of the ticket for its next connection through
`new_session` (TLS 1.3 sends tickets after the handshake, so it appears on a later read). A server
whose context issues tickets issues them only after full handshakes: it reads the ClientHello
first (`netshield.tls.clienthello`) and a client that offers a ticket gets none (stateless
tickets resume again and again; one it cannot use is replaced at its next full handshake).
`TlsStateError` is raised only for local misuse (sending before the handshake or after
`close_write`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

from netshield.tls.clienthello import offers_psk
from netshield.tls.failures import TlsFailure, translate
from netshield.tls.peer import PeerCache, PeerInfo, peer_info
from netshield.tls.sessions import session_offer

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
        session: ssl.SSLSession | None = None,
        peers: PeerCache | None = None,
        watch_tickets: bool = False,
    ) -> None:
        """`scratch` is a writable byte buffer for decrypted records; it may be shared by all
        endpoints of one thread, since its content never outlives a `receive` call.
        A client offers `session` for resumption; with `watch_tickets` it notices the ticket
        the server sends after the handshake (`new_session`). `peers` caches parsed peer
        certificates."""
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ctx = ctx
        self._server_hostname = None if server_side else server_hostname
        self._session = None if server_side else session
        self._first = b""  # a server's first bytes, until it knows whether the client resumes
        self._peers = peers
        self._offered_id = session.id if session is not None else None
        self._watch_tickets = watch_tickets and not server_side
        self.new_session: ssl.SSLSession | None = None
        """The session of the first ticket the server sent after the handshake (client side)."""
        self._server_side = server_side
        self._ssl: ssl.SSLObject
        self._sslobj: ssl.SSLObject
        # A server that issues tickets waits for the ClientHello: a client that resumes keeps
        # its (reusable) ticket, so it gets none (each costs the server ~170 µs).
        self._deferred = server_side and ctx.num_tickets > 0
        if not self._deferred:
            self._wrap(ctx.num_tickets)
        self._events: list[TlsEvent] = []
        self.established = False
        """Handshake done, no failure, peer still sending: `decrypt` and `encrypt` apply."""
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

    def channel_binding(self) -> bytes | None:
        """Bytes both ends of this connection see alike and nobody else does (RFC 5929's
        tls-unique: the first Finished message), None before the handshake."""
        if not self.handshake_done:
            return None
        return self._ssl.get_channel_binding("tls-unique")

    @property
    def alpn(self) -> str | None:
        """The application protocol both ends agreed on (ALPN), None if none."""
        return self._ssl.selected_alpn_protocol() if self.handshake_done else None

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
        if self._deferred:
            first = self._first + bytes(data)
            resumes = offers_psk(first)
            if resumes is None and data:
                self._first = first  # the ClientHello is not complete yet
                return events
            self._first = b""
            self._wrap(0 if resumes else self._ctx.num_tickets)
            if data:
                data = first
            elif first:
                self._incoming.write(first)  # then the EOF below
        if data:
            self._incoming.write(data)
        elif self.handshake_done:
            # EOF after the handshake: a half-close. Not fed to OpenSSL, which would mark the
            # connection failed (unexpected EOF) and refuse our remaining writes.
            self.read_closed = True
            self.established = False
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
            self._sslobj.write(plaintext)
        except ssl.SSLError as err:
            self.failure = translate(err, server_side=self._server_side, after_handshake=True)
            self.established = False

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """The data path of `receive` once `established`: feed ciphertext, get the plaintext of
        the records it completed (b"" if none). What else happened (close_notify, a failure)
        waits in `take_events()`, after that plaintext."""
        self._incoming.write(data)
        return self._decrypt_pending()

    def take_events(self) -> list[TlsEvent]:
        """Events `decrypt` queued (PeerClosedWrite, TlsFailed), oldest first; [] if none."""
        events, self._events = self._events, []
        return events

    @property
    def has_events(self) -> bool:
        """Whether `decrypt` queued events (then `established` is False)."""
        return bool(self._events)

    @property
    def has_outgoing(self) -> bool:
        """Whether `outgoing()` has bytes (e.g. a KeyUpdate answer after `decrypt`)."""
        return bool(self._outgoing.pending)

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

    def _wrap(self, tickets: int) -> None:
        """Create the SSLObject; a server issues `tickets` tickets (OpenSSL copies the count
        from the context when the object is made, so it is set just for this one)."""
        self._deferred = False
        ctx = self._ctx
        usual = ctx.num_tickets if self._server_side else tickets
        if tickets != usual:
            ctx.num_tickets = tickets
        session, offer = self._session, session_offer() if self._session is not None else None
        try:
            self._ssl = ctx.wrap_bio(
                self._incoming,
                self._outgoing,
                server_side=self._server_side,
                server_hostname=self._server_hostname,
                session=None if offer is not None else session,
            )
        finally:
            if tickets != usual:
                ctx.num_tickets = usual
        if offer is not None and session is not None:
            try:
                offer.offer(self._ssl, session)  # without CPython's copy (~0.3 ms)
            except ssl.SSLError:
                self._ssl = ctx.wrap_bio(
                    self._incoming,
                    self._outgoing,
                    server_side=False,
                    server_hostname=self._server_hostname,
                    session=session,
                )
        self._session = None
        # The C-level object behind SSLObject: its read/write are what SSLObject's Python
        # wrappers call, minus one Python frame per call on the data path.
        self._sslobj = getattr(self._ssl, "_sslobj", self._ssl)

    def _handshake(self, events: list[TlsEvent]) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as err:
            self._fail(events, err)
            return False
        self.handshake_done = True
        self.established = True
        self.peer = (
            peer_info(self._ssl) if self._peers is None else self._peers.peer_info(self._ssl)
        )
        events.append(HandshakeComplete(self.peer))
        return True

    def _fail(self, events: list[TlsEvent], err: BaseException) -> None:
        self.established = False
        self.failure = translate(
            err, server_side=self._server_side, after_handshake=self.handshake_done
        )
        events.append(TlsFailed(self.failure))

    def _read(self, events: list[TlsEvent]) -> None:
        chunks: list[bytes] = []
        data = self._decrypt_pending(chunks)
        events.extend(Plaintext(chunk) for chunk in chunks)
        if data:
            events.append(Plaintext(data))
        if self._events:
            events.extend(self._events)
            self._events.clear()

    def _decrypt_pending(self, full: list[bytes] | None = None) -> bytes:
        """Decrypt every complete record in the incoming BIO: returns the plaintext; when it
        exceeds the scratch buffer, the full buffers go to `full` first (joined into the result
        if `full` is None).

        The loop ends when the BIO is empty (no exception on the common path); only a partial
        record left in the BIO costs OpenSSL's "want read". Close_notify and failures are
        queued in `_events` after the plaintext that preceded them.
        """
        scratch = self._scratch
        size = len(scratch)
        incoming = self._incoming
        read: _ReadInto = self._sslobj.read  # type: ignore[assignment]
        chunks = full if full is not None else []
        filled = 0
        try:
            while True:
                n = read(size - filled, scratch[filled:] if filled else scratch)
                if n == 0:
                    # close_notify. CPython returns 0 while only the peer has closed, and
                    # raises SSLZeroReturnError once we have sent ours too.
                    raise ssl.SSLZeroReturnError
                filled += n
                if filled == size:
                    chunks.append(bytes(scratch))
                    filled = 0
                elif not incoming.pending and not self._sslobj.pending():
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.read_closed = True
            self._events.append(PeerClosedWrite())
        except ssl.SSLError as err:
            self.failure = translate(err, server_side=self._server_side, after_handshake=True)
            self._events.append(TlsFailed(self.failure))
        data = bytes(scratch[:filled]) if filled else b""
        if chunks and full is None:
            chunks.append(data)
            data = b"".join(chunks)
        if self._events or self.failure is not None:
            self.established = False
        if self._watch_tickets:
            self._look_for_ticket()
        return data

    def _look_for_ticket(self) -> None:
        session = self._ssl.session
        if session is not None and session.has_ticket and session.id != self._offered_id:
            offer = session_offer()
            self.new_session = session if offer is None else offer.detached(self._ctx, session)
            self._watch_tickets = False
