"""The sans-IO tunnel protocol: two `TunnelProtocol`s wired in memory, no sockets."""

from __future__ import annotations

import h2.connection
import h2.events
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.tunnel.protocol import (
    GoAway,
    StreamAccepted,
    StreamData,
    StreamEnded,
    StreamRefused,
    StreamRequested,
    StreamReset,
    StreamWritable,
    TunnelEvent,
    TunnelFailed,
    TunnelFull,
    TunnelProtocol,
    TunnelSettings,
    TunnelStateError,
)


def pump(a: TunnelProtocol, b: TunnelProtocol) -> tuple[list[TunnelEvent], list[TunnelEvent]]:
    """Exchange bytes until both are quiet; the events each side saw."""
    seen_a: list[TunnelEvent] = []
    seen_b: list[TunnelEvent] = []
    for _ in range(10_000):
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return seen_a, seen_b
        if to_b:
            seen_b += b.receive(to_b)
        if to_a:
            seen_a += a.receive(to_a)
    raise AssertionError("the tunnel never went quiet")


def connected(
    client_settings: TunnelSettings | None = None, server_settings: TunnelSettings | None = None
) -> tuple[TunnelProtocol, TunnelProtocol]:
    client = TunnelProtocol(client=True, settings=client_settings)
    server = TunnelProtocol(client=False, settings=server_settings)
    pump(client, server)
    return client, server


def data_of(events: list[TunnelEvent], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, StreamData) and e.stream_id == stream_id
    )


def open_accepted(client: TunnelProtocol, server: TunnelProtocol, authority: str = "orders") -> int:
    sid = client.open(authority, tunnel_id="tun0000000000001")
    _c, s = pump(client, server)
    assert s == [StreamRequested(sid, authority, "tun0000000000001")]
    server.accept(sid)
    c, _s = pump(client, server)
    assert c == [StreamAccepted(sid)]
    return sid


def test_a_stream_carries_bytes_both_ways_and_half_closes_each_direction() -> None:
    client, server = connected()
    sid = open_accepted(client, server)
    assert client.send(sid, b"hello ")
    assert client.send(sid, memoryview(b"tunnel"))
    client.end(sid)
    c, s = pump(client, server)
    assert data_of(s, sid) == b"hello tunnel"
    assert s[-1] == StreamEnded(sid)
    # the other direction still flows after the client's half-close
    assert server.send(sid, b"answer")
    server.end(sid)
    c, s = pump(client, server)
    assert data_of(c, sid) == b"answer"
    assert c[-1] == StreamEnded(sid)
    assert client.open_streams == 0
    assert server.open_streams == 0


def test_a_stream_that_was_not_ended_stays_open_on_both_sides() -> None:
    client, server = connected()
    sid = open_accepted(client, server)
    client.send(sid, b"x")
    pump(client, server)
    assert client.open_streams == 1
    assert server.open_streams == 1


def test_a_refused_stream_carries_the_reason_code_and_ends() -> None:
    client, server = connected()
    sid = client.open("orders")
    pump(client, server)
    server.refuse(sid, 403, "PEER_NOT_AUTHORIZED")
    c, _s = pump(client, server)
    assert c == [StreamRefused(sid, 403, "PEER_NOT_AUTHORIZED")]
    assert client.open_streams == 0
    with pytest.raises(TunnelStateError):
        client.send(sid, b"late")


def test_a_reset_reaches_the_peer_as_a_remote_reset_and_drops_waiting_bytes() -> None:
    client, server = connected()
    sid = open_accepted(client, server)
    client.send(sid, b"before")
    client.reset(sid)
    _c, s = pump(client, server)
    assert s[-1] == StreamReset(sid, 8, True)  # CANCEL
    assert server.open_streams == 0
    assert client.open_streams == 0


def test_streams_are_independent_a_reset_leaves_the_neighbour_flowing() -> None:
    client, server = connected()
    one, two = open_accepted(client, server), open_accepted(client, server)
    client.reset(one)
    client.send(two, b"still here")
    _c, s = pump(client, server)
    assert data_of(s, two) == b"still here"
    assert StreamReset(one, 8, True) in s


def test_the_peers_stream_limit_is_kept_and_frees_up_when_a_stream_ends() -> None:
    client, server = connected(server_settings=TunnelSettings(max_streams=2))
    first = open_accepted(client, server)
    open_accepted(client, server)
    with pytest.raises(TunnelFull):
        client.open("orders")
    client.reset(first)
    pump(client, server)
    assert open_accepted(client, server) > 0


def test_goaway_refuses_new_streams_and_lets_open_ones_finish() -> None:
    client, server = connected()
    sid = open_accepted(client, server)
    server.goaway(reason="DRAINED")
    c, _s = pump(client, server)
    assert c == [GoAway(sid, 0, "DRAINED")]
    with pytest.raises(TunnelFull):
        client.open("orders")
    client.send(sid, b"after goaway")
    client.end(sid)
    _c, s = pump(client, server)
    assert data_of(s, sid) == b"after goaway"


def test_a_request_that_is_not_connect_is_refused_without_an_event() -> None:
    raw = h2.connection.H2Connection()
    raw.initiate_connection()
    server = TunnelProtocol(client=False)
    server.receive(raw.data_to_send())
    raw.receive_data(server.data_to_send())
    raw.send_headers(
        1,
        [(":method", "GET"), (":scheme", "https"), (":authority", "orders"), (":path", "/")],
        end_stream=True,
    )
    assert server.receive(raw.data_to_send()) == []
    answer = raw.receive_data(server.data_to_send())
    response = next(e for e in answer if isinstance(e, h2.events.ResponseReceived))
    assert (b":status", b"405") in response.headers


