"""The relay on real loopback sockets, through a pair of netshield relays:

    client --plain--> relay A (plain -> TLS client) --mTLS--> relay B (TLS server -> plain) --> backend

Integrity (sha256 both ways), many connections at once, half-close both ways, idle timeout,
resets, closing from outside, under asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from netshield.net.relay import RelayHandle, RelayResult, relay
from netshield.net.streams import PlainStream, TlsStream
from netshield.reasons import Reason
from netshield.tls.contexts import client_context, server_context
from tests.test_streams_tls import Acceptor
from tests.test_tls_pki import Pki

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@dataclass
class RelayPair:
    """Relay A (outbound) and relay B (inbound) in front of a backend; results per side."""

    a_port: int
    results_a: list[RelayResult] = field(default_factory=list)
    results_b: list[RelayResult] = field(default_factory=list)
    handles_b: list[RelayHandle] = field(default_factory=list)

    async def wait_results(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.results_a) < count or len(self.results_b) < count:
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def relay_pair(
    pki: Pki,
    backend_port: int,
    *,
    idle_timeout: float = 30.0,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[RelayPair]:
    loop = asyncio.get_running_loop()
    server_ctx = server_context(pki.creds("orders"))
    client_ctx = client_context(pki.creds("frontend"))
    pair = RelayPair(0)

    async def inbound(sock: socket.socket) -> None:
        _, tls = await loop.connect_accepted_socket(
            lambda: TlsStream(server_ctx, server_side=True), sock
        )
        peer = await tls.handshake(5)
        assert peer.service == "frontend"
        _, up = await loop.create_connection(PlainStream, "127.0.0.1", backend_port)
        handle = RelayHandle()
        pair.handles_b.append(handle)
        result = await relay(tls, up, idle_timeout=idle_timeout, stop=stop, handle=handle)
        pair.results_b.append(result)

    async with Acceptor(inbound) as b:

        async def outbound(sock: socket.socket) -> None:
            _, down = await loop.connect_accepted_socket(PlainStream, sock)
            _, tls = await loop.create_connection(
                lambda: TlsStream(client_ctx, server_side=False), "127.0.0.1", b.port
            )
            peer = await tls.handshake(5)
            assert peer.service == "orders"
            pair.results_a.append(await relay(down, tls, idle_timeout=idle_timeout, stop=stop))

        async with Acceptor(outbound) as a:
            pair.a_port = a.port
            yield pair
        assert not a.errors and not b.errors, (a.errors, b.errors)


@contextlib.asynccontextmanager
async def backend(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(256 * 1024):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()


async def exchange(port: int, payload: bytes) -> bytes:
    """Send `payload`, half-close, and read everything until EOF (concurrently)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        view = memoryview(payload)
        for offset in range(0, len(view), 100_000):
            writer.write(view[offset : offset + 100_000])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = await reader.read()
    await sender
    writer.close()
    return received


# --- integrity and concurrency --------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_large_payload_arrives_intact_both_ways(pki: Pki, runner: str) -> None:
    payload = os.urandom(24 * 1024 * 1024 + 12345)

    async def scenario() -> None:
        async with backend(echo) as port, relay_pair(pki, port) as pair:
            received = await exchange(pair.a_port, payload)
            await pair.wait_results(1)
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        for result in (pair.results_a[0], pair.results_b[0]):
            assert result.close_reason is Reason.CLOSED
            assert result.bytes_up == result.bytes_down == len(payload)

    RUNNERS[runner](scenario())


@pytest.mark.parametrize("runner", RUNNERS)
def test_many_connections_at_once_each_get_their_own_bytes(pki: Pki, runner: str) -> None:
    payloads = [os.urandom(64 * 1024 + i * 997) for i in range(100)]

    async def scenario() -> None:
        async with backend(echo) as port, relay_pair(pki, port) as pair:
            received = await asyncio.gather(*(exchange(pair.a_port, p) for p in payloads))
            await pair.wait_results(len(payloads))
        assert [hashlib.sha256(r).digest() for r in received] == [
            hashlib.sha256(p).digest() for p in payloads
        ]
        assert {r.close_reason for r in pair.results_a + pair.results_b} == {Reason.CLOSED}
        assert sorted(r.bytes_up for r in pair.results_b) == sorted(len(p) for p in payloads)

    RUNNERS[runner](scenario())


# --- half-close -----------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_server_answers_after_the_clients_eof(pki: Pki, runner: str) -> None:
    """The client shuts down writing; the backend reads to EOF and only then answers."""

    async def answer_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's EOF
        writer.write(b"got " + hashlib.sha256(request).hexdigest().encode())
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with backend(answer_after_eof) as port, relay_pair(pki, port) as pair:
            reader, writer = await asyncio.open_connection("127.0.0.1", pair.a_port)
            writer.write(b"request body")
            writer.write_eof()  # shutdown(SHUT_WR)
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await pair.wait_results(1)
        assert answer == b"got " + hashlib.sha256(b"request body").hexdigest().encode()
        assert pair.results_a[0].close_reason is Reason.CLOSED

    RUNNERS[runner](scenario())


