"""`netshield ui`: serve the live view of the mesh over plain HTTP on loopback.

| method | path | answer |
|---|---|---|
| GET | / | the page (HTML with inline script and style; nothing else is fetched) |
| GET | /api/graph | the graph as JSON: nodes, edges, revocations, totals, sources, cas, version |
| GET | /api/events | server-sent events: one `graph` event now and one after every change |
| GET | /healthz, /readyz | liveness, readiness |

The server follows the record files as they grow (across rotation and truncation), and, with
`--cas` and `--admin`, the CAS's policy (services, allowed callers) and its revocation feed.

Guarantees: it listens on loopback only (the page is plain HTTP) and answers only requests
whose Host header names a loopback address (no DNS rebinding); it only reads (record files, the
CAS admin API); memory does not grow with the number of records; a corrupt line is counted as
skipped and an unreachable CAS is shown on the page, neither stops the view; the ready line
(`{"event":"ready","component":"ui","url":...}`) is printed once the port is bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from netshield.errors import NetshieldError, UsageError
from netshield.logs.follow import Follower
from netshield.logs.reader import ReadStats, parse_line
from netshield.netaddr import HostPort
from netshield.policy import parse_policy
from netshield.reasons import Reason
from netshield.serving import start_site, stop_on_signals
from netshield.trustdomain import AdminCredential
from netshield.ui.graph import MeshGraph, revocation_from_feed
from netshield.ui.page import content_security_policy, render_page

log = logging.getLogger("netshield.ui")

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
FEED_WAIT_SECONDS = 10
CAS_BACKOFF_MAX = 10.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class UiOptions:
    records: tuple[Path, ...]
    listen: HostPort
    cas_url: str | None = None
    admin: AdminCredential | None = None
    poll_seconds: float = POLL_SECONDS


BATCH = 2000


@dataclass
class _Source:
    """One record file: its follower (`netshield logs --follow`'s) and what reading it saw."""

    path: Path
    follower: Follower
    stats: ReadStats = field(default_factory=ReadStats)
    state: str = "waiting"

    def status(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "state": self.state,
            "lines": self.stats.lines,
            "records": self.stats.records,
            "skipped": self.stats.skipped,
            "first_problem": self.stats.first_problem,
            "rotations": self.follower.rotations,
            "truncations": self.follower.truncations,
        }


def _state(path: Path) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "waiting"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return "following" if os.access(path, os.R_OK) else "unreadable (permission denied)"


@dataclass
class LiveGraph:
    """The graph, its sources and a version that changes whenever the picture may have.

    The graph is written by the reading thread and by the CAS task, and read by the handlers:
    every access holds `lock` (each hold is short: one batch of records, or one snapshot).
    """

    sources: list[_Source]
    cas_url: str | None = None
    graph: MeshGraph = field(default_factory=MeshGraph)
    cas: dict[str, Any] | None = None
    version: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _cached: tuple[int, str] | None = None

    def __post_init__(self) -> None:
        if self.cas_url is not None:
            self.cas = {"url": self.cas_url, "reachable": False, "error": "not contacted yet"}
            self.cas["policy_version"] = None

    def bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed_after(self, version: int, timeout: float) -> bool:
        """Wait until the version is past `version` (True) or `timeout` passes (False)."""
        if self.version != version:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        return self.version != version

    def document(self) -> dict[str, Any]:
        with self.lock:
            doc = self.graph.snapshot()
        doc["sources"] = [s.status() for s in self.sources]
        doc["cas"] = dict(self.cas) if self.cas is not None else None
        doc["version"] = self.version
        return doc

    def document_json(self) -> str:
        """The document as one line of JSON, computed once per version."""
        if self._cached is None or self._cached[0] != self.version:
            self._cached = (self.version, json.dumps(self.document(), separators=(",", ":")))
        return self._cached[1]


def _drain(live: LiveGraph, source: _Source, progress: Callable[[], None]) -> bool:
    """Read what was appended to one file into the graph (in a worker thread); True if the
    file's lines or state changed. A long backlog goes in batches, each announced."""
    lines_before, state_before = source.stats.lines, source.state
    batch = []
    for n, line in enumerate(source.follower.poll(), 1):
        entry = parse_line(line, source.stats)
        if entry is not None:
            batch.append(entry.record)
        if n % BATCH == 0:
            with live.lock:
                live.graph.add_records(batch)
            batch.clear()
            progress()
            if live.stopping.is_set():  # shutting down: the rest of a backlog does not matter
                break
    if batch:
        with live.lock:
            live.graph.add_records(batch)
    source.state = _state(source.path)
    return source.stats.lines != lines_before or source.state != state_before


async def follow_records(live: LiveGraph, poll_seconds: float) -> None:
    """Read every source forever; bump the version when records or a source's state change."""
    loop = asyncio.get_running_loop()

    def progress() -> None:
        loop.call_soon_threadsafe(live.bump)

    while True:
        changed = False
        for source in live.sources:
            changed |= await asyncio.to_thread(_drain, live, source, progress)
        if changed:
            live.bump()
        await asyncio.sleep(poll_seconds)


async def follow_cas(live: LiveGraph, url: str, admin: AdminCredential) -> None:
    """Keep the policy and the revocations current from the CAS; show when it is unreachable."""
    from netshield.operator import admin_client

    since = 0
    backoff = 1.0
    policy_version: int | None = None
    assert live.cas is not None
    while True:
        try:
            async with admin_client(url, admin, timeout=FEED_WAIT_SECONDS + 10.0) as cas:
                while True:
                    feed = await cas.feed(
                        since, wait=0 if policy_version is None else FEED_WAIT_SECONDS
                    )
                    changed = not live.cas["reachable"]
                    head = feed.get("policy", {}).get("version")
                    if head != policy_version:
                        changed = True
                        doc = await cas.policy()
                        policy_version = int(doc["version"])
                        policy = parse_policy(
                            doc["text"], source=f"CAS policy version {policy_version}"
                        )
                        with live.lock:
                            live.graph.set_policy(policy, policy_version)
                    for event in feed.get("events", []):
                        revocation = revocation_from_feed(event)
                        if revocation is not None:
                            with live.lock:
                                live.graph.add_revocation(revocation)
                            changed = True
                    since = int(feed.get("next", since))
                    backoff = 1.0
                    live.cas.update(reachable=True, error=None, policy_version=policy_version)
                    if changed:
                        live.bump()
        except asyncio.CancelledError:
            raise
        except NetshieldError as err:
            problem = err.one_line()
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            problem = f"the CAS sent an answer of unexpected shape ({type(err).__name__}: {err})"
        if live.cas.get("error") != problem or live.cas.get("reachable"):
            log.warning("CAS at %s: %s", url, problem)
            live.cas.update(reachable=False, error=problem)
            live.bump()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, CAS_BACKOFF_MAX)


