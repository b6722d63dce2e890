"""Which service a captured connection was going to, from the policy slice's registry (pure)."""

from __future__ import annotations

from netshield.capture.destinations import (
    MeshDestination,
    NativeDestination,
    OutsideMesh,
    classify,
    matches,
    registry_hostnames,
)
from netshield.netaddr import HostPort
from netshield.policy import parse_policy
from netshield.policyslice import PolicySlice, slice_for

POLICY = f"""
trust_domain: td.test
services:
  frontend:
    measurements: ["{"a" * 64}"]
  orders:
    measurements: ["{"b" * 64}"]
    allowed_callers: [frontend]
    addresses: ["10.77.0.2:8080", "[fd77::2]:8080", "orders.internal:8080"]
native_services:
  legacy:
    address: "10.77.0.3:9090"
    waf: true
"""


def _slice() -> PolicySlice:
    return slice_for(parse_policy(POLICY), "frontend")


def test_a_registry_address_is_a_mesh_service_with_its_identity() -> None:
    found = classify(_slice(), HostPort("10.77.0.2", 8080))
    assert found == MeshDestination(
        "orders", "spiffe://td.test/svc/orders", HostPort("10.77.0.2", 8080)
    )
    assert classify(_slice(), HostPort("fd77::2", 8080)) == MeshDestination(
        "orders", "spiffe://td.test/svc/orders", HostPort("fd77::2", 8080)
    )


def test_the_same_host_on_another_port_is_outside_the_mesh() -> None:
    assert classify(_slice(), HostPort("10.77.0.2", 8081)) == OutsideMesh(
        HostPort("10.77.0.2", 8081)
    )
    assert classify(_slice(), HostPort("10.77.0.9", 8080)) == OutsideMesh(
        HostPort("10.77.0.9", 8080)
    )


def test_a_native_service_is_recognised() -> None:
    assert classify(_slice(), HostPort("10.77.0.3", 9090)) == NativeDestination(
        "legacy", HostPort("10.77.0.3", 9090), True
    )


def test_registry_names_match_only_through_what_they_resolve_to() -> None:
    assert registry_hostnames(_slice()) == {"orders.internal"}
    target = HostPort("10.77.0.50", 8080)
    assert isinstance(classify(_slice(), target), OutsideMesh)
    found = classify(_slice(), target, {"orders.internal": frozenset({"10.77.0.50"})})
    assert isinstance(found, MeshDestination) and found.service == "orders"


def test_ipv4_mapped_ipv6_matches_the_ipv4_entry() -> None:
    assert matches(HostPort("10.77.0.2", 8080), HostPort("::ffff:10.77.0.2", 8080), {})
    assert not matches(HostPort("10.77.0.2", 8080), HostPort("::ffff:10.77.0.3", 8080), {})
