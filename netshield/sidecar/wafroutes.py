"""The WAF engines of one sidecar's routes, the thread pool they run in, and the keep-alive
connection pools of the services behind the routes.

Engines are loaded once per distinct `WafSettings` and shared by every route with those
settings. `load_configured` loads, at start-up, every engine the config names (the ``waf:``
section, its ``routes``, every ``ingress`` route) and raises `WafUnavailable` for the first
that cannot load: a route configured for CRS never starts on anything else. A sidecar without a
``waf:`` section loads the default (``auto``) engine on first use.

Inspection runs in `executor`, a thread pool, fed by `inspections`
(`netshield.sidecar.inspections`: a thread takes the next queued request as soon as it finished
one). ModSecurity is called through ctypes, which releases the GIL, so rule evaluation neither
stalls the event loop nor waits for it (measured: a second connection's round trips keep
flowing while a 1 MiB body is inspected, see tests/test_waf_route.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from netshield.sidecar.inspections import Inspections
from netshield.sidecar.upstreampool import UpstreamPool
from netshield.sidecar.wafconfig import IngressConfig, WafConfig
from netshield.waf.engine import Engine, load_engine
from netshield.waf.settings import WafSettings

log = logging.getLogger("netshield.sidecar")


class WafRoutes:
    def __init__(
        self,
        config: WafConfig | None = None,
        ingress: tuple[IngressConfig, ...] = (),
        *,
        workers: int | None = None,
    ) -> None:
        self.config = config or WafConfig()
        self.ingress = ingress
        self._engines: dict[WafSettings, Engine] = {}
        self._loading: dict[WafSettings, asyncio.Future[Engine]] = {}
        workers = workers or max(2, os.cpu_count() or 2)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="netshield-waf")
        self.inspections = Inspections(self.executor, workers)
        self.pools: dict[Any, UpstreamPool] = {}
        self.tls_cache: dict[int, Any] = {}  # ingress server-only TLS contexts by credentials

    def _load(self, settings: WafSettings, route: str) -> Engine:
        engine = self._engines.get(settings)
        if engine is None:
            engine = load_engine(settings, route=route)
            self._engines[settings] = engine
        return engine

    def load_configured(self, native_routes: tuple[str, ...] = ()) -> list[str]:
        """Load every engine the config names; one start-up line per route."""
        lines = []
        wanted: list[tuple[str, WafSettings]] = []
        if self.config.configured:
            wanted.append(("waf (default for native routes)", self.config.defaults))
        wanted += [(f"waf.routes.{name}", s) for name, s in self.config.routes.items()]
        wanted += [(f"ingress:{i.service} {i.listen}", i.waf) for i in self.ingress]
        for route, settings in wanted:
            if settings.mode == "off":
                lines.append(f"{route}: WAF off")
                continue
            engine = self._load(settings, route)
            lines.append(f"{route}: {engine.description}")
        return lines

    async def engine(self, settings: WafSettings, route: str) -> Engine:
        """The engine for `settings`, loading it off the event loop on first use."""
        engine = self._engines.get(settings)
        if engine is not None:
            return engine
        pending = self._loading.get(settings)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = asyncio.ensure_future(
                loop.run_in_executor(self.executor, self._load, settings, route)
            )
            self._loading[settings] = pending
            pending.add_done_callback(lambda _f: self._loading.pop(settings, None))
            engine = await pending
            log.info("WAF route %s: %s", route, engine.description)
            return engine
        return await asyncio.shield(pending)

    def pool(self, key: Any) -> UpstreamPool:
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = UpstreamPool()
        return pool

    def close(self) -> None:
        """Close pooled connections, stop the threads, free the engines (idempotent)."""
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        self.inspections.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()


__all__ = ["WafRoutes"]
