"""asyncio side of a tunnel: `Tunnel` runs a `TunnelProtocol` over a verified `TlsStream`, and
each of its streams is a `TunnelStream`, a `Stream` the relay couples to any other.

Responsibility: move bytes between the TLS connection and the tunnel's streams, and map the
tunnel's events onto the `Stream` contract (`netshield.net.streams`).
Guarantees:
- A `TunnelStream` keeps the `Stream` contract: bytes in order, exactly once; early bytes (before
  `start_relay`) kept; backpressure both ways (its source pauses while the peer's window for the
  stream is used up or the tunnel's TLS transport is full; its own window stays closed while
  the stream it relays to is full); half-close (END_STREAM ↔ `write_eof`); `abort` sends
  RST_STREAM and a peer's RST_STREAM closes it as PEER_RESET, so the relay turns it into a TCP
  reset on the other side; `close` ends it now: a reset unless both directions had ended.
- When the tunnel's connection goes (a cut, a TLS failure, a protocol error) every stream's
  `closed` resolves at once, with PEER_RESET and a `failure` saying what happened to the tunnel,
  after the bytes that arrived before; their counts say how far each got.
- Per stream, nothing here allocates beyond the stream object and what h2 needs; nothing logs
  per chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Callable

from netshield.net.streams import Stream, TlsStream
from netshield.reasons import Reason
from netshield.reasons import reason as reason_of
from netshield.tls.failures import TlsFailure
from netshield.tunnel.protocol import (
    NO_ERROR,
    REFUSED_STREAM,
    GoAway,
    StreamAccepted,
    StreamData,
    StreamEnded,
    StreamRefused,
    StreamRequested,
    StreamReset,
    StreamWritable,
    TunnelFailed,
    TunnelFull,
    TunnelProtocol,
    TunnelStateError,
)

__all__ = ["Answer", "Refused", "Retry", "Tunnel", "TunnelStream", "peers_reason", "tunnel_id_of"]


def tunnel_id_of(tls: TlsStream) -> str:
    """The tunnel's id, the same on both sidecars and never sent: derived from what both ends
    of the TLS connection see alike (its tls-unique channel binding)."""
    binding = tls.channel_binding() or secrets.token_bytes(16)
    return "t" + hashlib.sha256(b"netshield tunnel id\0" + binding).hexdigest()[:15]


class Refused:
    """The destination refused the stream: its status and reason code (None if it gave none)."""

    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str | None) -> None:
        self.status = status
        self.reason = reason


class Retry:
    """The stream never reached the destination (GOAWAY raced it, or the tunnel went away
    before it was answered): safe to open it again on another tunnel."""

    __slots__ = ("timed_out", "why")

    def __init__(self, why: str, *, timed_out: bool = False) -> None:
        self.why = why
        self.timed_out = timed_out
        """No answer within the caller's deadline (not a tunnel that went away)."""


Answer = Refused | Retry | None
"""What the destination said to a stream we opened: None means accepted."""


def peers_reason(given: Reason, *, dialled: bool) -> Reason:
    """The reason a peer gave for closing a tunnel, as this sidecar records it: a record's PEER_
    codes name its own peer, so the peer's verdict on us is not ours on it. Its expired
    certificate is our PEER_CERT_EXPIRED, ours (as it says) our CREDENTIALS_EXPIRED; any other
    verdict on us (revoked, stale) is the peer cutting the connection."""
    if given is Reason.CREDENTIALS_EXPIRED:
        return Reason.PEER_CERT_EXPIRED
    if given is Reason.PEER_CERT_EXPIRED:
        return Reason.CREDENTIALS_EXPIRED
    if given.value.startswith("PEER_") or given is Reason.POLICY_STALE:
        return Reason.UPSTREAM_RESET if dialled else Reason.PEER_RESET
    return given


