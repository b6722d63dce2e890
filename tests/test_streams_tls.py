"""TlsStream on real loopback sockets: alerts reach the peer, garbage is refused, timeouts, early data.

Also the small accept-loop harness (`Acceptor`) the relay tests reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import pytest

from netshield.net.streams import PlainStream, TlsStream
from netshield.reasons import Reason
from netshield.tls.contexts import client_context, server_context
from netshield.tls.failures import CAPACITY_ALERT, TlsFailure, TlsHandshakeError
from netshield.tls.peer import PeerInfo
from tests.test_tls_pki import Pki

Handler = Callable[[socket.socket], Awaitable[None]]


class Acceptor:
    """Accept on 127.0.0.1:0 and run `handler(sock)` per connection; every task is owned here."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(512)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None
        self.errors: list[BaseException] = []

    async def __aenter__(self) -> Acceptor:
        self._accepting = asyncio.create_task(self._accept())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._accepting is not None
        self._accepting.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(self._accepting, *self._tasks, return_exceptions=True)
        self._listener.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            task = asyncio.create_task(self._run(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, sock: socket.socket) -> None:
        try:
            await self._handler(sock)
        except Exception as exc:  # recorded for the test to assert on
            self.errors.append(exc)


class TlsServer:
    """A TlsStream server that records each handshake's outcome, then echoes until EOF."""

    def __init__(self, ctx: ssl.SSLContext, *, handshake_timeout: float = 5.0) -> None:
        self.ctx = ctx
        self.timeout = handshake_timeout
        self.outcomes: list[PeerInfo | TlsFailure] = []
        self.closed: list[Reason] = []
        self.acceptor = Acceptor(self._handle)
        self.changed = asyncio.Event()

    async def _handle(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        _, stream = await loop.connect_accepted_socket(
            lambda: TlsStream(self.ctx, server_side=True), sock
        )
        try:
            self.outcomes.append(await stream.handshake(self.timeout))
        except TlsHandshakeError as err:
            self.outcomes.append(err.failure)
        self.changed.set()
        if stream.peer is not None:
            echo = _Echo()
            echo.stream = stream
            stream.start_relay(echo)
        self.closed.append(await stream.closed)
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.outcomes) < count:
                self.changed.clear()
                await self.changed.wait()


class _Echo(PlainStream):
    """A Stream that is not a socket: writes go straight back to the TLS stream."""

    def __init__(self) -> None:
        super().__init__()
        self.stream: TlsStream | None = None

    def write(self, data: bytes | memoryview) -> None:
        assert self.stream is not None
        self.stream.write(bytes(data))

    def write_eof(self) -> None:
        assert self.stream is not None
        self.stream.write_eof()


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


async def s_client(port: int, pki: Pki, tmp_path: Path, creds_name: str | None) -> str:
    """Run openssl s_client (TLS 1.3) against the port; its combined output.

    With -ign_eof it keeps reading after its (empty) stdin ends, so it reads the server's alert;
    the good client instead closes at stdin EOF, and the echoing server closes too.
    """
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3"]
    if creds_name != "good":
        args.append("-ign_eof")
    ca = tmp_path / "mesh-ca.pem"
    ca.write_bytes(pki.mesh.bundle_pem())
    args += ["-CAfile", str(ca)]
    if creds_name is not None:
        creds = {
            "good": lambda: pki.creds("frontend"),
            "foreign": lambda: pki.creds("frontend", ca=pki.foreign),
            "expired": lambda: pki.expired("frontend"),
        }[creds_name]()
        chain, key, _ = Pki.write_files(creds, tmp_path)
        args += ["-cert", str(chain), "-key", str(key)]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    return out.decode(errors="replace")


@pytest.mark.parametrize(
    ("creds_name", "alert", "reason"),
    [
        (None, "alert certificate required:", Reason.PEER_CERT_MISSING),
        ("foreign", "alert unknown ca:", Reason.PEER_CERT_UNTRUSTED),
        ("expired", "alert certificate expired:", Reason.PEER_CERT_EXPIRED),
    ],
)
async def test_s_client_sees_the_alert_for_a_refused_certificate(
    pki: Pki, tmp_path: Path, creds_name: str | None, alert: str, reason: Reason
) -> None:
    server = TlsServer(server_context(pki.creds("orders")))
    async with server.acceptor:
        output = await s_client(server.acceptor.port, pki, tmp_path, creds_name)
        await server.wait_for(1)
    assert alert in output, output
    if creds_name is None:
        assert "SSL alert number 116" in output
    failure = server.outcomes[0]
    assert isinstance(failure, TlsFailure) and failure.reason is reason
    assert server.closed == [reason]


async def test_s_client_with_a_mesh_certificate_gets_no_alert(pki: Pki, tmp_path: Path) -> None:
    server = TlsServer(server_context(pki.creds("orders")))
    async with server.acceptor:
        output = await s_client(server.acceptor.port, pki, tmp_path, "good")
        await server.wait_for(1)
        async with asyncio.timeout(5):
            while not server.closed:
                await asyncio.sleep(0.01)
    assert "alert" not in output.lower(), output
    assert server.closed == [Reason.CLOSED]
    peer = server.outcomes[0]
    assert isinstance(peer, PeerInfo) and peer.service == "frontend"


async def raw_exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n", "plain HTTP to a TLS port"),
        (b"\x00\x01garbage" * 40, "did not speak TLS"),
        (b"\x16\x03\x01\x00\x05hello", "OpenSSL: unexpected message"),
    ],
)
async def test_non_tls_bytes_fail_the_handshake_and_the_server_survives(
    pki: Pki, data: bytes, detail: str
) -> None:
    server = TlsServer(server_context(pki.creds("orders")))
    async with server.acceptor:
        await raw_exchange(server.acceptor.port, data)
        await server.wait_for(1)
        # The same listener still serves a mesh client.
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(
            lambda: TlsStream(client_context(pki.creds("frontend")), server_side=False),
            "127.0.0.1",
            server.acceptor.port,
        )
        peer = await client.handshake(5)
        client.close()
        await server.wait_for(2)
    failure = server.outcomes[0]
    assert isinstance(failure, TlsFailure)
    assert failure.reason is Reason.TLS_HANDSHAKE_FAILED and detail in failure.detail
    assert peer.service == "orders" and isinstance(server.outcomes[1], PeerInfo)


