"""A WAF route's settings: which engine and rules, how strict, and the limits of its HTTP parser.

`WafSettings` is a frozen value built once from the sidecar configuration (`waf:` and the
per-route `waf:` overrides, see `netshield.sidecar.config`); `merged` applies a route's
overrides on top of the sidecar's defaults. Nothing here loads rules: `netshield.waf.engines`
does that, and refuses to start a route whose configured rules cannot load.

Engines: ``crs`` (ModSecurity v3 with the OWASP Core Rule Set: the default; refuses to start
when it cannot load), ``compact`` (netshield's 17 built-in rules, for hosts without CRS), or
``auto`` (CRS when it is installed, else compact, and the start-up line says which).
Modes: ``block`` (refuse what the rules block, 403), ``detect`` (forward, record the verdict),
``off`` (no rules; the HTTP/1.1 checks still apply).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

EngineName = Literal["crs", "compact", "auto"]
WafMode = Literal["off", "detect", "block"]

DEFAULT_CRS_RULES = Path("/usr/share/modsecurity-crs")
FREE_TEXT_FIELDS = (
    "body",
    "comment",
    "content",
    "message",
    "text",
    "description",
    "post",
    "reply",
    "snippet",
    "code",
    "markdown",
)


@dataclass(frozen=True)
class Exclusion:
    """A CRS rule switched off for this route: everywhere (`target` None), or only for one
    variable (ModSecurity's ``SecRuleUpdateTargetById``), e.g. ``ARGS:comment``."""

    rule: int
    target: str | None = None


@dataclass(frozen=True)
class WafSettings:
    engine: EngineName = "crs"
    mode: WafMode = "block"
    rules: Path = DEFAULT_CRS_RULES  # a CRS directory (with rules/) or its rules/ folder
    paranoia: int = 1  # CRS paranoia level, 1-4
    inbound_threshold: int = 5  # CRS inbound anomaly score that blocks a request
    outbound_threshold: int = 4  # CRS outbound anomaly score that blocks a response
    exclusions: tuple[Exclusion, ...] = ()
    content_exclusions: bool = True  # netshield's shipped exclusions for prose/code fields
    free_text_fields: tuple[str, ...] = FREE_TEXT_FIELDS  # where posts carry prose and code
    allowed_methods: tuple[str, ...] = ("GET", "HEAD", "POST", "OPTIONS", "PUT", "PATCH", "DELETE")
    extra_content_types: tuple[str, ...] = ()  # request content types CRS allows beyond its own
    inspect_responses: bool = False  # CRS 950-959 data-leakage rules on response bodies
    max_body: int = 1024 * 1024  # request bodies over this are refused (413), all inspected
    max_response_body: int = 512 * 1024  # response bytes inspected when inspect_responses
    max_head: int = 16 * 1024  # request line plus headers, bytes (431 beyond)
    max_headers: int = 100
    request_timeout: timedelta = timedelta(seconds=30)  # to read one request's head and body
    keepalive_timeout: timedelta = timedelta(seconds=60)  # idle time between requests

    def merged(self, overrides: dict[str, Any]) -> WafSettings:
        """These settings with `overrides` (already validated values) applied."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known})

    def describe(self) -> str:
        """One phrase for start-up lines and records: mode, paranoia, thresholds."""
        if self.mode == "off":
            return "mode off"
        return (
            f"mode {self.mode}, paranoia {self.paranoia}, thresholds "
            f"{self.inbound_threshold}/{self.outbound_threshold}"
        )


__all__ = [
    "DEFAULT_CRS_RULES",
    "FREE_TEXT_FIELDS",
    "EngineName",
    "Exclusion",
    "WafMode",
    "WafSettings",
]