def test_garbage_from_the_peer_fails_the_tunnel_once_with_goaway() -> None:
    server = TunnelProtocol(client=False)
    events = server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(events) == 1
    assert isinstance(events[0], TunnelFailed)
    assert server.data_to_send()  # the GOAWAY
    assert server.receive(b"more") == []


def test_a_held_stream_ties_up_only_its_own_window_and_its_neighbour_keeps_flowing() -> None:
    window = 128 * 1024
    tunnel = TunnelSettings(stream_window=window, connection_window=2 * window)
    client, server = connected(client_settings=tunnel, server_settings=tunnel)
    bulk, small = open_accepted(client, server), open_accepted(client, server)
    server.hold(bulk, True)  # the bulk stream's consumer is full
    chunk = b"b" * 16_384
    sent = 0
    taken = 0
    while True:  # the sender stops when the bulk stream's window is used up
        more = client.send(bulk, chunk)
        sent += len(chunk)
        _c, s = pump(client, server)
        taken += len(data_of(s, bulk))
        if not more:
            break
        assert sent < 10 * window, "the held stream's window never closed"
    assert taken == window  # exactly one stream window delivered, then the sender waits
    assert client.buffered(bulk) == sent - window
    # more bulk than the connection window was sent in total over the tunnel's life below,
    # yet the neighbour is never blocked: the connection window reopens on arrival
    for i in range(5):
        assert client.send(small, b"ping %d" % i)
        _c, s = pump(client, server)
        assert data_of(s, small) == b"ping %d" % i
    server.hold(bulk, False)  # the consumer drained: the rest flows, the source may resume
    c, s = pump(client, server)
    assert len(data_of(s, bulk)) == sent - window
    assert StreamWritable(bulk) in c
    assert client.buffered(bulk) == 0


def test_end_after_buffered_bytes_waits_for_them() -> None:
    window = 65_535
    tunnel = TunnelSettings(stream_window=window)
    client, server = connected(server_settings=tunnel)
    sid = open_accepted(client, server)
    server.hold(sid, True)
    payload = b"z" * (3 * window)
    assert not client.send(sid, payload)
    client.end(sid)
    _c, s = pump(client, server)
    assert StreamEnded(sid) not in s
    server.hold(sid, False)
    got = data_of(s, sid)
    for _ in range(10):
        _c, s = pump(client, server)
        got += data_of(s, sid)
        server.hold(sid, False)
        if StreamEnded(sid) in s:
            break
    assert got == payload
    assert StreamEnded(sid) in s


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="stream_window"):
        TunnelSettings(stream_window=1000)
    with pytest.raises(ValueError, match="connection_window"):
        TunnelSettings(stream_window=1 << 20, connection_window=1 << 19)
    with pytest.raises(ValueError, match="max_streams"):
        TunnelSettings(max_streams=0)


# --- chunking does not matter ------------------------------------------------------------------
def _script() -> tuple[bytes, list[TunnelEvent]]:
    """What a client sends over a whole exchange, and the events a server sees reading it whole."""
    client = TunnelProtocol(client=True)
    server = TunnelProtocol(client=False)
    wire = bytearray()
    events: list[TunnelEvent] = []

    def step() -> None:
        out = client.data_to_send()
        wire.extend(out)
        events.extend(server.receive(out))
        client.receive(server.data_to_send())

    step()
    a, b = client.open("orders"), client.open("payments")
    step()
    server.accept(a)
    server.accept(b)
    step()
    client.send(a, b"first stream " * 300)
    client.send(b, b"second")
    client.end(b)
    client.send(a, bytes(range(256)) * 100)
    client.reset(a)
    step()
    return bytes(wire), events


def _merged(events: list[TunnelEvent]) -> list[object]:
    """Events with each stream's consecutive data joined (chunking may split a frame's data)."""
    out: list[object] = []
    for e in events:
        if isinstance(e, StreamData) and out and isinstance(out[-1], StreamData):
            last = out[-1]
            if last.stream_id == e.stream_id:
                out[-1] = StreamData(e.stream_id, last.data + e.data)
                continue
        out.append(e)
    return out


WIRE, WHOLE = _script()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4096), max_size=60))
def test_any_chunking_of_the_bytes_gives_the_same_events(cuts: list[int]) -> None:
    server = TunnelProtocol(client=False)
    events: list[TunnelEvent] = []
    pos = 0
    for size in cuts:
        events += server.receive(WIRE[pos : pos + size])
        pos += size
    events += server.receive(WIRE[pos:])
    assert _merged(events) == _merged(WHOLE)


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    server = TunnelProtocol(client=False)
    events: list[TunnelEvent] = []
    for i in range(len(WIRE)):
        events += server.receive(WIRE[i : i + 1])
    assert _merged(events) == _merged(WHOLE)
    assert any(isinstance(e, StreamReset) for e in WHOLE)
    assert any(isinstance(e, StreamEnded) for e in WHOLE)


def test_the_end_arrives_even_when_it_follows_a_window_worth_of_data_in_one_read() -> None:
    """The window update for the data must not make the stream's end go missing (h2 has
    closed the stream by the time the data's event is handled)."""
    client, server = connected()
    sid = open_accepted(client, server)
    client.end(sid)
    pump(client, server)
    assert server.send(sid, b"d" * (client.settings.stream_window // 2))
    server.end(sid)
    events = client.receive(server.data_to_send())  # data and END_STREAM in one read
    assert events[-1] == StreamEnded(sid)
    assert client.open_streams == 0


def test_an_oversized_frame_is_refused_from_its_header_without_buffering_it() -> None:
    _client, server = connected()
    events = server.receive(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")  # 16 MiB DATA announced
    assert len(events) == 1 and isinstance(events[0], TunnelFailed)
    assert "overlong frame" in events[0].detail