async def test_a_silent_client_hits_the_handshake_timeout(pki: Pki) -> None:
    server = TlsServer(server_context(pki.creds("orders")), handshake_timeout=0.2)
    async with server.acceptor:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.acceptor.port)
        await server.wait_for(1)
        with pytest.raises(ConnectionResetError):  # the server dropped us (abort: a reset)
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
    failure = server.outcomes[0]
    assert isinstance(failure, TlsFailure) and failure.reason is Reason.HANDSHAKE_TIMEOUT


async def test_a_prompt_client_does_not_hit_the_handshake_timeout(pki: Pki) -> None:
    server = TlsServer(server_context(pki.creds("orders")), handshake_timeout=0.2)
    async with server.acceptor:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(
            lambda: TlsStream(client_context(pki.creds("frontend")), server_side=False),
            "127.0.0.1",
            server.acceptor.port,
        )
        await client.handshake(5)
        await server.wait_for(1)
        client.close()
    assert isinstance(server.outcomes[0], PeerInfo)


async def test_our_client_learns_why_it_was_refused_even_while_sending(pki: Pki) -> None:
    """TLS 1.3: the refusal comes after the client's handshake; the alert must survive the
    client's own writes (the server lingers instead of resetting)."""
    server = TlsServer(server_context(pki.creds("orders")))
    async with server.acceptor:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(
            lambda: TlsStream(
                client_context(pki.creds("frontend", ca=pki.foreign)), server_side=False
            ),
            "127.0.0.1",
            server.acceptor.port,
        )
        with contextlib.suppress(TlsHandshakeError):
            await client.handshake(5)  # completes on the client side in TLS 1.3
        sink = _Sink()
        client.start_relay(sink)
        for _ in range(64):
            client.write(b"x" * 16384)  # 1 MiB the server will never read
        assert await asyncio.wait_for(client.closed, 5) is Reason.TLS_HANDSHAKE_FAILED
        await server.wait_for(1)
    assert client.failure is not None
    assert "does not trust this side's certificate (alert unknown ca)" in client.failure.detail
    assert isinstance(server.outcomes[0], TlsFailure)
    assert server.outcomes[0].reason is Reason.PEER_CERT_UNTRUSTED


class _Sink(PlainStream):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.eof = False

    def write(self, data: bytes | memoryview) -> None:
        self.data += data

    def write_eof(self) -> None:
        self.eof = True