def test_client_keeps_sending_after_the_servers_eof(pki: Pki) -> None:
    """The other direction: the backend says hello and shuts down writing, then still reads."""
    received: list[bytes] = []

    async def hello_then_listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.write_eof()
        received.append(await reader.read())
        writer.close()

    async def scenario() -> None:
        async with backend(hello_then_listen) as port, relay_pair(pki, port) as pair:
            reader, writer = await asyncio.open_connection("127.0.0.1", pair.a_port)
            assert await asyncio.wait_for(reader.read(), 5) == b"hello"  # EOF seen
            writer.write(b"late data after the server's EOF")
            writer.write_eof()
            await pair.wait_results(1)
            writer.close()
        assert received == [b"late data after the server's EOF"]
        assert pair.results_b[0].close_reason is Reason.CLOSED
        assert pair.results_b[0].bytes_up == len(received[0])

    asyncio.run(scenario())


# --- how relays end -------------------------------------------------------------------------------


async def idle_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(1024):
            pass
    writer.close()


async def test_a_silent_connection_hits_the_idle_timeout(pki: Pki) -> None:
    async with backend(idle_backend) as port, relay_pair(pki, port, idle_timeout=0.3) as pair:
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.a_port)
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        elapsed = asyncio.get_running_loop().time() - started
        await pair.wait_results(1)
        writer.close()
    assert 0.3 <= elapsed < 1.5
    assert pair.results_a[0].close_reason is Reason.IDLE_TIMEOUT


async def test_a_trickling_connection_does_not_hit_the_idle_timeout(pki: Pki) -> None:
    async with backend(idle_backend) as port, relay_pair(pki, port, idle_timeout=0.3) as pair:
        _, writer = await asyncio.open_connection("127.0.0.1", pair.a_port)
        for _ in range(8):  # 0.8 s in total, never 0.3 s without a byte
            writer.write(b".")
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write_eof()
        await pair.wait_results(1)
        writer.close()
    assert pair.results_a[0].close_reason is Reason.CLOSED
    assert pair.results_a[0].bytes_up == 8


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_a_client_reset_is_peer_reset(pki: Pki) -> None:
    async with backend(echo) as port, relay_pair(pki, port) as pair:
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.a_port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        reset(writer)
        await pair.wait_results(1)
    assert pair.results_a[0].close_reason is Reason.PEER_RESET
    # B saw A abort its TLS connection: a reset of B's downstream too.
    assert pair.results_b[0].close_reason is Reason.PEER_RESET


async def test_a_backend_reset_is_upstream_reset(pki: Pki) -> None:
    async def reset_after_ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        reset(writer)

    async with backend(reset_after_ping) as port, relay_pair(pki, port) as pair:
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.a_port)
        writer.write(b"ping")
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        await pair.wait_results(1)
        writer.close()
    assert pair.results_b[0].close_reason is Reason.UPSTREAM_RESET
    assert pair.results_a[0].close_reason is Reason.UPSTREAM_RESET


async def test_a_relay_closed_from_outside_reports_the_given_reason(pki: Pki) -> None:
    async with backend(echo) as port, relay_pair(pki, port) as pair:
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.a_port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        pair.handles_b[0].close(Reason.PEER_REVOKED)
        pair.handles_b[0].close(Reason.DRAINED)  # the first reason wins
        assert await asyncio.wait_for(reader.read(), 5) == b""  # a clean EOF for the client
        assert len(pair.results_a) == 0  # for A it is a half-close: the client may still send
        writer.write_eof()
        await pair.wait_results(1)
        writer.close()
    assert pair.results_b[0].close_reason is Reason.PEER_REVOKED
    assert pair.results_b[0].bytes_up == pair.results_b[0].bytes_down == 4
    # A saw B's close_notify, then forwarded the client's EOF: a normal close on its side.
    assert pair.results_a[0].close_reason is Reason.CLOSED


async def test_setting_stop_drains_every_relay(pki: Pki) -> None:
    stop = asyncio.Event()
    async with backend(echo) as port, relay_pair(pki, port, stop=stop) as pair:
        conns = [await asyncio.open_connection("127.0.0.1", pair.a_port) for _ in range(3)]
        for reader, writer in conns:
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
        stop.set()
        await pair.wait_results(3)
        for _, writer in conns:
            writer.close()
    assert {r.close_reason for r in pair.results_a + pair.results_b} == {Reason.DRAINED}


async def test_cancelling_the_relay_aborts_both_streams(pki: Pki) -> None:
    loop = asyncio.get_running_loop()
    async with backend(echo) as port:
        _, up = await loop.create_connection(PlainStream, "127.0.0.1", port)
        listener = await loop.create_server(PlainStream, "127.0.0.1", 0)
        accepted: list[PlainStream] = []
        async with listener:
            lport = listener.sockets[0].getsockname()[1]
            sock = socket.create_connection(("127.0.0.1", lport))
            sock.setblocking(False)
            _, down = await loop.connect_accepted_socket(PlainStream, sock)
            accepted.append(down)
            task = asyncio.create_task(relay(down, up, idle_timeout=30))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.wait_for(up.closed, 5) is Reason.CLOSED
            assert await asyncio.wait_for(down.closed, 5) is Reason.CLOSED


def test_relay_rejects_a_non_positive_idle_timeout() -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match="idle_timeout"):
            await relay(None, None, idle_timeout=0)  # type: ignore[arg-type]

    asyncio.run(scenario())
