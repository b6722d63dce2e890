"""The in-process shield's configuration file: YAML checked once into frozen dataclasses.

The shield shares the sidecar's sections (`cas`, `platform`, `admin`, `records`, `limits`,
`renewal`: the same specs, so the same keys and checks) and adds its own: `workload` without a
`cmd` (the command is the one the process really runs), `inbound` (what the program's listening
sockets become) and `outbound` (what its connections become).

```yaml
service: orders
cas: {url: https://cas.internal:8443, ca: mesh-ca.pem}
platform: {socket: /run/netshield/platform.sock}   # or {in_process: DIR}, for tests and demos
workload: {path: .}                 # in_process only: the code tree measured with the command
                                    # the process runs; default: the directory of its script
inbound:
  default: protected                # listening TCP sockets: protected | unprotected | refuse
  ports: [{port: 9100, mode: unprotected}]
outbound:
  default: refuse                   # destinations outside the mesh: refuse | unprotected
  destinations:
    - service: payments             # mesh mTLS expecting payments' identity, at its registry
      names: [payments]             # addresses (or `address`), also when dialled by these names
    - {address: "10.0.0.40:5432", mode: unprotected}
    - {address: "*:53", mode: unprotected}
admin: {listen: 127.0.0.1:15000}    # optional: /healthz /readyz /metrics /connections ...
c_extensions: refuse                # importing a C extension with sockets of its own fails
```

Guarantees: `parse_shield_config` returns a `ShieldConfig` or raises `ConfigError` listing every
problem by key path; it never touches the file system. `load_shield_config` also reports files
and directories that do not exist.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from netshield.attestation.workload import WORKLOAD_FIELDS
from netshield.errors import ConfigError, Problem
from netshield.identity import name_problem
from netshield.schema import (
    INVALID,
    Field,
    Int,
    ListOf,
    Record,
    Spec,
    Str,
    load_yaml,
    read_config_file,
    validate,
)
from netshield.sidecar.config import (
    SIDECAR_SPEC,
    AdminConfig,
    CasConfig,
    Limits,
    PlatformConfig,
    RecordsConfig,
    RenewalConfig,
    SidecarConfig,
    TlsMinVersion,
    WorkloadConfig,
    build_shared,
    file_problems,
)

Mode = Literal["protected", "unprotected", "refuse"]
OutsideMode = Literal["unprotected", "refuse"]
MODES: tuple[Mode, ...] = ("protected", "unprotected", "refuse")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AddressPattern:
    """``HOST:PORT`` of an outbound rule: HOST an IP, a CIDR, a name or ``*``; PORT or ``*``."""

    host: str  # as written ("*" for any)
    port: int | None  # None: any port
    network: Network | None = None  # HOST as an IP network (a single IP is a /32 or /128)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and "/" not in self.host else self.host
        return f"{host}:{'*' if self.port is None else self.port}"

    @property
    def is_name(self) -> bool:
        return self.host != "*" and self.network is None


@dataclass(frozen=True, slots=True)
class OutboundRule:
    """One destination the program dials: a mesh service (protected), or an address pattern
    passed through in plaintext (unprotected) or refused."""

    mode: Mode
    service: str | None = None  # protected: the service whose identity the server must have
    address: AddressPattern | None = None  # where; for a service: instead of the registry
    names: tuple[str, ...] = ()  # host names the program uses for the service


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    default: Mode = "protected"
    ports: tuple[tuple[int, Mode], ...] = ()
    tls_min_version: TlsMinVersion = "1.3"

    def mode_of(self, port: int) -> Mode:
        """What a listening socket on `port` becomes."""
        return next((mode for p, mode in self.ports if p == port), self.default)


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    default: OutsideMode = "refuse"
    destinations: tuple[OutboundRule, ...] = ()


@dataclass(frozen=True, slots=True)
class ShieldWorkload:
    path: Path | None = None  # None: the directory of the program's script
    signer: str = "0" * 64
    product_id: int = 0
    svn: int = 0


@dataclass(frozen=True)
class ShieldConfig:
    service: str
    cas: CasConfig
    platform: PlatformConfig
    workload: ShieldWorkload = field(default_factory=ShieldWorkload)
    inbound: InboundPolicy = field(default_factory=InboundPolicy)
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    admin: AdminConfig | None = None  # None: no admin listener
    c_extensions: Literal["refuse", "allow"] = "refuse"  # modules with sockets of their own
    records: RecordsConfig = field(default_factory=RecordsConfig)
    limits: Limits = field(default_factory=Limits)
    renewal: RenewalConfig = field(default_factory=RenewalConfig)

    def sidecar_view(self, workload_path: Path, cmd: tuple[str, ...]) -> SidecarConfig:
        """The same settings as the sidecar's agent and connection machinery read them (no
        listeners); with an in-process platform the workload is `workload_path` measured with
        `cmd`, the command this process runs."""
        return SidecarConfig(
            service=self.service,
            cas=self.cas,
            platform=self.platform,
            workload=None
            if self.platform.in_process is None
            else WorkloadConfig(
                path=workload_path,
                cmd=cmd,
                signer=self.workload.signer,
                product_id=self.workload.product_id,
                svn=self.workload.svn,
            ),
            admin=self.admin or AdminConfig(),
            records=self.records,
            limits=self.limits,
            renewal=self.renewal,
        )


# --- the document's shape ------------------------------------------------------------------------


def parse_pattern(text: str) -> AddressPattern:
    """``HOST:PORT`` with ``*`` wildcards; ValueError says what is wrong."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, port_text = raw[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [ipv6]:port")
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or (":" in host and "/" not in host):
            raise ValueError(f"{text!r} is not host:port (IPv6 addresses go in brackets)")
    if not host:
        raise ValueError(f"{text!r} has no host (use * for any)")
    if port_text == "*":
        port = None
    elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ValueError(f"{text!r}: port {port_text!r} is not 1-65535 or *")
    network: Network | None = None
    if host != "*":
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            if _hostname_problem(host) is not None:
                raise ValueError(
                    f"{text!r}: host {host!r} is not an IP, a CIDR, a name or *"
                ) from None
    return AddressPattern(host=host, port=port, network=network)


