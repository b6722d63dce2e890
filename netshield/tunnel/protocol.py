"""Sans-IO tunnel: the streams of one HTTP/2 CONNECT tunnel (RFC 9113 §8.5), bytes in and events out.

Responsibility: drive one `h2` connection for a caller that owns the TLS connection. The caller
feeds the plaintext it read (`receive`), gets `TunnelEvent`s back, opens streams (client:
`open`) or answers them (server: `accept` / `refuse`), sends stream bytes (`send`), half-closes
(`end`: END_STREAM), resets (`reset`: RST_STREAM), holds a stream's intake while its consumer is
full (`hold`), ends the tunnel (`goaway`) and after every call writes `data_to_send()` out.
Guarantees:
- The events do not depend on how the bytes are chunked: one byte at a time or all at once give
  the same stream data, in order, and the same events (a property test checks it).
- Flow control keeps one stream from starving the others: the connection window is reopened as
  soon as bytes arrive (they belong to a stream from then on), a stream's window only once its
  consumer took them and is not held. So a stalled or bulk stream ties up at most its own
  window (`TunnelSettings.stream_window`), never the tunnel's, and a peer can make this side
  buffer at most `max_streams` × `stream_window` whatever it does.
- Sending never exceeds the peer's windows or frame size: what does not fit waits per stream,
  `send` says so (False: pause the source) and `StreamWritable` comes once it went out; waiting
  streams get the windows that open round-robin, one frame each in turn.
- A peer's protocol error ends the tunnel with GOAWAY and one `TunnelFailed`; a stream error
  (the peer reset it, or sent something invalid on it) ends that stream only (`StreamReset`).
`TunnelStateError` is raised only for local misuse (sending on a stream that is not open).
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import DataFrame, Frame, RstStreamFrame

__all__ = [
    "GoAway",
    "StreamAccepted",
    "StreamData",
    "StreamEnded",
    "StreamRefused",
    "StreamRequested",
    "StreamReset",
    "StreamWritable",
    "TunnelEvent",
    "TunnelFailed",
    "TunnelFull",
    "TunnelProtocol",
    "TunnelSettings",
    "TunnelStateError",
]

TUNNEL_HEADER = b"netshield-tunnel"
"""Request header naming the tunnel, so both sidecars' records carry the same `tunnel_id`."""
REASON_HEADER = b"netshield-reason"
"""Response header of a refused stream: the reason code (the detail stays in the records)."""
_FRAME_HEADER = struct.Struct(">HBBBL")  # RFC 9113 §4.1: 24-bit length, type, flags, stream id
_TUNNEL_ID = re.compile(rb"[0-9a-z]{8,32}")
_REASON = re.compile(rb"[A-Z][A-Z0-9_]{0,63}")
CANCEL = h2.errors.ErrorCodes.CANCEL
NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM


@dataclass(frozen=True, slots=True)
class TunnelSettings:
    """The limits one side announces and keeps (see the module docstring for why)."""

    max_streams: int = 100
    """Concurrent streams the peer may open to us (SETTINGS_MAX_CONCURRENT_STREAMS)."""
    stream_window: int = 1 << 20
    """Bytes the peer may send on one stream before we reopen its window (initial window)."""
    connection_window: int = 16 << 20
    """The tunnel's receive window: reopened on arrival, so it only paces the peer."""
    max_frame: int = 256 * 1024
    """Largest frame we accept (SETTINGS_MAX_FRAME_SIZE)."""
    max_header_list: int = 16 * 1024
    """Largest header list we accept on a stream (SETTINGS_MAX_HEADER_LIST_SIZE)."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_streams <= 10_000:
            raise ValueError("max_streams must be between 1 and 10000")
        if not 65_535 <= self.stream_window <= (1 << 31) - 1:
            raise ValueError("stream_window must be between 64 KiB and 2 GiB")
        if not self.stream_window <= self.connection_window <= (1 << 31) - 1:
            raise ValueError("connection_window must be between stream_window and 2 GiB")
        if not 16_384 <= self.max_frame <= (1 << 24) - 1:
            raise ValueError("max_frame must be between 16 KiB and 16 MiB")


# --- events --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StreamRequested:
    """Server side: the peer opened a stream to `authority` (answer with accept or refuse)."""

    stream_id: int
    authority: str
    tunnel_id: str | None  # the peer's name for this tunnel, when it sent a valid one


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    """Client side: the peer answered 2xx; bytes flow both ways."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamRefused:
    """Client side: the peer answered `status` (not 2xx) with a reason code, or none."""

    stream_id: int
    status: int
    reason: str | None


