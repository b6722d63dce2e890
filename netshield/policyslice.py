"""The slice of policy one sidecar receives with its certificate, as frozen typed values.

Responsibility: cut a service's slice from the `Policy` (`slice_for`, on the CAS), write it as
the JSON the attestation answer carries (`PolicySlice.to_json`), and read that JSON back on the
sidecar (`PolicySlice.from_json`) once, when the credentials arrive, so the data plane works on
typed values: a missing or malformed key fails the attestation with its key path, never a
silent `None` on a connection.

Guarantees: `from_json(s.to_json()) == s`; `from_json` returns a `PolicySlice` or raises
`ValueError` listing every problem by key path (`policy.registry.orders.addresses[0]: ...`),
whatever the input; a `PolicySlice` is immutable (its maps are read-only views).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast

from netshield.errors import NetshieldError
from netshield.identity import SpiffeId
from netshield.netaddr import HostPort
from netshield.policy import DEFAULT_LIFETIME, Policy, may_call
from netshield.reasons import Reason
from netshield.schema import did_you_mean

Authorization = Literal["enforce", "audit"]
_AUTHORIZATIONS = ("enforce", "audit")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MeshEntry:
    """One mesh service as the registry tells a sidecar about it."""

    name: str
    identity: str
    addresses: tuple[HostPort, ...] = ()
    authorization: Authorization = "enforce"
    measurements: frozenset[str] = frozenset()  # what its workload may measure to
    any_measurement: bool = False  # SGX enclaves accepted by signer: no list covers them


@dataclass(frozen=True, slots=True)
class NativeEntry:
    """One native (non-attested) service and whether its route runs the WAF."""

    name: str
    address: HostPort
    waf: bool = True


def _frozen_map(items: Mapping[str, T] | None = None) -> Mapping[str, T]:
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True)
class PolicySlice:
    """What a service's sidecar knows of the policy: who it may call, who may call it, the
    mesh registry and the native services."""

    service: str
    trust_domain: str
    may_call: frozenset[str] = frozenset()
    allowed_callers: frozenset[str] = frozenset()
    authorization: Authorization = "enforce"
    min_epoch: int = 1
    certificate_lifetime: timedelta = DEFAULT_LIFETIME
    registry: Mapping[str, MeshEntry] = field(default_factory=_frozen_map)
    native_services: Mapping[str, NativeEntry] = field(default_factory=_frozen_map)

    # --- questions the data plane asks --------------------------------------------------------
    def address_of(self, service: str) -> HostPort | None:
        """The first address the registry lists for `service`, or None."""
        entry = self.registry.get(service)
        return entry.addresses[0] if entry and entry.addresses else None

    def authorization_of(self, service: str) -> Authorization:
        """The enforcement mode of a registry service (`enforce` for one the registry lacks)."""
        entry = self.registry.get(service)
        return entry.authorization if entry else "enforce"

    # --- the wire form ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The JSON the CAS sends in its attestation answer."""
        return {
            "service": self.service,
            "trust_domain": self.trust_domain,
            "may_call": sorted(self.may_call),
            "allowed_callers": sorted(self.allowed_callers),
            "authorization": self.authorization,
            "min_epoch": self.min_epoch,
            "certificate_lifetime_seconds": int(self.certificate_lifetime.total_seconds()),
            "registry": {
                name: {
                    "addresses": [str(a) for a in entry.addresses],
                    "identity": entry.identity,
                    "authorization": entry.authorization,
                    "measurements": sorted(entry.measurements),
                    **({"any_measurement": True} if entry.any_measurement else {}),
                }
                for name, entry in sorted(self.registry.items())
            },
            "native_services": {
                name: {"address": str(entry.address), "waf": entry.waf}
                for name, entry in sorted(self.native_services.items())
            },
        }

    @classmethod
    def from_json(cls, data: object) -> PolicySlice:
        """Read the slice from an attestation answer; ValueError lists every problem."""
        reader = _Reader()
        doc = reader.mapping(data, "policy")
        service = reader.text(doc.get("service"), "policy.service")
        trust_domain = reader.text(doc.get("trust_domain"), "policy.trust_domain")
        registry = {
            name: MeshEntry(
                name=name,
                identity=reader.text(entry.get("identity"), f"{path}.identity"),
                addresses=tuple(
                    a
                    for i, text in enumerate(
                        reader.items(entry.get("addresses"), f"{path}.addresses")
                    )
                    if (a := reader.address(text, f"{path}.addresses[{i}]")) is not None
                ),
                authorization=reader.mode(entry.get("authorization"), f"{path}.authorization"),
                measurements=frozenset(
                    reader.names(entry.get("measurements"), f"{path}.measurements")
                ),
                any_measurement=entry.get("any_measurement") is True,
            )
            for name, entry, path in reader.named(doc.get("registry"), "policy.registry")
        }
        natives = {
            name: NativeEntry(
                name=name,
                address=reader.address(entry.get("address"), f"{path}.address")
                or HostPort("invalid", 1),
                waf=reader.flag(entry.get("waf"), f"{path}.waf"),
            )
            for name, entry, path in reader.named(
                doc.get("native_services"), "policy.native_services"
            )
        }
        value = cls(
            service=service,
            trust_domain=trust_domain,
            may_call=frozenset(reader.names(doc.get("may_call"), "policy.may_call")),
            allowed_callers=frozenset(
                reader.names(doc.get("allowed_callers"), "policy.allowed_callers")
            ),
            authorization=reader.mode(doc.get("authorization"), "policy.authorization"),
            min_epoch=reader.count(doc.get("min_epoch"), "policy.min_epoch"),
            certificate_lifetime=timedelta(
                seconds=reader.count(
                    doc.get("certificate_lifetime_seconds"), "policy.certificate_lifetime_seconds"
                )
            ),
            registry=_frozen_map(registry),
            native_services=_frozen_map(natives),
        )
        if reader.problems:
            raise ValueError("the CAS sent a malformed policy slice: " + "; ".join(reader.problems))
        return value


