"""A tunnel between two in-process ends over real loopback TLS, for tests of `netshield.tunnel`:
the client end opens streams, the server end relays each to a local TCP service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from netshield.net.relay import RelayResult, relay
from netshield.net.streams import PlainStream, TlsStream
from netshield.tls.contexts import TUNNEL_ALPN, client_context, server_context
from netshield.tunnel.link import Tunnel, TunnelStream
from netshield.tunnel.protocol import TunnelProtocol, TunnelSettings
from tests.test_tls_pki import Pki


@dataclass
class Ends:
    client: Tunnel
    server: Tunnel
    server_tls: TlsStream
    results: list[RelayResult] = field(default_factory=list)
    """What the server end's relays returned, in the order they ended."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def open(self, authority: str = "svc", timeout: float = 10) -> TunnelStream:
        stream = self.client.open(authority)
        answer = await stream.answer(timeout)
        assert answer is None, answer
        return stream


@contextlib.asynccontextmanager
async def tunnel_pair(
    pki: Pki,
    upstream_port: int,
    *,
    settings: TunnelSettings | None = None,
    idle_timeout: float = 30,
    on_request: Callable[[TunnelStream], None] | None = None,
) -> AsyncIterator[Ends]:
    """A client tunnel to a server tunnel whose streams relay to 127.0.0.1:`upstream_port`."""
    loop = asyncio.get_running_loop()
    server_ctx = server_context(pki.creds("orders"), tunnels=True)
    client_ctx = client_context(pki.creds("frontend"), alpn=TUNNEL_ALPN)
    accepted: asyncio.Future[TlsStream] = loop.create_future()

    def factory() -> TlsStream:
        tls = TlsStream(server_ctx, server_side=True)
        if not accepted.done():
            accepted.set_result(tls)
        return tls

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _t, client_tls = await loop.create_connection(
        lambda: TlsStream(client_ctx, server_side=False), "127.0.0.1", port
    )
    server_tls = await accepted
    await client_tls.handshake(10)
    await server_tls.handshake(10)
    assert client_tls.alpn == TUNNEL_ALPN
    ends: Ends | None = None

    async def serve(stream: TunnelStream) -> None:
        _t2, upstream = await loop.create_connection(PlainStream, "127.0.0.1", upstream_port)
        stream.tunnel.accept(stream)
        result = await relay(stream, upstream, idle_timeout=idle_timeout)
        assert ends is not None
        ends.results.append(result)

    def requested(stream: TunnelStream, _authority: str, _tid: str | None) -> None:
        if on_request is not None:
            on_request(stream)
            return
        assert ends is not None
        ends.tasks.append(asyncio.create_task(serve(stream)))

    server_tunnel = Tunnel(
        server_tls,
        TunnelProtocol(client=False, settings=settings),
        tunnel_id="t-server",
        on_request=requested,
    )
    client_tunnel = Tunnel(
        client_tls, TunnelProtocol(client=True, settings=settings), tunnel_id="t-client"
    )
    ends = Ends(client_tunnel, server_tunnel, server_tls)
    try:
        yield ends
    finally:
        for task in ends.tasks:
            task.cancel()
        client_tls.abort()
        server_tls.abort()
        server.close()
        await asyncio.sleep(0)


class Sink(asyncio.Protocol):
    """A TCP service that counts what it reads (and echoes it when `echo`)."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.echo and self.transport is not None:
            self.transport.write(data)

    def eof_received(self) -> bool:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        return True


async def serve_tcp(factory: Callable[[], asyncio.Protocol]) -> tuple[asyncio.Server, int]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@dataclass
class Entry:
    """A local listener whose connections each become a stream of `ends.client` (the client
    sidecar's role); `results` are the relays' outcomes (downstream = the local caller)."""

    port: int
    streams: list[TunnelStream] = field(default_factory=list)
    results: list[RelayResult] = field(default_factory=list)
    server: asyncio.Server | None = None


@contextlib.asynccontextmanager
async def entry(ends: Ends, *, idle_timeout: float = 30) -> AsyncIterator[Entry]:
    loop = asyncio.get_running_loop()
    box = Entry(0)
    tasks: list[asyncio.Task[None]] = []

    async def carry(plain: PlainStream) -> None:
        stream = await ends.open()
        box.streams.append(stream)
        box.results.append(await relay(plain, stream, idle_timeout=idle_timeout))

    def factory() -> PlainStream:
        plain = PlainStream()
        tasks.append(loop.create_task(carry(plain)))
        return plain

    box.server = await loop.create_server(factory, "127.0.0.1", 0)
    box.port = box.server.sockets[0].getsockname()[1]
    try:
        yield box
    finally:
        box.server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
