"""The sidecar's admin API (aiohttp, plain HTTP on the admin listener, loopback by default).

| method | path | answer |
|---|---|---|
| GET | /healthz | 200 `{"status": "ok"}` while the process runs |
| GET | /readyz | 200 `{"ready": true}` while credentials are valid and listeners bound, else 503 |
| GET | /metrics | Prometheus text (text/plain; version=0.0.4) |
| GET | /connections | JSON list of live connections (conn_id, direction, src, dst, peer_identity, ...) |
| GET | /identity | spiffe_id, serial, not_after, measurement, epoch, policy_version; 503 without one |
| GET | /status | the agent's status (renewals, last error, CAS reachability, ...) |

The app only reads state through `AdminProviders` callables, so it can be tested with any state
and never reaches into the proxy. Every refusal has the CAS API's JSON shape
`{"error": {"reason", "message", "hint"}}` (a not-ready /readyz too, with status 503); an
unexpected failure is logged with an incident id and answered without internals. Nothing here
can return key material: the providers hand out public facts only.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from aiohttp import web

from netshield.httpjson import error_body, error_response, errors_middleware, known_reason
from netshield.netaddr import HostPort
from netshield.reasons import Reason
from netshield.sidecar.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger("netshield.sidecar.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NOT_READY = "NOT_READY"
"""The reason /readyz gives when `ready()` explains itself in words rather than a code."""


@dataclass(frozen=True)
class AdminProviders:
    """Where the admin API reads the sidecar's state; each is called once per request.

    `ready` returns (True, "") or (False, why): a reason code such as "NO_CREDENTIALS", a code
    and a sentence ("CAS_ROLLED_BACK: the CAS's ..."), or a sentence ("listeners not bound
    yet").
    """

    ready: Callable[[], tuple[bool, str]]
    metrics: Callable[[], bytes]
    connections: Callable[[], list[dict[str, Any]]]
    identity: Callable[[], dict[str, Any] | None]
    status: Callable[[], dict[str, Any]]


PROVIDERS_KEY = web.AppKey("providers", AdminProviders)


def _json_default(value: object) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, frozenset | set):
        return sorted(value, key=str)
    if isinstance(value, Path | HostPort):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_dumps = functools.partial(json.dumps, default=_json_default)


def _json(body: object, *, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)


# --- handlers ------------------------------------------------------------------------------------


def _providers(request: web.Request) -> AdminProviders:
    return request.app[PROVIDERS_KEY]


async def handle_healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    ready, why = _providers(request).ready()
    if ready:
        return _json({"ready": True})
    code, _sep, sentence = why.partition(": ")
    if known_reason(why):
        body = error_body(why, f"not ready: {why}", None)
    elif sentence and known_reason(code):  # "CAS_ROLLED_BACK: the CAS's signed audit head ..."
        body = error_body(code, f"not ready: {sentence}", None)
    else:
        body = error_body(NOT_READY, f"not ready: {why or 'no reason given'}", "see /status")
    return _json({"ready": False, **body}, status=503)


async def handle_metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=_providers(request).metrics(), headers={"Content-Type": METRICS_CONTENT_TYPE}
    )


async def handle_connections(request: web.Request) -> web.Response:
    return _json(_providers(request).connections())


async def handle_identity(request: web.Request) -> web.Response:
    identity = _providers(request).identity()
    if identity is None:
        return error_response(
            Reason.NO_CREDENTIALS,
            "this sidecar holds no valid certificate (not attested yet, or expired)",
            status=503,
        )
    return _json(identity)


async def handle_status(request: web.Request) -> web.Response:
    return _json(_providers(request).status())


def make_admin_app(providers: AdminProviders) -> web.Application:
    """The admin API over `providers` (GET only; HEAD answers too)."""
    app = web.Application(client_max_size=1024, middlewares=[errors_middleware("sidecar", log)])
    app[PROVIDERS_KEY] = providers
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/connections", handle_connections)
    app.router.add_get("/identity", handle_identity)
    app.router.add_get("/status", handle_status)
    return app


# --- serving -------------------------------------------------------------------------------------


class AdminServer:
    """The admin app bound to one address; `address` has the real port (for port 0)."""

    def __init__(self, runner: web.AppRunner, address: HostPort) -> None:
        self._runner = runner
        self.address = address
        self._closed = False

    @classmethod
    async def start(
        cls, providers: AdminProviders, listen: HostPort, *, shutdown_timeout: float = 2.0
    ) -> AdminServer:
        """Bind `listen` and serve; OSError if the address cannot be bound."""
        runner = web.AppRunner(
            make_admin_app(providers),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=shutdown_timeout,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, listen.host, listen.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        return cls(runner, HostPort(str(host), int(port)))

    async def close(self) -> None:
        """Stop listening and finish open requests (bounded by the shutdown timeout). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._runner.cleanup()


__all__ = [
    "NOT_READY",
    "PROVIDERS_KEY",
    "AdminProviders",
    "AdminServer",
    "error_response",
    "make_admin_app",
]
