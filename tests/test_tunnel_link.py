"""Tunnel streams over real loopback TLS, in process: the `Stream` contract through a tunnel
(order, half-close, resets both ways), a cut tunnel, backpressure and memory, fairness between a
bulk stream and a ping-pong stream, under asyncio and uvloop.

    caller --plain--> entry (client tunnel) ==TLS, HTTP/2 streams==> server tunnel --plain--> service
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from netshield.net.streams import HIGH_WATER, SOCKET_READ_SIZE
from netshield.reasons import Reason
from netshield.tunnel.link import peers_reason
from netshield.tunnel.protocol import TunnelFull, TunnelSettings
from tests.test_tls_pki import Pki
from tests.tunnel_support import Sink, entry, serve_tcp, tunnel_pair

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}
GUARD = 60  # seconds: a hang guard, never a timing assert


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


class Echo(asyncio.Protocol):
    """Echoes what it reads; on EOF it half-closes too (after the echo)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.write_eof()
        return True


async def _call(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    got = await reader.read()
    writer.close()
    return got


@pytest.mark.parametrize("runner", RUNNERS)
def test_streams_carry_every_byte_in_order_both_ways_and_half_close(pki: Pki, runner: str) -> None:
    async def main() -> None:
        server, port = await serve_tcp(Echo)
        async with tunnel_pair(pki, port) as ends, entry(ends) as front:
            payloads = [os.urandom(n) for n in (0, 1, 16_384, 300_000, 2_000_000, 77)]
            async with asyncio.timeout(GUARD):
                got = await asyncio.gather(*(_call(front.port, p) for p in payloads))
            assert [hashlib.sha256(g).hexdigest() for g in got] == [
                hashlib.sha256(p).hexdigest() for p in payloads
            ]
            try:
                async with asyncio.timeout(5):
                    while len(front.results) < len(payloads) or len(ends.results) < len(payloads):
                        await asyncio.sleep(0.01)
            except TimeoutError:
                for t in (ends.client, ends.server):
                    for sid, st in t.streams.items():
                        print(
                            t.tunnel_id,
                            sid,
                            st._read_eof,
                            st._write_eof,
                            st.bytes_read,
                            st._relaying,
                            st._early,
                            st._other
                            and (
                                st._other._read_eof,
                                st._other._write_eof,
                                st._other.closed.done(),
                            ),
                            t.protocol._out.keys(),
                            t.protocol._open,
                            t.protocol._unacked,
                        )
                raise
            assert {r.close_reason for r in front.results} == {Reason.CLOSED}
            assert {r.close_reason for r in ends.results} == {Reason.CLOSED}
            assert sorted(r.bytes_up for r in front.results) == sorted(map(len, payloads))
            ids = sorted(s.stream_id for s in front.streams)
            assert ids == list(range(1, 2 * len(payloads), 2))  # one tunnel, many streams
            assert ends.client.carried == len(payloads)
            assert not ends.client.streams and not ends.server.streams
        server.close()

    RUNNERS[runner](main())


@pytest.mark.parametrize("runner", RUNNERS)
def test_the_other_direction_keeps_flowing_after_a_half_close(pki: Pki, runner: str) -> None:
    """The caller half-closes first; the service answers afterwards, then closes."""

    class Late(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.got = b""

        def data_received(self, data: bytes) -> None:
            self.got += data

        def eof_received(self) -> bool:
            asyncio.get_running_loop().call_later(
                0.05, lambda: (self.transport.write(b"late:" + self.got), self.transport.close())
            )
            return True

    async def main() -> None:
        server, port = await serve_tcp(Late)
        async with tunnel_pair(pki, port) as ends, entry(ends) as front:
            async with asyncio.timeout(GUARD):
                assert await _call(front.port, b"question") == b"late:question"
        server.close()

    RUNNERS[runner](main())


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_callers_tcp_reset_becomes_rst_stream_and_a_tcp_reset_at_the_service(
    pki: Pki, runner: str
) -> None:
    async def main() -> None:
        seen: list[str] = []

        class Watch(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                seen.append(type(exc).__name__ if exc else "eof")

            def eof_received(self) -> bool:
                seen.append("fin")
                return False

        server, port = await serve_tcp(Watch)
        async with tunnel_pair(pki, port) as ends, entry(ends) as front:
            _r, writer = await asyncio.open_connection("127.0.0.1", front.port)
            writer.write(b"hello")
            await writer.drain()
            async with asyncio.timeout(GUARD):
                while not ends.client.streams or not ends.server.streams:
                    await asyncio.sleep(0.01)
            _reset(writer)
            async with asyncio.timeout(GUARD):
                while not front.results or not ends.results or not seen:
                    await asyncio.sleep(0.01)
            assert front.results[0].close_reason is Reason.PEER_RESET  # the caller reset
            assert ends.results[0].close_reason is Reason.PEER_RESET  # RST_STREAM arrived
            assert seen == ["ConnectionResetError"]  # ... and became a TCP reset, not a FIN
        server.close()

    RUNNERS[runner](main())


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_services_tcp_reset_reaches_the_caller_as_a_tcp_reset(pki: Pki, runner: str) -> None:
    class Resetter(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

    async def main() -> None:
        server, port = await serve_tcp(Resetter)
        async with tunnel_pair(pki, port) as ends, entry(ends) as front:
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            writer.write(b"boom")
            async with asyncio.timeout(GUARD):
                with pytest.raises(ConnectionResetError):
                    await reader.read()
                while not front.results:
                    await asyncio.sleep(0.01)
            assert front.results[0].close_reason is Reason.UPSTREAM_RESET
            assert ends.results[0].close_reason is Reason.UPSTREAM_RESET
            assert not ends.client.closed.done()  # the tunnel outlives its stream
        server.close()

    RUNNERS[runner](main())


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_cut_tunnel_closes_every_stream_and_each_says_how_far_it_got(
    pki: Pki, runner: str
) -> None:
    async def main() -> None:
        sinks: list[Sink] = []

        def sink() -> Sink:
            sinks.append(Sink())
            return sinks[-1]

        server, port = await serve_tcp(sink)
        async with tunnel_pair(pki, port) as ends, entry(ends) as front:
            writers = []
            for i in range(3):
                _r, writer = await asyncio.open_connection("127.0.0.1", front.port)
                writer.write(b"x" * (100_000 * (i + 1)))
                writers.append(writer)
            async with asyncio.timeout(GUARD):
                while len(sinks) < 3 or sum(s.received for s in sinks) < 600_000:
                    await asyncio.sleep(0.01)
            ends.server_tls.abort()  # the tunnel's TCP connection is cut (a reset)
            async with asyncio.timeout(GUARD):
                while len(front.results) < 3 or len(ends.results) < 3:
                    await asyncio.sleep(0.01)
            # the caller side sees its upstream (the tunnel) reset, the service side its
            # downstream: the same reasons as one connection per stream
            assert {r.close_reason for r in front.results} == {Reason.UPSTREAM_RESET}
            assert {r.close_reason for r in ends.results} == {Reason.PEER_RESET}
            assert all("tunnel" in r.detail for r in front.results)
            assert sorted(r.bytes_up for r in front.results) == [100_000, 200_000, 300_000]
            assert sorted(r.bytes_up for r in ends.results) == [100_000, 200_000, 300_000]
            assert ends.client.closed.done()
            with pytest.raises(TunnelFull):
                ends.client.open("svc")
            for writer in writers:
                writer.close()
        server.close()

    RUNNERS[runner](main())


def test_a_service_that_stops_reading_holds_memory_to_one_window(pki: Pki) -> None:
    """Backpressure end to end: the service reads nothing, the caller keeps writing; what the
    two tunnel ends hold stays within the stream window plus the transport buffers."""
    window = 256 * 1024

    async def main() -> None:
        transports: list[asyncio.Transport] = []

        class Stalled(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transport.pause_reading()  # type: ignore[attr-defined]
                transports.append(transport)  # type: ignore[arg-type]

        server, port = await serve_tcp(Stalled)
        settings = TunnelSettings(stream_window=window, connection_window=4 * window)
        async with tunnel_pair(pki, port, settings=settings) as ends, entry(ends) as front:
            _r, writer = await asyncio.open_connection("127.0.0.1", front.port)
            chunk = b"y" * 65_536
            written = 0
            async with asyncio.timeout(GUARD):
                # write until the caller's own socket stops taking bytes for a while
                while written < 200 * 1024 * 1024:
                    writer.write(chunk)
                    written += len(chunk)
                    try:
                        await asyncio.wait_for(writer.drain(), 0.5)
                    except TimeoutError:
                        break
            assert written < 200 * 1024 * 1024, "the caller was never held back"
            await asyncio.sleep(0.2)
            stream = front.streams[0]
            client_buffered = ends.client.protocol.buffered(stream.stream_id)
            assert not ends.results  # still running
            (server_stream,) = ends.server.streams.values()
            in_transport = server_stream._other.transport.get_write_buffer_size()  # type: ignore[union-attr]
            assert client_buffered <= SOCKET_READ_SIZE  # one read past the window, no more
            assert in_transport <= window + HIGH_WATER + SOCKET_READ_SIZE
            assert server_stream._intake_held  # its window stays closed while the service is full
            writer.transport.abort()
        server.close()

    asyncio.run(main())


@pytest.mark.slow
def test_a_bulk_upload_does_not_starve_a_ping_pong_stream_beside_it(pki: Pki) -> None:
    """1 GiB uploads on one stream of the tunnel while another stream ping-pongs: the ping-pong
    stream's p99 stays within a bound of its own unloaded baseline, measured in this test."""
    total = 1 << 30

    async def ping_pong(port: int, rounds: int) -> list[float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            writer.write(b"p" * 64)
            await reader.readexactly(64)
            times.append(time.perf_counter() - t0)
        writer.close()
        return times

    def p99(samples: list[float]) -> float:
        return sorted(samples)[int(len(samples) * 0.99) - 1]

    async def main() -> None:
        sinks: list[Sink] = []

        class Service(Sink):
            """Echoes a ping-pong stream (first byte p), counts an upload."""

            def data_received(self, data: bytes) -> None:
                if not self.received:
                    self.echo = data[:1] == b"p"
                super().data_received(data)

        def service() -> asyncio.Protocol:
            sinks.append(Service())
            return sinks[-1]

        server, port = await serve_tcp(service)
        async with tunnel_pair(pki, port) as ends, entry(ends) as front:
            async with asyncio.timeout(GUARD * 5):
                baseline = await ping_pong(front.port, 300)
                _r, bulk = await asyncio.open_connection("127.0.0.1", front.port)

                async def upload() -> None:
                    chunk = b"u" * (1 << 20)
                    for _ in range(total // len(chunk)):
                        bulk.write(chunk)
                        await bulk.drain()

                started = time.perf_counter()
                uploading = asyncio.create_task(upload())
                while not any(s.received > 16 << 20 for s in sinks):  # the upload is under way
                    await asyncio.sleep(0.01)
                loaded: list[float] = []
                while not uploading.done():
                    loaded += await ping_pong(front.port, 50)
                await uploading
                took = time.perf_counter() - started
        server.close()
        base, load = p99(baseline), p99(loaded)
        print(
            f"ping-pong p99 unloaded {base * 1e3:.2f} ms, beside the upload {load * 1e3:.2f} ms; "
            f"the upload took {took:.2f} s"
        )
        # Starved, a ping-pong would wait behind the whole GiB: one round per upload, p99 near
        # its duration. With per-stream windows it waits behind a few buffers of bulk bytes, so
        # it keeps going round while the upload runs (the bound is the upload's own duration,
        # not a time of this machine).
        assert len(loaded) >= 100, "the ping-pong stream was starved while the upload ran"
        assert load <= took / 20, (base, load, took)

    uvloop.run(main())


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_peer_that_breaks_http2_ends_the_tunnel_and_its_streams_say_why(
    pki: Pki, runner: str
) -> None:
    async def main() -> None:
        server, port = await serve_tcp(Echo)
        async with tunnel_pair(pki, port) as ends, entry(ends) as front:
            _r, writer = await asyncio.open_connection("127.0.0.1", front.port)
            writer.write(b"hello")
            async with asyncio.timeout(GUARD):
                while not front.streams:  # answered and relaying
                    await asyncio.sleep(0.01)
                ends.server_tls.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA, stream 0
                while not front.results:
                    await asyncio.sleep(0.01)
                await ends.client.closed
            assert front.results[0].close_reason is Reason.TUNNEL_PROTOCOL_ERROR
            assert "broke the HTTP/2 protocol" in front.results[0].detail
            assert ends.client.close_reason is Reason.TUNNEL_PROTOCOL_ERROR
            writer.close()
        server.close()

    RUNNERS[runner](main())


@pytest.mark.parametrize(
    ("given", "dialled", "recorded"),
    [
        (Reason.CREDENTIALS_EXPIRED, True, Reason.PEER_CERT_EXPIRED),  # the peer's own expired
        (Reason.PEER_CERT_EXPIRED, True, Reason.CREDENTIALS_EXPIRED),  # ours, as the peer says
        (Reason.PEER_REVOKED, True, Reason.UPSTREAM_RESET),  # we are revoked: the peer cut us
        (Reason.POLICY_STALE, False, Reason.PEER_RESET),
        (Reason.DRAINED, True, Reason.DRAINED),
        (Reason.TUNNEL_LIFETIME, False, Reason.TUNNEL_LIFETIME),
    ],
)
def test_a_peers_reason_is_recorded_in_this_sidecars_words(
    given: Reason, dialled: bool, recorded: Reason
) -> None:
    assert peers_reason(given, dialled=dialled) is recorded
