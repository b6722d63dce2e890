"""`netshield platform serve`: the host's platform service on a unix socket.

API (HTTP/1.1 over the unix socket, JSON, the house error shape of `netshield.httpjson`):

    POST /v1/quote  {"report_data": "<64 hex>"}
        -> 200 {"quote": "<base64 of the quote>", "measurement": "<hex>", "platform_id": "..."}
        -> 403 WORKLOAD_NOT_MEASURABLE (no workload rule for the caller, or it cannot be measured)
    GET  /healthz   -> 200 {"platform_id": ..., "tcb_level": ..., "debug": ...}

The request names nothing but the report data; who the caller is comes from SO_PEERCRED and what
is measured from the service's own workload map (`netshield.quoting.procfs`). Every quote and
every refusal is one log line naming the caller's pid and uid. When the socket is bound, one JSON
ready line goes to stdout. The platform key is loaded here and nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import socket
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from netshield.attestation.platform import Platform, load_platform
from netshield.errors import NetshieldError, UsageError
from netshield.httpjson import errors_middleware
from netshield.quoting.config import QuotingConfig
from netshield.quoting.procfs import PROC, PeerCred, WorkloadError, measure_caller, peer_cred
from netshield.reasons import Reason
from netshield.serving import stop_on_signals

log = logging.getLogger("netshield.platform")

MAX_BODY = 4096
MAX_CONCURRENT_QUOTES = 4
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class QuotingService:
    config: QuotingConfig
    platform: Platform
    proc: Path = PROC

    def quote_for(self, caller: PeerCred, report_data: str) -> tuple[bytes, str]:
        """(quote, measurement) for `caller`'s workload; WorkloadError when there is none."""
        rule = self.config.rule_for(caller.uid)
        if rule is None:
            raise WorkloadError(
                f"caller {caller}: no workload rule covers uid {caller.uid}",
                hint="add a workloads entry for this uid to the platform's config",
            )
        w = rule.workload
        measurement = measure_caller(caller, w, proc=self.proc)
        quote = self.platform.quote(
            measurement=measurement,
            signer=w.signer,
            product_id=w.product_id,
            svn=w.svn,
            report_data=report_data,
        )
        return quote, measurement


def make_app(service: QuotingService) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY, middlewares=[errors_middleware("platform", log)]
    )
    limit = asyncio.Semaphore(MAX_CONCURRENT_QUOTES)

    async def quote(request: web.Request) -> web.Response:
        caller = _caller(request)
        report_data = await _report_data(request)
        async with limit:
            try:
                data, measurement = await asyncio.to_thread(service.quote_for, caller, report_data)
            except WorkloadError as err:
                log.warning("refused a quote: %s", err.message)
                raise
        log.info(
            "quoted for %s: measurement %s on platform %s",
            caller,
            measurement,
            service.platform.platform_id,
        )
        return web.json_response(
            {
                "quote": base64.b64encode(data).decode("ascii"),
                "measurement": measurement,
                "platform_id": service.platform.platform_id,
            }
        )

    async def healthz(_request: web.Request) -> web.Response:
        p = service.platform
        return web.json_response(
            {"platform_id": p.platform_id, "tcb_level": p.tcb_level, "debug": p.debug}
        )

    app.router.add_post("/v1/quote", quote)
    app.router.add_get("/healthz", healthz)
    return app


def _caller(request: web.Request) -> PeerCred:
    transport = request.transport
    sock: Any = transport.get_extra_info("socket") if transport is not None else None
    try:
        return peer_cred(sock)
    except (OSError, AttributeError, TypeError):
        raise WorkloadError("the caller's credentials (SO_PEERCRED) are unavailable") from None


async def _report_data(request: web.Request) -> str:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    value = body.get("report_data") if isinstance(body, dict) else None
    if not isinstance(value, str) or not _HEX64.fullmatch(value) or len(body) != 1:
        raise NetshieldError(
            'the body must be {"report_data": "<64 lower-case hex characters>"} and nothing else',
            reason=Reason.REQUEST_MALFORMED,
        )
    return value


def bind_socket(path: Path, mode: int) -> socket.socket:
    """A listening unix socket at `path` with `mode`; replaces a stale socket, never a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise UsageError(
                    f"socket {path}: exists and is not a socket; refusing to replace it"
                )
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, mode)
        sock.listen(128)
    except OSError as err:
        raise UsageError(f"socket {path}: cannot listen ({err.strerror or err})") from None
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def running_platform(config: QuotingConfig) -> AsyncIterator[QuotingService]:
    """Load the platform, bind the socket and serve until the block ends."""
    service = QuotingService(config, load_platform(config.platform))
    runner = web.AppRunner(make_app(service), access_log=None, handle_signals=False)
    await runner.setup()
    sock = bind_socket(config.socket, config.socket_mode)
    try:
        await web.SockSite(runner, sock).start()
        yield service
    finally:
        await runner.cleanup()
        sock.close()
        with contextlib.suppress(OSError):
            config.socket.unlink()


async def serve(config: QuotingConfig, *, out: TextIO | None = None) -> None:
    """Run until SIGTERM/SIGINT; prints the ready line once the socket is bound."""
    with stop_on_signals() as stop:
        async with running_platform(config) as service:
            p = service.platform
            ready = {
                "event": "ready",
                "component": "platform",
                "listen": {"socket": str(config.socket)},
                "platform_id": p.platform_id,
                "tcb_level": p.tcb_level,
                "workload_rules": len(config.workloads),
            }
            print(json.dumps(ready), file=out or sys.stdout, flush=True)
            log.info("platform %s quoting on %s", p.platform_id, config.socket)
            await stop.wait()
            log.info("platform service stopping")
