"""The trust policy: which workloads may get a certificate, and which services may call which.

Responsibility: parse the policy YAML into frozen values (`Policy`), answer the questions the
CAS and the sidecars ask of it (`may_call`; a sidecar's slice is cut in `netshield.policyslice`),
hash its exact text, and write the commented starter policy used by `netshield init`.

Guarantees: `parse_policy` returns a `Policy` or raises `ConfigError` listing every problem in the
document by key path (unknown keys, bad values, callers that name no service, addresses claimed
twice); it never raises anything else, whatever the input. A `Policy` is immutable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Literal

from netshield.errors import ConfigError, Problem
from netshield.evidence_policy import (
    PLATFORM_EVIDENCE,
    SERVICE_EVIDENCE,
    OptionalList,
    PlatformEvidenceRules,
    Reference,
    SgxReference,
    SnpReference,
    TdxReference,
    build_platform_rules,
    build_references,
    reference_problems,
)
from netshield.identity import name_problem, trust_domain_problem
from netshield.schema import (
    Bool,
    Duration,
    Field,
    Int,
    ListOf,
    MapOf,
    Record,
    Str,
    did_you_mean,
    host_port_problem,
    load_yaml,
    non_empty_problem,
    sha256_hex_problem,
    validate,
)

Authorization = Literal["enforce", "audit"]

DEFAULT_LIFETIME = timedelta(minutes=10)
MIN_LIFETIME = timedelta(minutes=1)
MAX_LIFETIME = timedelta(hours=24)
_U32_MAX = 2**32 - 1


@dataclass(frozen=True)
class CertificatePolicy:
    lifetime: timedelta = DEFAULT_LIFETIME
    min_epoch: int = 1


@dataclass(frozen=True)
class PlatformRules:
    min_tcb: int = 0
    allow_debug: bool = False
    revoked: frozenset[str] = frozenset()
    evidence: PlatformEvidenceRules = field(default_factory=PlatformEvidenceRules)


@dataclass(frozen=True)
class ServicePolicy:
    """One service. `measurements` (with signer, product_id, min_svn) are the simulated
    platform's reference values, empty when the service accepts hardware evidence only;
    `evidence` holds the reference values per hardware evidence type it accepts."""

    name: str
    measurements: frozenset[str]
    signer: str | None = None
    product_id: int | None = None
    min_svn: int = 0
    allowed_callers: frozenset[str] = frozenset()
    addresses: tuple[str, ...] = ()
    enabled: bool = True
    allow_debug: bool | None = None  # None: platforms.allow_debug decides
    authorization: Authorization = "enforce"
    evidence: Mapping[str, Reference] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def certified_measurements(self) -> frozenset[str]:
        """Every measurement the CAS may certify for this service: the simulated platform's,
        the SEV-SNP launch measurements, the TDX MRTDs and the SGX MRENCLAVEs the policy lists."""
        found = set(self.measurements)
        for ref in self.evidence.values():
            if isinstance(ref, SnpReference):
                found |= ref.measurements
            elif isinstance(ref, TdxReference):
                found |= ref.mrtd
            elif isinstance(ref, SgxReference) and ref.mrenclave is not None:
                found |= ref.mrenclave
        return frozenset(found)

    @property
    def any_measurement(self) -> bool:
        """True when SGX enclaves are accepted by their signer, whatever their MRENCLAVE: then
        no list of measurements covers every certificate the CAS may issue for the service."""
        sgx = self.evidence.get("sgx")
        return isinstance(sgx, SgxReference) and sgx.mrenclave is None

    @property
    def accepted_evidence(self) -> tuple[str, ...]:
        """The evidence types this service accepts, the simulated platform first."""
        return (("sim",) if self.measurements else ()) + tuple(self.evidence)


@dataclass(frozen=True)
class NativeService:
    name: str
    address: str
    waf: bool = True


@dataclass(frozen=True)
class Policy:
    trust_domain: str
    certificates: CertificatePolicy = field(default_factory=CertificatePolicy)
    platforms: PlatformRules = field(default_factory=PlatformRules)
    services: Mapping[str, ServicePolicy] = field(default_factory=lambda: MappingProxyType({}))
    native_services: Mapping[str, NativeService] = field(
        default_factory=lambda: MappingProxyType({})
    )


# --- the document's shape -------------------------------------------------------------------

_DIGEST = Str(expected="a sha256 digest (64 hex characters)", validators=(sha256_hex_problem,))
_NAME = Str(expected="a service name", validators=(name_problem,))
_ADDRESS = Str(expected="an address (host:port)", validators=(host_port_problem,))
_U32 = Int(min=0, max=_U32_MAX)

_SERVICE = Record(
    {
        "measurements": Field(
            OptionalList(_DIGEST, expected="a list of sha256 digests", non_empty=True)
        ),
        "signer": Field(_DIGEST),
        "product_id": Field(_U32),
        "min_svn": Field(_U32, default=0),
        "allowed_callers": Field(ListOf(_NAME, expected="a list of service names")),
        "addresses": Field(ListOf(_ADDRESS, expected="a list of host:port addresses")),
        "enabled": Field(Bool(), default=True),
        "allow_debug": Field(Bool()),
        "authorization": Field(
            Str(expected="enforce or audit", choices=("enforce", "audit")), default="enforce"
        ),
        "evidence": Field(SERVICE_EVIDENCE),
    },
    expected="a service (a mapping with measurements, allowed_callers, ...)",
)

_NATIVE_SERVICE = Record(
    {"address": Field(_ADDRESS, required=True), "waf": Field(Bool(), default=True)},
    expected="a native service (a mapping with address and waf)",
)

POLICY_SPEC = Record(
    {
        "trust_domain": Field(
            Str(expected="a trust domain", validators=(trust_domain_problem,)), required=True
        ),
        "certificates": Field(
            Record(
                {
                    "lifetime": Field(
                        Duration(min=MIN_LIFETIME, max=MAX_LIFETIME), default=DEFAULT_LIFETIME
                    ),
                    "min_epoch": Field(Int(min=1, max=_U32_MAX), default=1),
                }
            )
        ),
        "platforms": Field(
            Record(
                {
                    "min_tcb": Field(_U32, default=0),
                    "allow_debug": Field(Bool(), default=False),
                    "revoked": Field(
                        ListOf(
                            Str(expected="a platform id", validators=(non_empty_problem,)),
                            expected="a list of platform ids",
                        ),
                    ),
                    **PLATFORM_EVIDENCE,
                }
            )
        ),
        "services": Field(MapOf(_SERVICE, key=name_problem, expected="a mapping of services")),
        "native_services": Field(
            MapOf(_NATIVE_SERVICE, key=name_problem, expected="a mapping of native services")
        ),
    },
    expected="a policy (a mapping with trust_domain, certificates, platforms, services)",
)
"""The policy document's shape; `netshield config check` and the docs can walk it."""