@dataclass(frozen=True, slots=True)
class StreamData:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (END_STREAM): it sends nothing more on it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone (RST_STREAM from the peer, or ours after its error); `remote` says
    whether the peer sent it."""

    stream_id: int
    code: int
    remote: bool


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """What `send` buffered for the stream went out: its source may read again."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    """The peer takes no stream above `last_stream_id`; streams up to it go on. `reason` is the
    reason code it gave (GOAWAY's debug data), when it gave a valid one."""

    last_stream_id: int
    code: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class TunnelFailed:
    """The peer broke the protocol; GOAWAY is in `data_to_send()`, every stream is gone."""

    detail: str


TunnelEvent = (
    StreamRequested
    | StreamAccepted
    | StreamRefused
    | StreamData
    | StreamEnded
    | StreamReset
    | StreamWritable
    | GoAway
    | TunnelFailed
)


class TunnelStateError(RuntimeError):
    """The caller used a stream or the tunnel in a state that does not allow it."""


class TunnelFull(Exception):
    """No stream can be opened on this tunnel (peer's stream limit, stream ids, or GOAWAY)."""


class _DrainingStateMachine(h2.connection.H2ConnectionStateMachine):
    """h2's connection states, except that a GOAWAY (sent or received) leaves the connection
    open: RFC 9113 §6.8 lets the streams below its last stream id finish, h2 alone would not."""

    _transitions = {  # noqa: RUF012 (h2's own class attribute, replaced)
        **h2.connection.H2ConnectionStateMachine._transitions,
        **{
            (state, goaway): (None, state)
            for state in (
                h2.connection.ConnectionState.CLIENT_OPEN,
                h2.connection.ConnectionState.SERVER_OPEN,
            )
            for goaway in (
                h2.connection.ConnectionInputs.SEND_GOAWAY,
                h2.connection.ConnectionInputs.RECV_GOAWAY,
            )
        },
    }


class _Connection(h2.connection.H2Connection):
    """h2's connection minus two costs on the data path. Receiving, h2 formats `repr(frame)`
    (a hex dump of the whole payload) for a trace log line on every frame, even when nothing
    logs: `_receive_frame` is h2's without it. Sending, h2 copies a DATA frame's payload five
    times on its way out; here a frame is its header and payload joined once, and
    `data_to_send` joins only when several frames wait. The rest is h2 as it is."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config)
        self._chunks: list[bytes] = []

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        chunks = self._chunks
        for frame in frames:
            if type(frame) is DataFrame and not frame.pad_length:
                data = frame.data
                size = len(data)
                flags = 1 if "END_STREAM" in frame.flags else 0
                header = _FRAME_HEADER.pack(size >> 8, size & 0xFF, 0, flags, frame.stream_id)
                chunks.append(header + data)
            else:
                chunks.append(frame.serialize())

    def data_to_send(self, amount: int | None = None) -> bytes:
        chunks = self._chunks
        if self._data_to_send:  # what h2 wrote itself (the connection preface)
            chunks.insert(0, bytes(self._data_to_send))
            self._data_to_send = bytearray()
        if amount is not None:
            raise ValueError("the tunnel takes all of its output at once")
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return data

    def clear_outbound_data_buffer(self) -> None:
        super().clear_outbound_data_buffer()
        self._chunks.clear()

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        events: list[h2.events.Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events


class _Frames(FrameBuffer):
    """h2's frame buffer, refusing an oversized frame as soon as its header is in: h2 alone
    would first buffer up to 16 MiB of it, whatever SETTINGS_MAX_FRAME_SIZE says."""

    def __next__(self) -> Frame:
        data = self._data
        if len(data) >= 9:
            self._validate_frame_length(int.from_bytes(data[:3], "big"))
        return super().__next__()


class _Out:
    """What waits to be sent on one stream."""

    __slots__ = ("chunks", "end", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.end = False


class TunnelProtocol:
    """The HTTP/2 state of one tunnel, without I/O."""

    def __init__(self, *, client: bool, settings: TunnelSettings | None = None) -> None:
        self.settings = s = settings if settings is not None else TunnelSettings()
        config = h2.config.H2Configuration(
            client_side=client,
            header_encoding=None,
            validate_outbound_headers=False,  # we build them; the peer's are validated
            normalize_outbound_headers=False,
            validate_inbound_headers=True,
        )
        self.client = client
        self._h2 = _Connection(config)
        self._h2.state_machine = _DrainingStateMachine()
        self._h2.incoming_buffer = _Frames(server=not client)
        self._h2.local_settings = h2.settings.Settings(
            client=client,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: s.max_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: s.stream_window,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: s.max_frame,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # h2 reads these from the settings it was built with; ours replaced them since
        self._h2.max_inbound_frame_size = s.max_frame
        self._h2.decoder.max_header_list_size = s.max_header_list
        self._h2.initiate_connection()
        extra = s.connection_window - 65_535
        if extra > 0:
            self._h2.increment_flow_control_window(extra)
        self._conn_unacked = 0
        self._conn_ack_at = max(s.connection_window // 4, 1)
        self._stream_ack_at = max(s.stream_window // 4, 1)
        self._unacked: dict[int, int] = {}  # stream -> bytes taken but not reopened yet
        self._held: set[int] = set()
        self._out: dict[int, _Out] = {}  # streams with bytes waiting for window
        self._open: set[int] = set()  # streams we may still send on
        self.goaway_received = False
        self.goaway_sent = False
        self._goaway_last = 0
        self.failed: str | None = None
        self._events: list[TunnelEvent] = []
        self._dispatch: dict[type, Callable[[h2.events.Event], None]] = {
            h2.events.DataReceived: self._on_data,  # type: ignore[dict-item]
            h2.events.RequestReceived: self._on_request,  # type: ignore[dict-item]
            h2.events.ResponseReceived: self._on_response,  # type: ignore[dict-item]
            h2.events.StreamEnded: self._on_ended,  # type: ignore[dict-item]
            h2.events.StreamReset: self._on_reset,  # type: ignore[dict-item]
            h2.events.WindowUpdated: self._on_window,
            h2.events.RemoteSettingsChanged: self._on_window,
            h2.events.ConnectionTerminated: self._on_goaway,  # type: ignore[dict-item]
        }

    # --- reading -----------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> list[TunnelEvent]:
        """Feed bytes read from the tunnel's TLS connection; returns what happened."""
        if self.failed is not None:
            return []
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            return self._fail(f"the peer broke the HTTP/2 protocol: {err}")
        dispatch = self._dispatch
        for event in h2_events:
            handler = dispatch.get(type(event))
            if handler is not None:
                handler(event)
        if self._conn_unacked >= self._conn_ack_at:
            self._h2.increment_flow_control_window(self._conn_unacked)
            self._conn_unacked = 0
        events, self._events = self._events, []
        return events

    def hold(self, stream_id: int, held: bool) -> None:
        """While held, the stream's window is not reopened (its consumer is full); on release
        everything it took is acknowledged."""
        if held:
            self._held.add(stream_id)
            return
        self._held.discard(stream_id)
        pending = self._unacked.get(stream_id, 0)
        if pending:
            self._reopen(stream_id, pending)

    # --- streams -----------------------------------------------------------------------------

    def open(self, authority: str, *, tunnel_id: str | None = None) -> int:
        """Client: open a CONNECT stream to `authority`; its id. `TunnelFull` if none can be."""
        h = self._h2
        if self.goaway_received or self.goaway_sent or self.failed is not None:
            raise TunnelFull("the tunnel is closing")
        if h.open_outbound_streams >= h.remote_settings.max_concurrent_streams:
            raise TunnelFull(
                f"the peer allows {h.remote_settings.max_concurrent_streams} streams at a time"
            )
        try:
            stream_id = h.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            raise TunnelFull("the tunnel ran out of stream ids") from None
        headers = [(b":method", b"CONNECT"), (b":authority", authority.encode("ascii"))]
        if tunnel_id is not None:
            headers.append((TUNNEL_HEADER, tunnel_id.encode("ascii")))
        h.send_headers(stream_id, headers)
        self._open.add(stream_id)
        return stream_id

    def accept(self, stream_id: int) -> None:
        """Server: answer 200; bytes flow both ways."""
        self._h2.send_headers(stream_id, [(b":status", b"200")])
        self._open.add(stream_id)

    def refuse(self, stream_id: int, status: int, reason: str) -> None:
        """Server: answer `status` with `reason` (a reason code) and end the stream."""
        try:
            self._h2.send_headers(
                stream_id,
                [(b":status", str(status).encode()), (REASON_HEADER, reason.encode("ascii"))],
                end_stream=True,
            )
        except h2.exceptions.StreamClosedError:
            return
        self._forget(stream_id)

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> bool:
        """Queue stream bytes (consumed before returning; views are copied). True when all of
        them went out, False when some wait for the peer's window: pause the source until
        `StreamWritable`."""
        if stream_id not in self._open:
            raise TunnelStateError(f"stream {stream_id} is not open for sending")
        out = self._out.get(stream_id)
        if out is not None:
            out.chunks.append(bytes(data))
            out.size += len(data)
            return False
        h = self._h2
        view = memoryview(data)
        sent = 0
        size = len(view)
        while sent < size:
            room = h.local_flow_control_window(stream_id)
            if room <= 0:
                break
            n = min(room, h.max_outbound_frame_size, size - sent)
            h.send_data(
                stream_id, data if n == size and type(data) is bytes else view[sent : sent + n]
            )
            sent += n
        if sent == size:
            return True
        out = self._out[stream_id] = _Out()
        out.chunks.append(bytes(view[sent:]))
        out.size = size - sent
        return False

    def buffered(self, stream_id: int) -> int:
        """Bytes of the stream waiting for the peer's window."""
        out = self._out.get(stream_id)
        return out.size if out is not None else 0

    def end(self, stream_id: int) -> None:
        """Half-close the stream (END_STREAM) once what waits has been sent."""
        if stream_id not in self._open:
            return
        out = self._out.get(stream_id)
        if out is not None:
            out.end = True
            return
        self._open.discard(stream_id)
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self._h2.end_stream(stream_id)

    def reset(self, stream_id: int, code: int = CANCEL) -> None:
        """Reset the stream (RST_STREAM): both directions end now, buffered bytes are dropped."""
        self._forget(stream_id)
        with contextlib.suppress(h2.exceptions.ProtocolError):  # closed, or never on the wire
            self._h2.reset_stream(stream_id, code)

    def goaway(self, code: int = NO_ERROR, reason: str | None = None) -> None:
        """No new streams from the peer; open ones go on; `reason` (a reason code) goes with
        it. Idempotent."""
        if self.goaway_sent or self.failed is not None:
            return
        self.goaway_sent = True
        self._goaway_last = self._h2.highest_inbound_stream_id
        data = reason.encode("ascii") if reason is not None else None
        self._h2.close_connection(error_code=code, additional_data=data)

    def data_to_send(self) -> bytes:
        """Bytes to write to the TLS connection now (b"" if none)."""
        return self._h2.data_to_send()

    @property
    def peer_max_streams(self) -> int:
        """How many streams the peer lets us open at a time."""
        return int(self._h2.remote_settings.max_concurrent_streams)

    @property
    def open_streams(self) -> int:
        """Streams not ended in both directions (nor reset)."""
        return len(self._open | self._unacked.keys())

    # --- h2 events ---------------------------------------------------------------------------

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        length = event.flow_controlled_length or 0
        self._conn_unacked += length
        if event.data:
            self._events.append(StreamData(stream_id, event.data))
        if length and event.stream_ended is None:  # an ended stream's window needs no update
            if stream_id in self._held:
                self._unacked[stream_id] = self._unacked.get(stream_id, 0) + length
            else:
                pending = self._unacked.get(stream_id, 0) + length
                if pending >= self._stream_ack_at:
                    self._reopen(stream_id, pending)
                else:
                    self._unacked[stream_id] = pending

    def _reopen(self, stream_id: int, amount: int) -> None:
        self._unacked[stream_id] = 0
        with contextlib.suppress(KeyError, h2.exceptions.ProtocolError):  # closed meanwhile
            self._h2.increment_flow_control_window(amount, stream_id=stream_id)

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        headers = dict(event.headers or ())
        authority = headers.get(b":authority")
        if headers.get(b":method") != b"CONNECT" or not authority or b":protocol" in headers:
            self.refuse(stream_id, 405, "TUNNEL_PROTOCOL_ERROR")
            return
        if self.goaway_sent and stream_id > self._goaway_last:
            self._h2.reset_stream(stream_id, REFUSED_STREAM)  # after our GOAWAY: retry elsewhere
            return
        raw = headers.get(TUNNEL_HEADER)
        tunnel_id = raw.decode() if raw is not None and _TUNNEL_ID.fullmatch(raw) else None
        self._unacked.setdefault(stream_id, 0)
        try:
            text = authority.decode("ascii")
        except UnicodeDecodeError:
            text = authority.decode("ascii", "replace")
        self._events.append(StreamRequested(stream_id, text, tunnel_id))

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream_id = event.stream_id
        headers = dict(event.headers or ())
        try:
            status = int(headers.get(b":status", b"0"))
        except ValueError:
            status = 0
        if 200 <= status < 300:
            self._unacked.setdefault(stream_id, 0)
            self._events.append(StreamAccepted(stream_id))
        else:
            raw = headers.get(REASON_HEADER)
            reason = raw.decode() if raw is not None and _REASON.fullmatch(raw) else None
            self._forget(stream_id)
            self._events.append(StreamRefused(stream_id, status, reason))

    def _on_ended(self, event: h2.events.StreamEnded) -> None:
        stream_id = event.stream_id
        if stream_id not in self._unacked and stream_id not in self._open:
            return  # a refused stream's end, or one we reset
        self._unacked.pop(stream_id, None)
        self._held.discard(stream_id)
        self._events.append(StreamEnded(stream_id))

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream_id = event.stream_id
        known = stream_id in self._open or stream_id in self._unacked
        self._forget(stream_id)
        if known:
            self._events.append(
                StreamReset(stream_id, int(event.error_code or 0), event.remote_reset)
            )

    def _on_window(self, _event: h2.events.Event) -> None:
        if self._out:
            self._flush_waiting()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.goaway_received = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        code = int(event.error_code or 0)
        raw = event.additional_data
        reason = raw.decode() if raw and _REASON.fullmatch(raw) else None
        self._events.append(GoAway(last, code, reason))
        # Streams above `last` were never processed by the peer: refused, safe to retry.
        for stream_id in sorted(self._open | self._unacked.keys()):
            if stream_id > last and (stream_id % 2 == 1) == self.client:
                self._forget(stream_id)
                self._events.append(StreamReset(stream_id, REFUSED_STREAM, True))

    # --- internals ---------------------------------------------------------------------------

    def _flush_waiting(self) -> None:
        """Hand opened windows to waiting streams round-robin, one frame each per turn."""
        h = self._h2
        frame = h.max_outbound_frame_size
        while self._out and h.outbound_flow_control_window > 0:
            progressed = False
            for stream_id in list(self._out):
                out = self._out[stream_id]
                room = min(h.local_flow_control_window(stream_id), frame)
                if room <= 0:
                    continue
                chunk = out.chunks[0]
                if len(chunk) > room:
                    h.send_data(stream_id, chunk[:room])
                    out.chunks[0] = chunk[room:]
                    out.size -= room
                else:
                    h.send_data(stream_id, chunk)
                    out.chunks.pop(0)
                    out.size -= len(chunk)
                progressed = True
                if not out.chunks:
                    del self._out[stream_id]
                    self._events.append(StreamWritable(stream_id))
                    if out.end:
                        self.end(stream_id)
            if not progressed:
                break

    def _forget(self, stream_id: int) -> None:
        self._open.discard(stream_id)
        self._out.pop(stream_id, None)
        self._unacked.pop(stream_id, None)
        self._held.discard(stream_id)

    def _fail(self, detail: str) -> list[TunnelEvent]:
        self.failed = detail
        self._out.clear()
        self._open.clear()
        self._unacked.clear()
        self._held.clear()
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
        events, self._events = self._events, []
        events.append(TunnelFailed(detail))
        return events