class TunnelStream(Stream):
    """One stream of a tunnel, as a `Stream`."""

    def __init__(self, tunnel: Tunnel, stream_id: int) -> None:
        super().__init__()
        self.tunnel = tunnel
        self.stream_id = stream_id
        self._answer: asyncio.Future[Answer] | None = None
        self._window_full = False
        self._tunnel_full = tunnel.tls_full
        self._writing_paused = self._tunnel_full
        self._intake_held = True  # nothing is acknowledged before start_relay

    # --- the relay-facing interface ----------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        if self._write_eof or self.closed.done():
            return
        tunnel = self.tunnel
        try:
            sent = tunnel.protocol.send(self.stream_id, data)
        except TunnelStateError:
            return  # reset by the peer meanwhile; `closed` tells the relay
        tunnel.flush()
        if not sent and not self._window_full:
            self._window_full = True
            self._pace()

    def abort(self) -> None:
        """RST_STREAM (CANCEL): the peer's side sees a reset."""
        self._closing_locally = True
        if not self.closed.done():
            self.tunnel.protocol.reset(self.stream_id)
            self.tunnel.flush()
        self._done(Reason.CLOSED)

    def close(self) -> None:
        """End the stream now. While a direction is still open this is a cut (revoked, drained,
        idle): RST_STREAM (CANCEL), so the application behind the peer sees a reset, never a
        clean end of fewer bytes than were sent, as it would over a connection of its own."""
        if self._read_eof and self._write_eof:
            self._closing_locally = True
            self._done(Reason.CLOSED)
            return
        self.abort()

    async def answer(self, timeout: float) -> Answer:
        """Client side: wait for the destination's answer to this stream (None: accepted)."""
        answer = self._answer
        if answer is None:
            return None
        if not answer.done():
            timer = asyncio.get_running_loop().call_later(timeout, self._no_answer, timeout)
            try:
                await answer
            finally:
                timer.cancel()
        return answer.result()

    def _no_answer(self, timeout: float) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(
                Retry(
                    f"no answer from the destination sidecar within {timeout:g} s", timed_out=True
                )
            )
            self.abort()

    # --- Stream internals --------------------------------------------------------------------

    def _send_eof(self) -> None:
        if not self.closed.done():
            self.tunnel.protocol.end(self.stream_id)
            self.tunnel.flush()

    def _update_reading(self) -> None:
        held = not (self._relaying and not self._held)
        if held != self._intake_held and not self.closed.done():
            self._intake_held = held
            self.tunnel.protocol.hold(self.stream_id, held)
            if not held:
                self.tunnel.flush()

    def _maybe_finish(self) -> None:
        if self._read_eof and self._write_eof and not self._finished:
            self._finished = True
            self._done(Reason.CLOSED)

    def _pace(self) -> None:
        paused = self._window_full or self._tunnel_full
        if paused != self._writing_paused:
            self._writing_paused = paused
            other = self._other
            if self._relaying and other is not None:
                if paused:
                    other.pause_reading()
                else:
                    other.resume_reading()

    def _done(self, reason: Reason) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(Retry("the stream closed before it was answered"))
        self.tunnel._forget(self.stream_id)

    # --- from the tunnel ---------------------------------------------------------------------

    def _expect_answer(self) -> None:
        self._answer = asyncio.get_running_loop().create_future()

    def _on_data(self, data: bytes) -> None:
        self.bytes_read += len(data)
        other = self._other
        if other is not None and self._relaying:
            other.write(data)
        else:
            self._early.append(data)

    def _on_reset(self, code: int) -> None:
        if self._answer is not None and not self._answer.done():
            why = "the destination sidecar refused it (GOAWAY)" if code == REFUSED_STREAM else ""
            self._answer.set_result(Retry(why or f"reset before it was answered (code {code})"))
        if code == NO_ERROR:  # the peer closed both directions gracefully
            self._read_ended()
            self._write_eof = True
            self._finished = True
            self._done(Reason.CLOSED)
            return
        cut = self.tunnel.peer_close
        if cut is not None and cut not in (Reason.PEER_RESET, Reason.UPSTREAM_RESET):
            # reset while the peer closes the tunnel for a reason: the stream ends for it too
            self.failure = TlsFailure(
                cut, f"tunnel {self.tunnel.tunnel_id}: the peer closed it ({cut.value})"
            )
            self._done(cut)
        else:
            self._done(Reason.PEER_RESET)

    def _on_writable(self) -> None:
        if self._window_full:
            self._window_full = False
            self._pace()

    def _on_tunnel_full(self, full: bool) -> None:
        self._tunnel_full = full
        self._pace()

    def _on_lost(self, failure: TlsFailure) -> None:
        """The tunnel went: closed as a reset, or with the tunnel's failure (TLS_STREAM_ERROR,
        TUNNEL_PROTOCOL_ERROR), as a connection of its own would be."""
        if self.closed.done():
            return
        self.failure = failure
        self._done(failure.reason)