class _Reader:
    """Collects every problem of one document instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def _bad(self, path: str, expected: str, value: object) -> None:
        self.problems.append(f"{path}: expected {expected}, got {value!r:.60}")

    def _checked(
        self, value: object, path: str, ok: Callable[[object], bool], expected: str
    ) -> bool:
        if ok(value):
            return True
        self._bad(path, expected, value)
        return False

    def mapping(self, value: object, path: str) -> Mapping[str, Any]:
        if self._checked(value, path, lambda v: isinstance(v, Mapping), "an object"):
            return cast(Mapping[str, Any], value)
        return {}

    def text(self, value: object, path: str) -> str:
        ok = self._checked(
            value, path, lambda v: isinstance(v, str) and bool(v), "a non-empty string"
        )
        return cast(str, value) if ok else ""

    def flag(self, value: object, path: str) -> bool:
        return (
            value is True
            if self._checked(value, path, lambda v: isinstance(v, bool), "true or false")
            else False
        )

    def count(self, value: object, path: str) -> int:
        ok = self._checked(
            value,
            path,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "a non-negative integer",
        )
        return cast(int, value) if ok else 0

    def mode(self, value: object, path: str) -> Authorization:
        ok = self._checked(value, path, lambda v: v in _AUTHORIZATIONS, "enforce or audit")
        return cast(Authorization, value) if ok else "enforce"

    def items(self, value: object, path: str) -> list[object]:
        if self._checked(value, path, lambda v: isinstance(v, list | tuple), "a list"):
            return list(cast(list[object], value))
        return []

    def names(self, value: object, path: str) -> list[str]:
        return [self.text(v, f"{path}[{i}]") for i, v in enumerate(self.items(value, path))]

    def address(self, value: object, path: str) -> HostPort | None:
        if not self._checked(value, path, lambda v: isinstance(v, str), "host:port"):
            return None
        try:
            return HostPort.parse(cast(str, value), allow_zero=False)
        except ValueError as err:
            self.problems.append(f"{path}: {err}")
            return None

    def named(self, value: object, path: str) -> list[tuple[str, Mapping[str, Any], str]]:
        """(name, entry, key path) of a name -> object section, sorted by name."""
        section = self.mapping(value, path)
        out = []
        for name in sorted(section, key=str):
            entry_path = f"{path}.{name}"
            if isinstance(name, str) and name:
                out.append((name, self.mapping(section[name], entry_path), entry_path))
            else:
                self._bad(entry_path, "a service name", name)
        return out


def slice_for(policy: Policy, service: str) -> PolicySlice:
    """The part of the policy a service's sidecar needs.

    `registry` lists every service in the mesh (its addresses and identity), so a sidecar can
    recognise a mesh destination it may not call and refuse it instead of passing it through.
    Raises NetshieldError(SERVICE_UNKNOWN) for a service the policy does not name.
    """
    own = policy.services.get(service)
    if own is None:
        hint = did_you_mean(service, list(policy.services)) or "the policy has no services"
        raise NetshieldError(
            f"no service {service!r} in the policy ({hint})", reason=Reason.SERVICE_UNKNOWN
        )
    return PolicySlice(
        service=service,
        trust_domain=policy.trust_domain,
        may_call=frozenset(name for name in policy.services if may_call(policy, service, name)),
        allowed_callers=frozenset(own.allowed_callers),
        authorization=own.authorization,
        min_epoch=policy.certificates.min_epoch,
        certificate_lifetime=policy.certificates.lifetime,
        registry=_frozen_map(
            {
                name: MeshEntry(
                    name=name,
                    identity=str(SpiffeId.for_service(policy.trust_domain, name)),
                    addresses=tuple(HostPort.parse(a, allow_zero=False) for a in svc.addresses),
                    authorization=svc.authorization,
                    measurements=svc.certified_measurements,
                    any_measurement=svc.any_measurement,
                )
                for name, svc in policy.services.items()
            }
        ),
        native_services=_frozen_map(
            {
                name: NativeEntry(
                    name=name,
                    address=HostPort.parse(native.address, allow_zero=False),
                    waf=native.waf,
                )
                for name, native in policy.native_services.items()
            }
        ),
    )
