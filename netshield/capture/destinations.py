"""Which service a transparently captured connection was going to.

Responsibility: given the address a service dialled (recovered with SO_ORIGINAL_DST) and the
policy slice the CAS issued (its `registry` of mesh services with their addresses and identities,
and its `native_services`), say whether the destination is a mesh service (open mutual TLS to it,
expecting its identity), a native service (no sidecar: plaintext), or outside the mesh.

Guarantees: pure and total: every slice (typed and checked when the credentials arrived) gives
an answer. An address matches when the port is equal and the host is the same IP (IPv4-mapped
IPv6 counts as IPv4) or a name that `resolved` maps to that IP. Mesh services are matched before
native services, and services in name order, so the answer never depends on dict order.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from netshield.netaddr import HostPort
from netshield.policyslice import PolicySlice


@dataclass(frozen=True, slots=True)
class MeshDestination:
    service: str
    identity: str  # the SPIFFE id its sidecar must present
    address: HostPort  # where to open mutual TLS (the address that matched)


@dataclass(frozen=True, slots=True)
class NativeDestination:
    service: str
    address: HostPort
    waf: bool


@dataclass(frozen=True, slots=True)
class OutsideMesh:
    address: HostPort


Destination = MeshDestination | NativeDestination | OutsideMesh


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _mesh_entries(slice_: PolicySlice) -> Iterator[tuple[str, str, HostPort]]:
    for name, entry in sorted(slice_.registry.items()):
        for address in entry.addresses:
            yield name, entry.identity, address


def _native_entries(slice_: PolicySlice) -> Iterator[tuple[str, bool, HostPort]]:
    for name, entry in sorted(slice_.native_services.items()):
        yield name, entry.waf, entry.address


def registry_hostnames(slice_: PolicySlice) -> set[str]:
    """Registry and native-service hosts that are names, not IPs (to resolve before `classify`)."""
    hosts = {a.host for _n, _i, a in _mesh_entries(slice_)}
    hosts |= {a.host for _n, _w, a in _native_entries(slice_)}
    return {h for h in hosts if _ip(h) is None}


def matches(address: HostPort, original: HostPort, resolved: Mapping[str, frozenset[str]]) -> bool:
    """Does a registry `address` name the `original` destination?"""
    if address.port != original.port:
        return False
    want = _ip(original.host)
    have = _ip(address.host)
    if have is not None:
        return have == want
    return want is not None and any(_ip(ip) == want for ip in resolved.get(address.host, ()))


def classify(
    slice_: PolicySlice,
    original: HostPort,
    resolved: Mapping[str, frozenset[str]] | None = None,
) -> Destination:
    """The mesh service, native service or outside address `original` is."""
    names = resolved or {}
    for name, identity, address in _mesh_entries(slice_):
        if matches(address, original, names):
            return MeshDestination(name, identity, original)
    for name, waf, address in _native_entries(slice_):
        if matches(address, original, names):
            return NativeDestination(name, original, waf)
    return OutsideMesh(original)


__all__ = [
    "Destination",
    "MeshDestination",
    "NativeDestination",
    "OutsideMesh",
    "classify",
    "matches",
    "registry_hostnames",
]