# --- parsing --------------------------------------------------------------------------------


def parse_policy(text: str | bytes, source: str = "policy") -> Policy:
    """Parse and check a policy document; ConfigError(source, every problem) if it is wrong."""
    doc, problems = validate(POLICY_SPEC, load_yaml(text, source))
    if isinstance(doc, dict):
        problems += _cross_problems(doc)
    if problems:
        raise ConfigError(source, problems)
    return _build(doc)


def _dicts(value: object) -> dict[str, dict[str, Any]]:
    """The entries of a (partially valid) MapOf result that are themselves valid records."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, dict)}


def _cross_problems(doc: dict[str, Any]) -> list[Problem]:
    """Checks that span keys: callers name services, names and addresses are used once."""
    problems: list[Problem] = []
    services, natives = _dicts(doc["services"]), _dicts(doc["native_services"])
    names = sorted(doc["services"]) if isinstance(doc["services"], dict) else []
    for name, svc in services.items():
        if svc["measurements"] is None and not svc["evidence"]:
            problems.append(
                Problem(
                    f"services.{name}.measurements",
                    "missing (required: a list of sha256 digests, unless evidence names the "
                    "hardware evidence the service accepts)",
                )
            )
        problems += [
            Problem(p, m)
            for p, m in reference_problems(f"services.{name}.evidence", svc["evidence"])
        ]
        callers = svc["allowed_callers"]
        for i, caller in enumerate(callers if isinstance(callers, list) else []):
            path = f"services.{name}.allowed_callers[{i}]"
            if not isinstance(caller, str) or caller in names:
                continue
            if caller in natives:
                problems.append(
                    Problem(path, f"{caller!r} is a native service, which cannot be a caller")
                )
            else:
                hint = did_you_mean(caller, names) or "services is empty"
                problems.append(Problem(path, f"no service named {caller!r} ({hint})"))
    for name in natives:
        if name in services:
            problems.append(
                Problem(f"native_services.{name}", f"{name!r} is also a service under services")
            )
    claimed: dict[str, str] = {}
    entries = [
        (f"services.{name}.addresses[{i}]", address)
        for name, svc in services.items()
        if isinstance(svc["addresses"], list)
        for i, address in enumerate(svc["addresses"])
    ] + [(f"native_services.{name}.address", native["address"]) for name, native in natives.items()]
    for path, address in entries:
        if not isinstance(address, str):
            continue
        if address in claimed:
            problems.append(Problem(path, f"address {address} is also {claimed[address]}"))
        else:
            claimed[address] = path
    return problems


def _build(doc: dict[str, Any]) -> Policy:
    certs, platforms = doc["certificates"], doc["platforms"]
    services = {
        name: ServicePolicy(
            name=name,
            measurements=frozenset(svc["measurements"] or ()),
            signer=svc["signer"],
            product_id=svc["product_id"],
            min_svn=svc["min_svn"],
            allowed_callers=frozenset(svc["allowed_callers"]),
            addresses=tuple(svc["addresses"]),
            enabled=svc["enabled"],
            allow_debug=svc["allow_debug"],
            authorization=svc["authorization"],
            evidence=build_references(svc["evidence"]),
        )
        for name, svc in doc["services"].items()
    }
    natives = {
        name: NativeService(name=name, address=native["address"], waf=native["waf"])
        for name, native in doc["native_services"].items()
    }
    return Policy(
        trust_domain=doc["trust_domain"],
        certificates=CertificatePolicy(lifetime=certs["lifetime"], min_epoch=certs["min_epoch"]),
        platforms=PlatformRules(
            min_tcb=platforms["min_tcb"],
            allow_debug=platforms["allow_debug"],
            revoked=frozenset(platforms["revoked"]),
            evidence=build_platform_rules(platforms),
        ),
        services=MappingProxyType(services),
        native_services=MappingProxyType(natives),
    )


def describe_problems(err: ConfigError) -> str:
    """Every problem on its own line, for `netshield config check`."""
    count = len(err.problems)
    lines = [f"{err.source}: {count} problem{'s' if count != 1 else ''}"]
    lines += [f"  {problem}" for problem in err.problems]
    return "\n".join(lines)


def policy_hash(text: str | bytes) -> str:
    """``sha256:<hex>`` of the policy's exact bytes (text is encoded as UTF-8)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- questions asked of a policy ------------------------------------------------------------