@dataclass(frozen=True)
class _Pattern(Spec):
    expected: str = "an address pattern (host:port, host an IP, CIDR, name or *, port or *)"

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if not isinstance(value, str):
            return self._wrong_type(value, path, problems)
        try:
            return parse_pattern(value)
        except ValueError as err:
            problems.append(Problem(path, str(err)))
            return INVALID


def _hostname_problem(value: str) -> str | None:
    labels = value.split(".")
    if (
        not value
        or len(value) > 253
        or not all(
            label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels
        )
    ):
        return f"{value!r} is not a host name"
    return None


_SIDECAR = SIDECAR_SPEC.fields
_MODE = Str(expected="protected, unprotected or refuse", choices=MODES)
_OUTSIDE = Str(expected="unprotected or refuse", choices=("unprotected", "refuse"))
_NAME = Str(expected="a service name", validators=(name_problem,))

SHIELD_SPEC = Record(
    {
        "service": _SIDECAR["service"],
        "cas": _SIDECAR["cas"],
        "platform": _SIDECAR["platform"],
        "workload": Field(
            Record(
                {
                    "path": Field(WORKLOAD_FIELDS["path"].spec),
                    "signer": WORKLOAD_FIELDS["signer"],
                    "product_id": WORKLOAD_FIELDS["product_id"],
                    "svn": WORKLOAD_FIELDS["svn"],
                },
                expected="the code tree to measure (a mapping with path); the command measured "
                "is the one the process runs",
            )
        ),
        "inbound": Field(
            Record(
                {
                    "default": Field(_MODE, default="protected"),
                    "ports": Field(
                        ListOf(
                            Record(
                                {
                                    "port": Field(Int(min=1, max=65535), required=True),
                                    "mode": Field(_MODE, default="protected"),
                                },
                                expected="a port rule (a mapping with port and mode)",
                            ),
                            expected="a list of port rules",
                        )
                    ),
                    "tls_min_version": Field(
                        _SIDECAR["inbound"].spec.inner.fields["tls_min_version"].spec,  # type: ignore[attr-defined]
                        default="1.3",
                    ),
                }
            )
        ),
        "outbound": Field(
            Record(
                {
                    "default": Field(_OUTSIDE, default="refuse"),
                    "destinations": Field(
                        ListOf(
                            Record(
                                {
                                    "service": Field(_NAME),
                                    "address": Field(_Pattern()),
                                    "names": Field(
                                        ListOf(
                                            Str(
                                                expected="a host name",
                                                validators=(_hostname_problem,),
                                            ),
                                            expected="a list of host names",
                                        )
                                    ),
                                    "mode": Field(_MODE),
                                },
                                expected="a destination (a mapping with service or address)",
                            ),
                            expected="a list of destinations",
                        )
                    ),
                }
            )
        ),
        "admin": Field(_SIDECAR["admin"].spec),
        "c_extensions": Field(
            Str(expected="refuse or allow", choices=("refuse", "allow")), default="refuse"
        ),
        "records": _SIDECAR["records"],
        "limits": _SIDECAR["limits"],
        "renewal": _SIDECAR["renewal"],
    },
    expected="an in-process shield config (a mapping with service, cas, platform, ...)",
)
"""The shield config's shape (the sidecar's sections where they mean the same)."""


