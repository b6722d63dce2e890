"""An in-process WAF route on loopback for tests: the real `serve_http_route` with a real
engine (ModSecurity + CRS from Debian's packages, or the compact set), a real aiohttp service
behind it, and raw sockets as callers. Records are captured as they are emitted."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from netshield.agent.credentials import CredentialHolder
from netshield.agent.revocations import RevocationState
from netshield.authz import ConnDecision
from netshield.netaddr import HostPort
from netshield.reasons import Reason
from netshield.record import ConnectionRecord
from netshield.recordlog import RecordSink
from netshield.sidecar.config import parse_sidecar_config
from netshield.sidecar.connection import Attempt
from netshield.sidecar.httproute import HttpRoute, serve_http_route
from netshield.sidecar.livetable import ConnectionTable
from netshield.sidecar.metrics import SidecarMetrics
from netshield.sidecar.native import dial_plain
from netshield.sidecar.runtime import Runtime
from netshield.sidecar.wafroutes import WafRoutes
from netshield.waf.engine import Engine, Exchange
from netshield.waf.settings import WafSettings

SIDECAR_YAML = """
service: frontend
cas: {url: "https://127.0.0.1:1", ca: ca.pem}
platform: {in_process: platform}
workload: {path: ., cmd: "true"}
"""


class CapturingRuntime(Runtime):
    records: list[ConnectionRecord]

    def emit(self, record: ConnectionRecord, handshake_seconds: float | None) -> None:
        self.records.append(record)
        super().emit(record, handshake_seconds)


def make_runtime(extra_yaml: str = "") -> CapturingRuntime:
    config = parse_sidecar_config(SIDECAR_YAML + extra_yaml, base_dir=Path("/tmp"))
    rt = CapturingRuntime(
        config=config,
        holder=CredentialHolder(),
        revocations=RevocationState(),
        table=ConnectionTable(limit=100),
        sink=RecordSink(None),
        metrics=SidecarMetrics(),
        http=WafRoutes(config.waf),
    )
    rt.records = []
    return rt


@dataclass
class Seen:
    """What the service behind the route received."""

    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes
    peer_port: int


@dataclass
class Service:
    """An aiohttp service: echoes what it got; /chunked streams; /leak leaks an SQL error."""

    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(
            Seen(
                request.method, request.path_qs, dict(request.headers), body, peer[1] if peer else 0
            )
        )
        if request.path == "/chunked":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"one ", b"two ", b"three"):
                await response.write(part)
            await response.write_eof()
            return response
        if request.path == "/leak":
            return web.Response(
                text="Warning: mysql_fetch_array() expects parameter 1 to be resource, "
                "boolean given in /var/www/html/index.php on line 12\n"
                "You have an error in your SQL syntax; check the manual that corresponds to "
                "your MySQL server version for the right syntax to use near ''' at line 1",
                content_type="text/html",
            )
        return web.Response(text=f"ok {request.method} {request.path_qs} {len(body)}\n")

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, keepalive_timeout=30)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class Route:
    rt: CapturingRuntime
    service: Service
    port: int
    settings: WafSettings
    server: asyncio.Server

    @property
    def records(self) -> list[ConnectionRecord]:
        return self.rt.records

    async def wait_records(self, n: int, timeout: float = 20) -> list[ConnectionRecord]:
        async with asyncio.timeout(timeout):
            while len(self.rt.records) < n:
                await asyncio.sleep(0.02)
        return self.rt.records


@contextlib.asynccontextmanager
async def running_route(
    settings: WafSettings, engine: Engine | None, *, extra_yaml: str = ""
) -> AsyncIterator[Route]:
    """A WAF route on 127.0.0.1:<port> in front of a fresh `Service`."""
    rt = make_runtime(extra_yaml)
    service = Service()
    await service.start()
    target = HostPort("127.0.0.1", service.port)
    pool = rt.http.pool(("native", target))
    tasks: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        attempt = Attempt(
            rt, "outbound", listener="test", src=f"{peer[0]}:{peer[1]}", dst=str(target)
        )
        route = HttpRoute(
            name="native service test",
            settings=settings,
            engine=engine if settings.mode != "off" else None,
            pool=pool,
            dial=lambda: dial_plain(rt, target),
            exchange=Exchange(client=(peer[0], peer[1]), server=("127.0.0.1", 80)),
        )
        await serve_http_route(
            rt, attempt, reader, writer, route, ConnDecision(True, Reason.OK, "test route")
        )

    def spawn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(handle(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(spawn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Route(rt, service, port, settings, server)
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.wait(list(tasks), timeout=5)
        pool.close()
        rt.http.executor.shutdown(wait=False)
        await service.stop()


class Caller:
    """A raw-socket HTTP/1.1 caller (non-blocking, driven from the test's event loop)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Caller:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 20) -> tuple[int, dict[str, str], bytes]:
        """One response (Content-Length or chunked framing)."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            if status == 100:
                return status, headers, b""
            if "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                body = b""
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                    chunk = await self.reader.readexactly(size + 2)
                    if size == 0:
                        break
                    body += chunk[:-2]
            else:
                body = await self.reader.read()
            return status, headers, body

    async def closed(self, timeout: float = 20) -> bool:
        """True when the route closed the connection (EOF) within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read() == b""
        except (TimeoutError, ConnectionError):
            return False

    def close(self) -> None:
        self.writer.close()


def get(target: str, *, host: str = "native.test", extra: str = "", close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: netshield-test/1\r\n"
        f"Accept: */*\r\n{connection}{extra}\r\n"
    ).encode()


def post(
    target: str, body: bytes, content_type: str = "application/x-www-form-urlencoded"
) -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: native.test\r\nUser-Agent: netshield-test/1\r\n"
        f"Accept: */*\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