async def accepted_stream(pki: Pki, run_client: Callable[[int], Awaitable[None]]) -> TlsStream:
    """Accept one TLS connection, complete its handshake, and return it without relaying."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[TlsStream] = loop.create_future()

    async def handler(sock: socket.socket) -> None:
        _, stream = await loop.connect_accepted_socket(
            lambda: TlsStream(server_context(pki.creds("orders")), server_side=True), sock
        )
        await stream.handshake(5)
        accepted.set_result(stream)
        await stream.closed

    async with Acceptor(handler) as acceptor:
        await run_client(acceptor.port)
        stream = await asyncio.wait_for(accepted, 5)
        await asyncio.sleep(0.1)  # let everything the client sent arrive
        stream.read_before_relay = stream.bytes_read  # type: ignore[attr-defined]
        return await _relay_to_sink(stream)


async def _relay_to_sink(stream: TlsStream) -> TlsStream:
    sink = _Sink()
    stream.start_relay(sink)
    async with asyncio.timeout(5):
        while not sink.eof:
            await asyncio.sleep(0.005)
    stream.sink = sink  # type: ignore[attr-defined]
    stream.write_eof()
    assert await asyncio.wait_for(stream.closed, 5) is Reason.CLOSED
    return stream


async def test_bytes_read_with_the_handshake_are_buffered_until_start_relay(pki: Pki) -> None:
    """Client Finished, data and close_notify in one segment: decrypted before the relay exists."""
    from netshield.tls.endpoint import TlsEndpoint

    keep: list[asyncio.StreamWriter] = []

    async def client(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        keep.append(writer)  # the connection must outlive this coroutine
        tls = TlsEndpoint(client_context(pki.creds("frontend")), server_side=False)
        tls.start()
        writer.write(tls.outgoing())
        while not tls.handshake_done:
            tls.receive(await asyncio.wait_for(reader.read(65536), 5))
        tls.send(b"early bytes, sent with the Finished message")
        tls.close_write()
        writer.write(tls.outgoing())  # one write: Finished + data + close_notify
        await writer.drain()

    stream = await accepted_stream(pki, client)
    keep[0].close()
    assert stream.read_before_relay > 0  # type: ignore[attr-defined]  # decrypted, held in memory
    assert bytes(stream.sink.data) == b"early bytes, sent with the Finished message"  # type: ignore[attr-defined]
    assert stream.bytes_read == len(stream.sink.data)  # type: ignore[attr-defined]


async def test_bytes_sent_before_start_relay_wait_in_the_socket(pki: Pki) -> None:
    loop = asyncio.get_running_loop()

    async def client(port: int) -> None:
        _, tls = await loop.create_connection(
            lambda: TlsStream(client_context(pki.creds("frontend")), server_side=False),
            "127.0.0.1",
            port,
        )
        await tls.handshake(5)
        tls.write(b"sent after the handshake, before the relay")
        tls.write_eof()

    stream = await accepted_stream(pki, client)
    assert stream.read_before_relay == 0  # type: ignore[attr-defined]  # left in the socket
    assert bytes(stream.sink.data) == b"sent after the handshake, before the relay"  # type: ignore[attr-defined]


async def test_handshake_error_names_the_reason(pki: Pki) -> None:
    err = TlsHandshakeError(
        TlsFailure(Reason.PEER_CERT_MISSING, "the client presented no certificate")
    )
    assert (
        err.reason is Reason.PEER_CERT_MISSING and str(err) == "the client presented no certificate"
    )


async def test_cancel_handshake_ends_a_pending_handshake_with_the_given_failure(pki: Pki) -> None:
    streams: list[TlsStream] = []
    outcome: asyncio.Future[BaseException | PeerInfo] = asyncio.get_running_loop().create_future()

    async def handler(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        _, stream = await loop.connect_accepted_socket(
            lambda: TlsStream(server_context(pki.creds("orders")), server_side=True), sock
        )
        streams.append(stream)
        try:
            outcome.set_result(await stream.handshake(30))
        except TlsHandshakeError as err:
            outcome.set_result(err)

    async with Acceptor(handler) as acceptor:
        reader, writer = await asyncio.open_connection("127.0.0.1", acceptor.port)  # says nothing
        async with asyncio.timeout(10):
            while not streams:
                await asyncio.sleep(0.01)
        shed = TlsFailure(Reason.HANDSHAKE_SHED, "dropped to make room")
        streams[0].cancel_handshake(shed)
        err = await asyncio.wait_for(outcome, 10)
        with pytest.raises(ConnectionResetError):  # shed with a reset, no linger
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert isinstance(err, TlsHandshakeError) and err.failure == shed
    assert await streams[0].closed is Reason.HANDSHAKE_SHED


async def test_cancel_handshake_after_a_completed_handshake_does_nothing(pki: Pki) -> None:
    server = TlsServer(server_context(pki.creds("orders")))
    async with server.acceptor:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(
            lambda: TlsStream(client_context(pki.creds("frontend")), server_side=False),
            "127.0.0.1",
            server.acceptor.port,
        )
        peer = await client.handshake(5)
        client.cancel_handshake(TlsFailure(Reason.HANDSHAKE_SHED, "too late"))
        assert client.failure is None and not client.closed.done()
        client.close()
    assert peer.service == "orders"


async def test_our_client_reads_a_capacity_refusal_as_peer_at_capacity(pki: Pki) -> None:
    async def at_capacity(sock: socket.socket) -> None:
        sock.send(CAPACITY_ALERT)
        sock.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.5)
        sock.close()

    async def silent(sock: socket.socket) -> None:  # the negative twin: a plain close
        sock.close()

    outcomes = []
    for handler in (at_capacity, silent):
        async with Acceptor(handler) as acceptor:
            loop = asyncio.get_running_loop()
            _, client = await loop.create_connection(
                lambda: TlsStream(client_context(pki.creds("frontend")), server_side=False),
                "127.0.0.1",
                acceptor.port,
            )
            with pytest.raises(TlsHandshakeError) as info:
                await client.handshake(5)
            outcomes.append(info.value.failure)
    assert outcomes[0].reason is Reason.PEER_AT_CAPACITY and "at capacity" in outcomes[0].detail
    assert outcomes[1].reason is Reason.TLS_HANDSHAKE_FAILED