def allowed_hosts(bound: HostPort) -> frozenset[str]:
    """Host header values a browser sends for this listener (loopback names only)."""
    names = {*LOOPBACK_HOSTS, str(HostPort(bound.host, 0)).rsplit(":", 1)[0]}
    hosts = {f"{name}:{bound.port}" for name in names}
    if bound.port == 80:
        hosts |= names
    return frozenset(hosts)


def _refuse(status: int, reason: Reason, message: str, hint: str) -> web.Response:
    return web.json_response(
        {"error": {"reason": reason.value, "message": message, "hint": hint}}, status=status
    )


def make_app(live: LiveGraph, hosts: Callable[[], frozenset[str]]) -> web.Application:
    """The aiohttp app; `hosts` gives the Host header values to accept (known after binding)."""
    csp = content_security_policy()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.host.lower() not in hosts():  # a rebound DNS name, or a proxy in front
            return _refuse(
                404,
                Reason.NOT_FOUND,
                f"this live view does not serve the host {request.host!r}",
                "open it by its loopback address, as printed in the ready line",
            )
        if request.method not in ("GET", "HEAD"):
            return _refuse(405, Reason.METHOD_NOT_ALLOWED, "the live view is read-only", "use GET")
        resp = await handler(request)
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["X-Frame-Options"] = "DENY"
        return resp

    async def index(request: web.Request) -> web.Response:
        page = render_page(live.document())
        return web.Response(
            text=page,
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": csp},
        )

    async def graph(request: web.Request) -> web.Response:
        return web.Response(text=live.document_json(), content_type="application/json")

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await resp.prepare(request)
        sent = -1
        with contextlib.suppress(ConnectionResetError):
            while True:
                if sent != live.version:
                    sent = live.version
                    data = live.document_json()
                    await resp.write(f"event: graph\nid: {sent}\ndata: {data}\n\n".encode())
                elif not await live.changed_after(sent, KEEPALIVE_SECONDS):
                    await resp.write(b": keep-alive\n\n")
        return resp

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[guard])
    app.router.add_get("/", index)
    app.router.add_get("/api/graph", graph)
    app.router.add_get("/api/events", events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    return app


def check_options(options: UiOptions) -> None:
    """Refuse what the live view must not do, in one sentence each."""
    if not options.listen.is_loopback:
        raise UsageError(
            f"--listen {options.listen}: the live view is plain HTTP and listens on loopback "
            "only (127.0.0.1, ::1 or localhost); reach it from elsewhere through an SSH tunnel"
        )
    if not options.records:
        raise UsageError("--records needs at least one record file")
    for path in options.records:
        if path.exists() and not path.is_file():
            raise UsageError(f"--records {path}: not a regular file")


@contextlib.asynccontextmanager
async def running_ui(options: UiOptions) -> AsyncIterator[tuple[HostPort, LiveGraph]]:
    """Bind the listener, start following; yields the bound address and the live graph."""
    check_options(options)
    sources = [_Source(path, Follower(path, from_start=True)) for path in options.records]
    live = LiveGraph(sources, cas_url=options.cas_url)
    bound = options.listen
    app = make_app(live, lambda: allowed_hosts(bound))
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    tasks: list[asyncio.Task[None]] = []
    try:
        bound = await start_site(runner, options.listen)
        for path in options.records:
            if not path.exists():
                log.warning("%s does not exist yet; the view shows its records once it does", path)
        tasks.append(asyncio.create_task(follow_records(live, options.poll_seconds)))
        if options.cas_url is not None and options.admin is not None:
            tasks.append(asyncio.create_task(follow_cas(live, options.cas_url, options.admin)))
        yield bound, live
    finally:
        live.stopping.set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        for source in sources:
            source.follower.close()


async def serve(options: UiOptions, *, out: TextIO | None = None) -> None:
    """Run until SIGTERM/SIGINT; prints the ready line once the port is bound."""
    with stop_on_signals() as stop:
        async with running_ui(options) as (bound, _live):
            url = f"http://{bound}/"
            ready = {
                "event": "ready",
                "component": "ui",
                "url": url,
                "listen": {"http": str(bound)},
                "records": [str(p) for p in options.records],
                "cas": options.cas_url,
            }
            print(json.dumps(ready), file=out or sys.stdout, flush=True)
            log.info("live view at %s", url)
            await stop.wait()


__all__ = ["LiveGraph", "UiOptions", "allowed_hosts", "make_app", "running_ui", "serve"]
