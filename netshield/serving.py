"""Serving a long-running command (`cas serve`, `ui`, the demo): bind its HTTP site, stop on
SIGTERM or SIGINT.

Guarantees: a listener that cannot be bound is one sentence naming `--listen`; the address
returned is the bound one (the real port when asked for port 0); the signal handlers are removed
when the `stop_on_signals` block ends, however it ends.

Slow clients (slowloris): aiohttp waits for a request's headers as long as the client takes. An
app built with the `mark_served` middleware and a `FirstRequestGuard` under `GUARD_KEY` gets,
from `start_site`, a TLS handshake deadline and a deadline for a new connection's first request
(both the guard's `seconds`, default `REQUEST_SECONDS`; the second counted once TLS is up): a
connection that has sent no complete request head by then is closed. Idle keep-alive
connections close after `KEEPALIVE_SECONDS` (`runner_options`); slow bodies are the handlers'
to time out (the CAS uses the same deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from netshield.errors import NetshieldError
from netshield.netaddr import HostPort

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REQUEST_SECONDS = 10.0
KEEPALIVE_SECONDS = 15.0


class FirstRequestGuard:
    """Closes connections that send no complete request head within `seconds`."""

    def __init__(self, seconds: float = REQUEST_SECONDS) -> None:
        self.seconds = seconds
        self.closed = 0  # connections closed for sending nothing in time
        self._pending: dict[int, tuple[RequestHandler, asyncio.TimerHandle]] = {}

    def wrap(self, factory: Callable[[], RequestHandler]) -> Callable[[], RequestHandler]:
        def make() -> RequestHandler:
            handler = factory()
            timer = asyncio.get_running_loop().call_later(self.seconds, self._expire, id(handler))
            self._pending[id(handler)] = (handler, timer)  # the reference keeps the id unique
            return handler

        return make

    def served(self, handler: object) -> None:
        """The connection of `handler` delivered a request head: no deadline any more."""
        entry = self._pending.pop(id(handler), None)
        if entry is not None:
            entry[1].cancel()

    @property
    def pending(self) -> int:
        """Connections that have not sent a request head yet."""
        return len(self._pending)

    def _expire(self, key: int) -> None:
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        transport = entry[0].transport
        if transport is not None and not transport.is_closing():
            self.closed += 1
            transport.close()


GUARD_KEY = web.AppKey("first_request_guard", FirstRequestGuard)


@web.middleware
async def mark_served(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tell the app's `FirstRequestGuard` that this connection sent a request."""
    guard = request.app.get(GUARD_KEY)
    if guard is not None:
        guard.served(request.protocol)
    return await handler(request)


def runner_options() -> dict[str, Any]:
    """`web.AppRunner` keyword arguments for a public server (idle keep-alive closes)."""
    return {"keepalive_timeout": KEEPALIVE_SECONDS}


class _GuardedSite(web.TCPSite):
    """A TCPSite with a TLS handshake deadline and the app's first-request guard."""

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        factory: Callable[[], Any] = server
        guard = self._runner.app.get(GUARD_KEY) if isinstance(self._runner, web.AppRunner) else None
        if guard is not None:
            factory = guard.wrap(server)
        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=(guard.seconds if guard is not None else REQUEST_SECONDS)
            if self._ssl_context
            else None,
        )


async def start_site(
    runner: web.AppRunner, listen: HostPort, *, ssl_context: ssl.SSLContext | None = None
) -> HostPort:
    """Serve the (set-up) `runner` on `listen`; the address actually bound."""
    site = _GuardedSite(runner, listen.host, listen.port, ssl_context=ssl_context, backlog=1024)
    try:
        await site.start()
    except OSError as err:
        raise NetshieldError(f"--listen {listen}: cannot bind ({err.strerror})") from None
    sockets = getattr(site._server, "sockets", None) or []
    return HostPort(*sockets[0].getsockname()[:2]) if sockets else listen


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event that SIGTERM or SIGINT sets while the block runs (call it inside the loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


__all__ = [
    "GUARD_KEY",
    "KEEPALIVE_SECONDS",
    "REQUEST_SECONDS",
    "STOP_SIGNALS",
    "FirstRequestGuard",
    "mark_served",
    "runner_options",
    "start_site",
    "stop_on_signals",
]
