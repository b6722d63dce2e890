"""The WAF parts of the sidecar configuration: the ``waf:`` section (defaults for every WAF route
of the sidecar, and per-native-service overrides under ``waf.routes``) and ``ingress:`` listeners
(a native HTTP client -> WAF -> mesh mTLS to a confidential service).

```yaml
waf:
  engine: crs                # crs (default: refuse to start if CRS cannot load) | compact | auto
  rules: /usr/share/modsecurity-crs
  mode: block                # off | detect | block
  paranoia: 1                # CRS paranoia level 1-4
  inbound_threshold: 5
  outbound_threshold: 4
  exclusions: [{rule: 942100, target: "ARGS:q"}, {rule: 920350}]
  inspect_responses: false   # CRS 950-959 data-leakage rules
  max_body: 1048576
  routes:
    inventory: {mode: detect}          # a native service of the policy
ingress:
  - listen: 0.0.0.0:8080
    service: orders                    # the mesh service to forward to
    tls: server                        # off (plain HTTP) | server (the sidecar's mesh certificate)
    waf: {paranoia: 2}
```

Guarantees: every key is checked with its path like the rest of the config (unknown keys are
errors); the builders return frozen values; nothing here loads rules (`netshield.waf.engine`
does, at start-up, and refuses to start a route whose configured rules cannot load).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from netshield.identity import name_problem
from netshield.netaddr import HostPort
from netshield.schema import Bool, Duration, Field, Int, ListOf, MapOf, Record, Spec, Str
from netshield.waf.settings import Exclusion, WafSettings

IngressTls = Literal["off", "server"]
_TARGET_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ_:.-/abcdefghijklmnopqrstuvwxyz0123456789")


def _target_problem(value: str) -> str | None:
    collection, _, name = value.partition(":")
    if not collection or not collection.isupper() or not set(value) <= _TARGET_CHARS:
        return "not a ModSecurity variable (e.g. ARGS:comment, REQUEST_COOKIES:session)"
    if value.endswith(":") and not name:
        return "names no variable after the colon"
    return None


_EXCLUSION = Record(
    {
        "rule": Field(Int(expected="a rule id", min=1, max=9_999_999), required=True),
        "target": Field(Str(expected="a ModSecurity variable", validators=(_target_problem,))),
    },
    expected="a rule exclusion (a mapping with rule and, optionally, target)",
)
_SECOND = timedelta(seconds=1)


def waf_fields(*, with_defaults: bool) -> dict[str, Field]:
    """The keys of a WAF settings mapping; overrides (`with_defaults` False) default to None."""
    d = WafSettings()

    def f(spec: Spec, default: Any) -> Field:
        return Field(spec, default=default if with_defaults else None)

    return {
        "engine": f(
            Str(expected='"crs", "compact" or "auto"', choices=("crs", "compact", "auto")), d.engine
        ),
        "rules": f(Str(expected="a path to the OWASP CRS"), str(d.rules)),
        "mode": f(
            Str(expected='"off", "detect" or "block"', choices=("off", "detect", "block")), d.mode
        ),
        "paranoia": f(Int(expected="a CRS paranoia level (1-4)", min=1, max=4), d.paranoia),
        "inbound_threshold": f(Int(min=1, max=10_000), d.inbound_threshold),
        "outbound_threshold": f(Int(min=1, max=10_000), d.outbound_threshold),
        "exclusions": Field(ListOf(_EXCLUSION, expected="a list of rule exclusions"))
        if with_defaults
        else Field(ListOf(_EXCLUSION, expected="a list of rule exclusions"), default=None),
        "content_exclusions": f(Bool(), d.content_exclusions),
        "inspect_responses": f(Bool(), d.inspect_responses),
        "max_body": f(Int(min=0, max=64 * 1024 * 1024), d.max_body),
        "max_response_body": f(Int(min=0, max=64 * 1024 * 1024), d.max_response_body),
        "max_head": f(Int(min=1024, max=1024 * 1024), d.max_head),
        "max_headers": f(Int(min=1, max=1000), d.max_headers),
        "request_timeout": f(Duration(min=_SECOND, max=timedelta(minutes=10)), d.request_timeout),
        "keepalive_timeout": f(Duration(min=_SECOND, max=timedelta(hours=1)), d.keepalive_timeout),
    }


_OVERRIDES = Record(waf_fields(with_defaults=False), expected="WAF settings for one route")

WAF_SPEC = Record(
    {
        **waf_fields(with_defaults=True),
        "routes": Field(
            MapOf(_OVERRIDES, key=name_problem, expected="WAF settings by native service name")
        ),
    },
    expected="the WAF settings of this sidecar's routes (a mapping)",
)


def ingress_spec(address: Spec) -> Record:
    """An ``ingress:`` entry; `address` is the config's address spec (binds allowed)."""
    return Record(
        {
            "listen": Field(address, required=True),
            "service": Field(
                Str(expected="a service name", validators=(name_problem,)), required=True
            ),
            "address": Field(address),
            "tls": Field(
                Str(expected='"off" or "server"', choices=("off", "server")), default="off"
            ),
            "waf": Field(_OVERRIDES),
        },
        expected="an ingress route (a mapping with listen, service and tls)",
    )


@dataclass(frozen=True)
class WafConfig:
    defaults: WafSettings = field(default_factory=lambda: WafSettings(engine="auto"))
    routes: Mapping[str, WafSettings] = field(default_factory=lambda: MappingProxyType({}))
    configured: bool = False  # the file has a waf: section (load its engine at start-up)

    def for_native(self, service: str) -> WafSettings:
        return self.routes.get(service, self.defaults)


@dataclass(frozen=True)
class IngressConfig:
    listen: HostPort
    service: str  # the mesh service requests are forwarded to
    tls: IngressTls = "off"
    address: HostPort | None = None  # overrides the registry's address for `service`
    waf: WafSettings = field(default_factory=WafSettings)

    @property
    def name(self) -> str:
        return f"ingress:{self.service}"


def _settings(values: Mapping[str, Any], base: WafSettings, base_dir: Path) -> WafSettings:
    given = {k: v for k, v in values.items() if v is not None and k != "routes"}
    if "rules" in given:
        given["rules"] = base_dir / given["rules"]
    if "exclusions" in given:  # a route's exclusions add to the sidecar-wide ones
        given["exclusions"] = base.exclusions + tuple(
            Exclusion(e["rule"], e["target"]) for e in given["exclusions"]
        )
    return base.merged(given)


def build_waf(doc: Mapping[str, Any] | None, base_dir: Path) -> WafConfig:
    if not doc:
        return WafConfig()
    defaults = _settings(doc, WafSettings(), base_dir)
    routes = {
        name: _settings(values, defaults, base_dir)
        for name, values in (doc.get("routes") or {}).items()
    }
    return WafConfig(defaults, MappingProxyType(routes), configured=True)


def build_ingress(
    entries: list[Mapping[str, Any]], waf: WafConfig, base_dir: Path
) -> tuple[IngressConfig, ...]:
    return tuple(
        IngressConfig(
            listen=e["listen"],
            service=e["service"],
            tls=e["tls"],
            address=e["address"],
            waf=_settings(e["waf"] or {}, waf.defaults, base_dir),
        )
        for e in entries
    )


__all__ = [
    "WAF_SPEC",
    "IngressConfig",
    "IngressTls",
    "WafConfig",
    "build_ingress",
    "build_waf",
    "ingress_spec",
    "waf_fields",
]