class Tunnel:
    """One tunnel over a verified TLS connection; the TLS stream relays its plaintext here."""

    def __init__(
        self,
        tls: TlsStream,
        protocol: TunnelProtocol,
        *,
        tunnel_id: str,
        on_request: Callable[[TunnelStream, str, str | None], None] | None = None,
        on_goaway: Callable[[Tunnel], None] | None = None,
    ) -> None:
        """Server side: `on_request(stream, authority, peer's tunnel id)` for each stream the
        peer opens (answer it with `accept` or `refuse`). `on_goaway` when the peer drains."""
        loop = asyncio.get_running_loop()
        self.tls = tls
        self.protocol = protocol
        self.tunnel_id = tunnel_id
        self.streams: dict[int, TunnelStream] = {}
        self.carried = 0
        """Streams opened over the tunnel's life."""
        self.bytes_sent = 0
        """Plaintext bytes written to the TLS connection (HTTP/2 frames)."""
        self.tls_full = False
        self.draining = False
        """No new streams: GOAWAY sent or received, or the tunnel is closing."""
        self.opened_at = loop.time()
        self.idle_since: float | None = loop.time()
        self.closed: asyncio.Future[Reason] = loop.create_future()
        """Resolves when the TLS connection is gone, with the tunnel's close reason."""
        self.close_reason: Reason | None = None
        self.peer_close: Reason | None = None
        """Why the peer closed the tunnel (its GOAWAY), in this sidecar's words."""
        self.why = ""
        """What the record adds about the close (e.g. why it drained)."""
        self.failure: TlsFailure | None = None
        self._on_request = on_request
        self._on_goaway = on_goaway
        self._loop = loop
        self._flush_scheduled = False
        self._sink = _Sink(self)
        tls.closed.add_done_callback(self._tls_closed)
        tls.start_relay(self._sink)
        self.flush()

    # --- streams -----------------------------------------------------------------------------

    def open(self, authority: str) -> TunnelStream:
        """Client: open a stream to `authority` (`TunnelFull` if the tunnel cannot); await its
        `answer` before relaying."""
        if self.draining or self.closed.done():
            raise TunnelFull("the tunnel is closing")
        stream_id = self.protocol.open(authority, tunnel_id=self.tunnel_id)
        stream = TunnelStream(self, stream_id)
        stream._expect_answer()
        self._add(stream)
        self.flush()
        return stream

    def accept(self, stream: TunnelStream) -> None:
        if not stream.closed.done():
            self.protocol.accept(stream.stream_id)
            self.flush()

    def refuse(self, stream: TunnelStream, status: int, reason: Reason) -> None:
        if not stream.closed.done():
            self.protocol.refuse(stream.stream_id, status, reason.value)
            self.flush()
        stream._closing_locally = True
        stream._done(Reason.CLOSED)

    @property
    def open_count(self) -> int:
        return len(self.streams)

    def has_room(self) -> bool:
        """Whether a stream could open now (not draining, below the peer's stream limit)."""
        if self.draining or self.closed.done():
            return False
        limit = self.protocol.peer_max_streams
        return len(self.streams) < limit

    # --- the tunnel --------------------------------------------------------------------------

    def drain(self, reason: Reason, why: str = "") -> None:
        """GOAWAY: no new streams either way; close once the open ones ended. `reason` and
        `why` go to the tunnel's record unless it already had a close reason."""
        if self.close_reason is None:
            self.close_reason = reason
            self.why = why
        if not self.draining:
            self.draining = True
            self.protocol.goaway(reason=self.close_reason.value if self.close_reason else None)
            self.flush()
        if not self.streams:
            self._close_tls()

    def close(self, reason: Reason, *, failure: TlsFailure | None = None) -> None:
        """Close now: every stream ends with `reason`, the TLS connection closes gracefully."""
        if self.close_reason is None:
            self.close_reason = reason
        if failure is not None and self.failure is None:
            self.failure = failure
        self.draining = True
        self.protocol.goaway(reason=self.close_reason.value)
        self.flush()
        for stream in list(self.streams.values()):
            stream.close()
        self._close_tls()

    def abort(self) -> None:
        self.draining = True
        self.tls.abort()

    def flush(self) -> None:
        """Write what the protocol has to send, once per turn of the event loop: the frames of
        every stream that wrote in this turn leave as one TLS write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_now)

    def _close_tls(self) -> None:
        self._flush_now()
        self.tls.close()

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        data = self.protocol.data_to_send()
        if data:
            self.bytes_sent += len(data)
            self.tls.write(data)

    # --- internals ---------------------------------------------------------------------------

    def _add(self, stream: TunnelStream) -> None:
        self.streams[stream.stream_id] = stream
        self.carried += 1
        self.idle_since = None

    def _forget(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None and not self.streams:
            self.idle_since = asyncio.get_running_loop().time()
            if self.draining and not self.closed.done():
                self._close_tls()

    def _receive(self, data: bytes | memoryview) -> None:
        streams = self.streams
        for event in self.protocol.receive(data):
            kind = type(event)
            if kind is StreamData:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None:
                    stream._on_data(event.data)  # type: ignore[union-attr]
            elif kind is StreamEnded:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None:
                    stream._read_ended()
            elif kind is StreamWritable:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None:
                    stream._on_writable()
            elif isinstance(event, StreamAccepted):
                stream = streams.get(event.stream_id)
                if stream is not None and stream._answer is not None:
                    stream._answer.set_result(None) if not stream._answer.done() else None
            elif isinstance(event, StreamRequested):
                self._requested(event)
            elif isinstance(event, StreamRefused):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    if stream._answer is not None and not stream._answer.done():
                        stream._answer.set_result(Refused(event.status, event.reason))
                    stream._closing_locally = True
                    stream._done(Reason.CLOSED)
            elif isinstance(event, StreamReset):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._on_reset(event.code)
            elif isinstance(event, GoAway):
                self.draining = True
                given = reason_of(event.reason) if event.reason else None
                if given is not None:  # the peer's reason, in this sidecar's words
                    self.peer_close = peers_reason(given, dialled=self._on_request is None)
                if self.close_reason is None:
                    if given is not None and self.peer_close is not given:
                        self.why = f"the peer closed the tunnel: {given.value} for this sidecar"
                    self.close_reason = self.peer_close or Reason.DRAINED
                if self._on_goaway is not None:
                    self._on_goaway(self)
                if not self.streams:
                    self._close_tls()
            elif isinstance(event, TunnelFailed):
                self.flush()
                self._lost(
                    TlsFailure(
                        Reason.TUNNEL_PROTOCOL_ERROR,
                        f"tunnel {self.tunnel_id}: {event.detail}",
                    )
                )
                self._close_tls()
        self.flush()

    def _requested(self, event: StreamRequested) -> None:
        if self._on_request is None or self.draining:
            self.protocol.refuse(event.stream_id, 503, Reason.DRAINED.value)
            return
        stream = TunnelStream(self, event.stream_id)
        self.protocol.hold(event.stream_id, True)  # nothing is acknowledged before start_relay
        self._add(stream)
        self._on_request(stream, event.authority, event.tunnel_id)

    def _tls_full(self, full: bool) -> None:
        self.tls_full = full
        for stream in list(self.streams.values()):
            stream._on_tunnel_full(full)

    def _peer_eof(self) -> None:
        """The peer ended its side of the TLS connection: no stream can get more bytes."""
        if self.streams:
            self._lost(
                TlsFailure(
                    Reason.PEER_RESET,
                    f"tunnel {self.tunnel_id}: the destination sidecar closed the connection",
                )
            )
        self.draining = True
        self._close_tls()

    def _lost(self, failure: TlsFailure) -> None:
        if self.failure is None:
            self.failure = failure
        if self.close_reason is None:
            self.close_reason = failure.reason
        self.draining = True
        for stream in list(self.streams.values()):
            stream._on_lost(failure)

    def _tls_closed(self, done: asyncio.Future[Reason]) -> None:
        reason = done.result()
        if reason is not Reason.CLOSED:
            tls_failure = self.tls.failure
            detail = tls_failure.detail if tls_failure is not None else "the connection was reset"
            self._lost(TlsFailure(reason, f"tunnel {self.tunnel_id}: {detail}"))
        elif self.streams:
            self._lost(
                TlsFailure(Reason.PEER_RESET, f"tunnel {self.tunnel_id}: the connection closed")
            )
        self.draining = True
        if not self.closed.done():
            self.closed.set_result(self.close_reason or reason)


class _Sink(Stream):
    """What the tunnel's TLS stream relays its plaintext into (a `Stream` without a socket)."""

    def __init__(self, tunnel: Tunnel) -> None:
        super().__init__()
        self._tunnel = tunnel

    def write(self, data: bytes | memoryview) -> None:
        self._tunnel._receive(data)

    def write_eof(self) -> None:
        self._tunnel._peer_eof()

    def pause_reading(self) -> None:
        self._tunnel._tls_full(True)

    def resume_reading(self) -> None:
        self._tunnel._tls_full(False)

    def abort(self) -> None:
        self._tunnel.abort()

    def close(self) -> None:
        self._tunnel.tls.close()
