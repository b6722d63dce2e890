"""The one interface every WAF engine implements, and the choice of engine for a route.

An `Engine` takes a parsed request (and, when a route inspects responses, the response) and
returns `Verdict`s; it holds no per-connection state, may be called from several threads at
once, and its calls may take milliseconds (the route runs them off the event loop). Two
implementations: `netshield.waf.crs.CrsEngine` (ModSecurity v3 with the OWASP CRS) and
`netshield.waf.compact.CompactEngine` (netshield's compact rule set).

`load_engine` applies the settings' engine choice, with no silent fallback: ``crs`` loads CRS or
raises `WafUnavailable` with one sentence; ``auto`` falls back to the compact set only when
libmodsecurity or the CRS is not installed, and says so in the engine's `description`, which the
route's start-up line and `netshield config check` print.
"""

from __future__ import annotations

from typing import Protocol

from netshield.waf.crs import CrsEngine, CrsUnavailable, Exchange
from netshield.waf.http import HttpRequest, HttpResponse
from netshield.waf.modsecurity import ModSecurityUnavailable
from netshield.waf.settings import WafSettings
from netshield.waf.verdict import Verdict


class Engine(Protocol):
    name: str  # "crs" or "compact"
    description: str  # engine, rule set version and settings, for start-up lines

    def inspect_request(self, request: HttpRequest, exchange: Exchange) -> Verdict: ...

    def inspect_exchange(
        self, request: HttpRequest, response: HttpResponse, exchange: Exchange
    ) -> tuple[Verdict, Verdict]: ...

    def close(self) -> None: ...


class WafUnavailable(Exception):
    """A route's configured engine cannot run; the message is one sentence with the fix."""


def load_engine(settings: WafSettings, *, route: str = "") -> Engine:
    """The engine `settings` ask for (see the module docstring)."""
    from netshield.waf.compact import CompactEngine

    if settings.engine == "compact":
        return CompactEngine(settings)
    try:
        return CrsEngine(settings)
    except (CrsUnavailable, ModSecurityUnavailable) as err:
        if settings.engine == "auto" and _not_installed(err):
            return CompactEngine(settings, why=f"CRS not used: {err}")
        where = f"WAF route {route}: " if route else ""
        raise WafUnavailable(f"{where}{err}") from err


def _not_installed(err: Exception) -> bool:
    text = str(err)
    return "not installed" in text or "no OWASP Core Rule Set" in text


__all__ = ["Engine", "Exchange", "WafUnavailable", "load_engine"]