# --- parsing -------------------------------------------------------------------------------------


def parse_shield_config(
    text: str | bytes, *, source: str = "shield config", base_dir: Path = Path()
) -> ShieldConfig:
    """Parse and check a shield config; ConfigError(source, every problem) if it is wrong."""
    raw = load_yaml(text, source)
    doc, problems = validate(SHIELD_SPEC, raw)
    if isinstance(doc, dict):
        problems += _cross_problems(doc, raw)
    if problems:
        raise ConfigError(source, problems)
    return _build(doc, raw, base_dir)


def looks_like_shield_config(doc: object) -> bool:
    """Whether a parsed YAML document is meant as a shield config rather than a sidecar's: its
    `outbound` is a mapping (a sidecar's is a list), its `inbound` has rules, or it says
    `c_extensions`."""
    if not isinstance(doc, dict) or "service" not in doc:
        return False
    inbound = doc.get("inbound")
    return (
        isinstance(doc.get("outbound"), dict)
        or (isinstance(inbound, dict) and bool({"default", "ports"} & set(inbound)))
        or "c_extensions" in doc
    )


def load_shield_config(path: Path) -> ShieldConfig:
    """Read, parse and check the config at `path`, including that the files it names exist."""
    text = read_config_file(path)
    config = parse_shield_config(text, source=str(path), base_dir=path.parent)
    problems = file_problems(config.sidecar_view(config.workload.path or path.parent, ()))
    if problems:
        raise ConfigError(str(path), problems)
    return config