def may_call(policy: Policy, caller: str, callee: str) -> bool:
    """Whether `caller` is an allowed caller of the enabled service `callee`.

    This is what the policy says; whether a denial is enforced or only recorded is the callee's
    `authorization` setting, which the sidecar applies.
    """
    target = policy.services.get(callee)
    return (
        target is not None
        and target.enabled
        and caller in policy.services
        and caller in target.allowed_callers
    )


# --- the starter policy ---------------------------------------------------------------------

PLACEHOLDER_MEASUREMENT = "0" * 64
"""Stands in for a real measurement in the starter policy; no workload measures to it."""

_STARTER = """\
# netshield policy: which workloads get a certificate, and who may call whom.
# Check it with `netshield config check FILE`; every problem is listed by its key path.

# The SPIFFE trust domain: identities are spiffe://<trust_domain>/svc/<service>.
trust_domain: {trust_domain}

certificates:
  # How long a workload certificate lives (1m to 24h); sidecars renew by attesting again.
  lifetime: 10m
  # Raise it to make peers refuse every certificate issued under a lower epoch.
  min_epoch: 1

platforms:
  # Lowest platform TCB (firmware) level accepted.
  min_tcb: 0
  # Debug-mode workloads can be inspected by the host: keep this false in production.
  allow_debug: false
  # Platform ids that may no longer attest.
  revoked: []

services:
  frontend:
    # Replace with what `netshield measure` prints for the approved build (all zeros: a
    # placeholder that no workload matches).
    measurements:
      - {frontend_measurement}
    # Services that may open connections to this one.
    allowed_callers: []
    # Where this service's sidecar accepts mesh connections.
    addresses:
      - {frontend_address}
  orders:
    measurements:
      - {orders_measurement}
    allowed_callers:
      - frontend
    addresses:
      - {orders_address}
    # enforce: refuse callers not listed above; audit: allow them but record a deny.
    authorization: enforce
    # Optional: signer (sha256 hex), product_id, min_svn, enabled, allow_debug.

# Services outside the mesh, reached through a route with an optional web application firewall:
# native_services:
#   billing:
#     address: 127.0.0.1:9000
#     waf: true
"""


def starter_policy(
    trust_domain: str,
    *,
    frontend_measurement: str = PLACEHOLDER_MEASUREMENT,
    orders_measurement: str = PLACEHOLDER_MEASUREMENT,
    frontend_address: str = "127.0.0.1:7001",
    orders_address: str = "127.0.0.1:7002",
) -> str:
    """The commented policy `netshield init` writes: services frontend and orders (orders allows
    frontend). The default measurement is a placeholder no workload has, so nothing attests until
    an operator puts real measurements in. Raises ConfigError (naming the key path) for a bad value.
    """
    values = {
        "trust_domain": trust_domain,
        "frontend_measurement": frontend_measurement,
        "orders_measurement": orders_measurement,
        "frontend_address": frontend_address,
        "orders_address": orders_address,
    }
    # JSON strings are YAML double-quoted scalars: digits-only digests stay strings.
    text = _STARTER.format(**{key: json.dumps(value) for key, value in values.items()})
    parse_policy(text, source="starter policy")
    return text


__all__ = [
    "PLACEHOLDER_MEASUREMENT",
    "POLICY_SPEC",
    "CertificatePolicy",
    "NativeService",
    "PlatformRules",
    "Policy",
    "ServicePolicy",
    "describe_problems",
    "may_call",
    "parse_policy",
    "policy_hash",
    "starter_policy",
]
