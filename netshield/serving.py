"""Serving a long-running command (`cas serve`, `ui`, the demo): bind its HTTP site, stop on
SIGTERM or SIGINT.

Guarantees: a listener that cannot be bound is one sentence naming `--listen`; the address
returned is the bound one (the real port when asked for port 0); the signal handlers are removed
when the `stop_on_signals` block ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Iterator

from aiohttp import web

from netshield.errors import NetshieldError
from netshield.netaddr import HostPort

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def start_site(
    runner: web.AppRunner, listen: HostPort, *, ssl_context: ssl.SSLContext | None = None
) -> HostPort:
    """Serve the (set-up) `runner` on `listen`; the address actually bound."""
    site = web.TCPSite(runner, listen.host, listen.port, ssl_context=ssl_context)
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


__all__ = ["STOP_SIGNALS", "start_site", "stop_on_signals"]