def _rules(doc: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    value = doc["outbound"]["destinations"] if isinstance(doc["outbound"], dict) else None
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _cross_problems(doc: dict[str, Any], raw: object) -> list[Problem]:
    problems: list[Problem] = []
    platform = doc["platform"]
    if isinstance(platform, dict):
        given = sorted(key for key, value in platform.items() if value is not None)
        if len(given) != 1:
            problems.append(
                Problem(
                    "platform",
                    f"give exactly one of {', '.join(sorted(platform))} (got "
                    f"{', '.join(given) or 'none'})",
                )
            )
        raw_workload = raw.get("workload") if isinstance(raw, dict) else None
        if given != ["in_process"] and raw_workload is not None:
            problems.append(
                Problem(
                    "workload",
                    "only a platform held in process measures the workload itself; with the "
                    "host's platform service (or a TEE) the platform measures it: remove this "
                    "section, or use platform.in_process",
                )
            )
    for i, rule in _rules(doc):
        path = f"outbound.destinations[{i}]"
        service, address, mode, names = (
            rule["service"],
            rule["address"],
            rule["mode"],
            rule["names"],
        )
        if service is None and address is None:
            problems.append(Problem(path, "needs service (a mesh service) or address (host:port)"))
        if service is not None and mode not in (None, "protected"):
            problems.append(
                Problem(
                    f"{path}.mode",
                    f"a mesh service is always protected (got {mode!r}); to refuse it, "
                    "leave it out (the CAS policy decides who may call whom)",
                )
            )
        if service is None and address is not None and mode in (None, "protected"):
            problems.append(
                Problem(
                    f"{path}.mode" if mode else path,
                    "protected needs the service whose identity to expect (service: NAME); "
                    "for an address outside the mesh say mode: unprotected or refuse",
                )
            )
        if service is None and isinstance(names, list) and names:
            problems.append(Problem(f"{path}.names", "names are for mesh services (service: NAME)"))
        if (
            isinstance(address, AddressPattern)
            and service is not None
            and (
                address.port is None
                or address.network is None
                or address.network.num_addresses != 1
            )
        ):
            problems.append(
                Problem(
                    f"{path}.address",
                    f"a service's address must be one host:port, got {address}",
                )
            )
    inbound = doc["inbound"]
    if isinstance(inbound, dict) and isinstance(inbound["ports"], list):
        seen: set[int] = set()
        for i, rule in enumerate(inbound["ports"]):
            if isinstance(rule, dict) and isinstance(rule["port"], int):
                if rule["port"] in seen:
                    problems.append(
                        Problem(f"inbound.ports[{i}].port", f"{rule['port']} is listed twice")
                    )
                seen.add(rule["port"])
    admin = doc["admin"]
    raw_admin = raw.get("admin") if isinstance(raw, dict) else None
    if raw_admin is not None and isinstance(admin, dict):
        listen = admin["listen"]
        if listen is not None and not listen.is_loopback and admin["unsafe_public"] is not True:
            problems.append(
                Problem(
                    "admin.listen",
                    f"the admin listener is loopback-only, got {listen}; set "
                    "admin.unsafe_public: true to expose /metrics and /connections beyond this host",
                )
            )
    return problems


def _build(doc: dict[str, Any], raw: object, base_dir: Path) -> ShieldConfig:
    workload, inbound, outbound = doc["workload"], doc["inbound"], doc["outbound"]
    shared = build_shared(doc, base_dir)
    if not (isinstance(raw, dict) and raw.get("admin") is not None):
        shared["admin"] = None  # the admin listener is optional here
    return ShieldConfig(
        service=doc["service"],
        c_extensions=doc["c_extensions"],
        workload=ShieldWorkload(
            path=None if workload["path"] is None else base_dir / workload["path"],
            signer=workload["signer"],
            product_id=workload["product_id"],
            svn=workload["svn"],
        ),
        inbound=InboundPolicy(
            default=inbound["default"],
            ports=tuple((rule["port"], rule["mode"]) for rule in inbound["ports"]),
            tls_min_version=inbound["tls_min_version"],
        ),
        outbound=OutboundPolicy(
            default=outbound["default"],
            destinations=tuple(
                OutboundRule(
                    mode="protected" if rule["service"] is not None else rule["mode"],
                    service=rule["service"],
                    address=rule["address"],
                    names=tuple(rule["names"]),
                )
                for rule in outbound["destinations"]
            ),
        ),
        **shared,
    )


__all__ = [
    "MODES",
    "SHIELD_SPEC",
    "AddressPattern",
    "InboundPolicy",
    "Mode",
    "OutboundPolicy",
    "OutboundRule",
    "OutsideMode",
    "ShieldConfig",
    "ShieldWorkload",
    "load_shield_config",
    "looks_like_shield_config",
    "parse_pattern",
    "parse_shield_config",
]
