"""asyncio Protocols that turn a transport into a `Stream` the relay can connect to another.

Responsibility: `PlainStream` (a plaintext TCP or unix socket) and `TlsStream` (a `TlsEndpoint`
over a TCP socket) behind one small interface: `start_relay(other)`, `write`, `write_eof`,
`pause_reading`/`resume_reading`, `abort`, `close`, `bytes_read` and the `closed` future.
Guarantees:
- Every byte read is written to the other stream exactly once, in order. Bytes that arrive
  before `start_relay` are kept, never lost: a stream stops reading its socket until then (at
  most one read is buffered: the rest of a TLS handshake's read, or uvloop's first read, which
  it starts only after `connection_made`).
- Backpressure both ways: when a stream's transport buffer passes the high-water mark the other
  stream stops reading its socket, and resumes below the low-water mark, so memory stays bounded
  whatever the peers do.
- Half-close both ways: a read EOF (TCP FIN, TLS close_notify or TLS-level EOF) becomes a
  `write_eof` on the other stream (TCP shutdown, or TLS close_notify then TCP shutdown); the other
  direction keeps flowing. A stream closes itself once both of its directions have ended.
- `TlsStream.handshake` either returns the verified `PeerInfo` or raises `TlsHandshakeError`,
  after the alert OpenSSL prepared has been written to the socket; the socket then lingers
  (output shut down, input discarded) for up to `LINGER_SECONDS` so the alert is not destroyed by
  a TCP reset.
- `closed` resolves once the transport is gone: CLOSED (both directions ended, or closed by this
  side), the TLS failure's reason (of the handshake, or TLS_STREAM_ERROR for one mid-stream), or
  PEER_RESET (reset, broken pipe).
  `abort()` sends a real TCP reset (SO_LINGER 0), so the peer sees a reset, not a clean EOF.
Reads go into one buffer per thread (`ReadBuffers`), reused for every read: consumers copy what
they keep before returning. Nothing here logs per chunk.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import cast

from netshield.reasons import Reason
from netshield.tls.endpoint import (
    READ_SIZE,
    HandshakeComplete,
    PeerClosedWrite,
    Plaintext,
    TlsEndpoint,
    TlsEvent,
    TlsFailed,
)
from netshield.tls.failures import TlsFailure, TlsHandshakeError
from netshield.tls.peer import PeerCache, PeerInfo

__all__ = [
    "HIGH_WATER",
    "LINGER_SECONDS",
    "LOW_WATER",
    "PlainStream",
    "ReadBuffers",
    "Stream",
    "TlsHandshakeError",
    "TlsStream",
]

SOCKET_READ_SIZE = 256 * 1024
HIGH_WATER = 256 * 1024
"""Transport write buffer size above which the other stream stops reading."""
LOW_WATER = 64 * 1024
"""... and below which it reads again."""
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
LINGER_SECONDS = 2.0
"""How long a socket whose TLS handshake failed waits for the peer to read the alert and close."""


class ReadBuffers:
    """Scratch buffers for socket reads and TLS decryption, reused for every read.

    Their content never outlives one protocol callback, so all streams of one thread (one event
    loop) can share a pair: `for_this_thread()`. They are scratch memory, not state.
    """

    _local = threading.local()

    def __init__(
        self, socket_size: int = SOCKET_READ_SIZE, plaintext_size: int = READ_SIZE
    ) -> None:
        self.socket = memoryview(bytearray(socket_size))
        self.plaintext = memoryview(bytearray(plaintext_size))

    @classmethod
    def for_this_thread(cls) -> ReadBuffers:
        buffers: ReadBuffers | None = getattr(cls._local, "buffers", None)
        if buffers is None:
            buffers = cls()
            cls._local.buffers = buffers
        return buffers


class Stream(asyncio.BufferedProtocol, metaclass=abc.ABCMeta):
    """One side of a relay. Construct inside the running event loop (as protocol factories are)."""

    def __init__(self, *, buffers: ReadBuffers | None = None) -> None:
        self.closed: asyncio.Future[Reason] = asyncio.get_running_loop().create_future()
        self.bytes_read = 0
        self._buffers = buffers if buffers is not None else ReadBuffers.for_this_thread()
        self._read_view = self._buffers.socket
        self._transport: asyncio.Transport | None = None
        self._other: Stream | None = None
        self._relaying = False
        self._held = False  # the other stream's transport is full: do not read
        self._early: list[bytes] = []  # read before start_relay
        self._writing_paused = False
        self._read_eof = False
        self._write_eof = False
        self._finished = False  # both directions ended: closed by us, cleanly
        self._closing_locally = False
        self.failure: TlsFailure | None = None
        """Why the connection failed, when a protocol layer knows (TLS); None otherwise."""

    # --- the relay-facing interface ----------------------------------------------------------

    @property
    def transport(self) -> asyncio.Transport | None:
        """The transport while connected (for peername, sockname, ...)."""
        return self._transport

    def start_relay(self, other: Stream) -> None:
        """Forward everything read (early bytes first, then EOF) to `other`, with backpressure."""
        if self._relaying:
            raise RuntimeError("start_relay called twice")
        self._other = other
        self._relaying = True
        self._deliver_early(other)
        if self._read_eof:
            other.write_eof()
        if self._writing_paused:
            other.pause_reading()
        self._update_reading()

    @abc.abstractmethod
    def write(self, data: bytes | memoryview) -> None:
        """Send bytes; `data` may be a view of a reused buffer: copy what is kept."""

    def write_eof(self) -> None:
        """End our write direction (half-close); reading continues."""
        if self._write_eof:
            return
        self._write_eof = True
        self._send_eof()
        self._maybe_finish()

    def pause_reading(self) -> None:
        self._held = True
        self._update_reading()

    def resume_reading(self) -> None:
        self._held = False
        self._update_reading()

    def abort(self) -> None:
        """Drop the connection now with a TCP reset, discarding unsent bytes.

        A plain `transport.abort()` closes the socket, which sends a FIN (not a reset) when no
        unread bytes are pending: the peer would see a normal EOF. SO_LINGER 0 makes it a reset.
        """
        self._closing_locally = True
        transport = self._transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            transport.abort()

    def close(self) -> None:
        """Close gracefully: flush what is buffered, then close (TLS: close_notify first)."""
        self._closing_locally = True
        self._send_close()
        if self._transport is not None:
            self._transport.close()

    # --- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._relaying and self._other is not None:
            self._other.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._relaying and self._other is not None:
            self._other.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(self._close_reason())

    # --- for subclasses ----------------------------------------------------------------------

    def _deliver_early(self, other: Stream) -> None:
        early, self._early = self._early, []
        for chunk in early:
            other.write(chunk)

    def _send_eof(self) -> None:
        self._shutdown_write()

    def _shutdown_write(self) -> bool:
        """TCP half-close; False if the transport cannot (closing, or not a stream socket)."""
        transport = self._transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            return False
        try:
            transport.write_eof()
        except OSError:
            # shutdown() failed: the peer already reset the connection (we were not reading).
            transport.abort()
            return False
        return True

    def _send_close(self) -> None:
        """Protocol-level goodbye before a graceful close (TLS: close_notify)."""

    def _wants_reading(self) -> bool:
        return self._relaying and not self._held

    def _close_reason(self) -> Reason:
        if self._finished or self._closing_locally:
            return Reason.CLOSED
        return Reason.PEER_RESET

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._read_eof or transport.is_closing():
            return  # after EOF never resume: the transport would report EOF again
        want = self._wants_reading()
        if want != transport.is_reading():
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _read_ended(self) -> None:
        if self._read_eof:
            return
        self._read_eof = True
        if self._relaying and self._other is not None:
            self._other.write_eof()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._read_eof and self._write_eof and not self._finished:
            self._finished = True
            if self._transport is not None:
                self._transport.close()


class PlainStream(Stream):
    """A plaintext TCP or unix socket. Usable as `lambda: PlainStream()` protocol factory."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Nothing should be read before start_relay. (uvloop starts reading only after
        # connection_made returns, so there the first read pauses: see buffer_updated.)
        self._update_reading()

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_read += nbytes
        other = self._other
        if other is not None:
            other.write(self._read_view[:nbytes])
        else:
            self._early.append(bytes(self._read_view[:nbytes]))
            self._update_reading()

    def eof_received(self) -> bool:
        self._read_ended()
        return True

    def write(self, data: bytes | memoryview) -> None:
        transport = self._transport
        if transport is None or self._write_eof or transport.is_closing():
            return
        # Transports may keep a reference to what they could not send yet (uvloop keeps
        # memoryviews): give them an immutable copy of views into reused buffers.
        transport.write(data if type(data) is bytes else bytes(data))


class TlsStream(Stream):
    """TLS over a TCP socket, driven by a `TlsEndpoint` (TLS runs here, not in asyncio).

    Protocol factory: `lambda: TlsStream(ctx, server_side=True)`; a client stream starts its
    handshake as soon as it is connected. Await `handshake(timeout)` before `start_relay`.
    `on_answer` is called once, when this side first sends handshake bytes while the handshake
    is pending: for a server, the client's first flight (its ClientHello) was complete.
    """

    def __init__(
        self,
        ctx: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        buffers: ReadBuffers | None = None,
        session: ssl.SSLSession | None = None,
        peers: PeerCache | None = None,
        watch_tickets: bool = False,
        on_answer: Callable[[], None] | None = None,
    ) -> None:
        """A client offers `session` to resume; with `watch_tickets` it notices the ticket the
        server sends after the handshake: `new_session`, and `on_ticket` (settable any time)
        is called with it once it is there."""
        super().__init__(buffers=buffers)
        self._on_answer = on_answer
        self.answered = False
        """This side has sent handshake bytes (see `on_answer`)."""
        self._endpoint = TlsEndpoint(
            ctx,
            server_side=server_side,
            server_hostname=server_hostname,
            scratch=self._buffers.plaintext,
            session=session,
            peers=peers,
            watch_tickets=watch_tickets,
        )
        self.on_ticket: Callable[[ssl.SSLSession], None] | None = None
        self.peer: PeerInfo | None = None
        self._handshake_settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lingering = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._tcp_eof_sent = False

    @property
    def server_side(self) -> bool:
        return self._endpoint.server_side

    @property
    def alpn(self) -> str | None:
        """The application protocol negotiated in the handshake (ALPN), or None."""
        return self._endpoint.alpn

    def channel_binding(self) -> bytes | None:
        """What both ends of this TLS connection see alike (tls-unique), once handshaken."""
        return self._endpoint.channel_binding()

    async def handshake(self, timeout: float) -> PeerInfo:
        """Wait for the handshake: the verified peer, or `TlsHandshakeError` (alert already sent).

        On timeout the connection is aborted and the error's reason is HANDSHAKE_TIMEOUT. A client
        whose certificate the server refuses learns it here only if the refusal already arrived
        (TLS 1.3 reports it on the first read); later it shows as `failure` and a PEER_RESET close.
        """
        settled = self._handshake_settled
        if not settled.done():
            try:
                await asyncio.wait([settled], timeout=timeout)
            except asyncio.CancelledError:
                self.abort()
                raise
            if not settled.done():
                self._settle_handshake(
                    TlsFailure(
                        Reason.HANDSHAKE_TIMEOUT,
                        f"the {'client' if self.server_side else 'server'} did not complete the "
                        f"TLS handshake within {timeout:g} s",
                    )
                )
                self.abort()
        if self.failure is not None:
            raise TlsHandshakeError(self.failure)
        assert self.peer is not None
        return self.peer

    def cancel_handshake(self, failure: TlsFailure) -> None:
        """End a handshake that is still pending with `failure` and reset the connection (load
        shedding: no alert, no linger); `handshake` then raises it. No-op once it settled."""
        if self._handshake_settled.done():
            return
        self._settle_handshake(failure)
        self.abort()

    # --- Stream ------------------------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        transport = self._transport
        if transport is None or self._write_eof or transport.is_closing():
            return
        endpoint = self._endpoint
        endpoint.send(data)
        if endpoint.failure is None and not self._tcp_eof_sent:
            transport.write(endpoint.outgoing())  # one write per call: all its records
        else:
            self._flush()

    def _send_eof(self) -> None:
        endpoint = self._endpoint
        if endpoint.handshake_done and endpoint.failure is None:
            endpoint.close_write()
            self._flush()
        if self._shutdown_write():
            self._tcp_eof_sent = True

    def _send_close(self) -> None:
        endpoint = self._endpoint
        if endpoint.handshake_done and endpoint.failure is None and not endpoint.write_closed:
            endpoint.close_write()
            self._flush()

    def _wants_reading(self) -> bool:
        if self._lingering or self.peer is None:
            return True  # handshaking, or draining the socket after a failed handshake
        return self._relaying and not self._held

    def _close_reason(self) -> Reason:
        if self.failure is not None:
            return self.failure.reason
        return super()._close_reason()

    # --- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._handle(self._endpoint.start())

    def buffer_updated(self, nbytes: int) -> None:
        endpoint = self._endpoint
        if not endpoint.established:  # handshake, or after close_notify/failure
            self._handle(endpoint.receive(self._read_view[:nbytes]))
            return
        data = endpoint.decrypt(self._read_view[:nbytes])
        if data:
            self.bytes_read += len(data)
            other = self._other
            if other is not None and self._relaying:
                other.write(data)
            else:
                self._early.append(data)
        if endpoint.has_events:
            self._handle(endpoint.take_events())
        elif endpoint.has_outgoing:
            self._flush()
        if self._ticket_pending():
            self._deliver_ticket()

    @property
    def new_session(self) -> ssl.SSLSession | None:
        """The session of the ticket the server sent (client side), once it arrived."""
        return self._endpoint.new_session

    def _ticket_pending(self) -> bool:
        return self.on_ticket is not None and self._endpoint.new_session is not None

    def _deliver_ticket(self) -> None:
        session, callback = self._endpoint.new_session, self.on_ticket
        self.on_ticket = None
        if session is not None and callback is not None:
            callback(session)

    def eof_received(self) -> bool:
        if self._lingering:
            return False  # the peer closed after our alert: close now
        self._handle(self._endpoint.receive(b""))
        return not self._lingering

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if not self._handshake_settled.done():
            detail = f": {exc}" if exc is not None else ""
            self._settle_handshake(
                TlsFailure(
                    Reason.TLS_HANDSHAKE_FAILED,
                    f"the connection closed during the TLS handshake{detail}",
                )
            )
        super().connection_lost(exc)

    # --- internals ---------------------------------------------------------------------------

    def _handle(self, events: list[TlsEvent]) -> None:
        self._flush()
        for event in events:
            if isinstance(event, Plaintext):
                data = event.data
                self.bytes_read += len(data)
                if self._relaying and self._other is not None:
                    self._other.write(data)
                else:
                    self._early.append(data)
            elif isinstance(event, HandshakeComplete):
                self.peer = event.peer
                self._settle_handshake(None)
                self._update_reading()  # hold further bytes until the relay starts
            elif isinstance(event, PeerClosedWrite):
                self._read_ended()
            elif isinstance(event, TlsFailed):
                if self.peer is None:
                    self._settle_handshake(event.failure)
                    self._linger()
                else:
                    self.failure = event.failure  # the closed reason
                    self._close_after_failure()

    def _settle_handshake(self, failure: TlsFailure | None) -> None:
        if failure is not None and self.failure is None:
            self.failure = failure
        if not self._handshake_settled.done():
            self._handshake_settled.set_result(None)

    def _flush(self) -> None:
        data = self._endpoint.outgoing()
        transport = self._transport
        if data and transport is not None and not self._tcp_eof_sent and not transport.is_closing():
            transport.write(data)
            if not self.answered and self.peer is None:
                self.answered = True
                if self._on_answer is not None:
                    self._on_answer()

    def _linger(self) -> None:
        """After a failed handshake: alert out, output shut down, input drained, then close."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not self._shutdown_write():
            self._close_after_failure()
            return
        self._lingering = True
        self._tcp_eof_sent = True
        self._update_reading()
        self._linger_timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.abort)

    def _close_after_failure(self) -> None:
        """After a failure mid-stream: send the alert if the peer reads it in time, then close."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.close()
        self._linger_timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.abort)
