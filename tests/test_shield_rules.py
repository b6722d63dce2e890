"""What the in-process shield makes of each socket operation: pure decisions (netshield.shield.rules)."""

from __future__ import annotations

import pytest

from netshield.netaddr import HostPort
from netshield.policyslice import MeshEntry, NativeEntry, PolicySlice
from netshield.reasons import Reason
from netshield.shield.config import parse_pattern, parse_shield_config
from netshield.shield.rules import (
    Native,
    Protected,
    Refused,
    Unprotected,
    addresses_for_name,
    decide_datagram,
    decide_listen,
    decide_outbound,
    listen_refusal,
    pattern_matches,
)

BASE = """
service: frontend
cas: {url: "https://cas.test:8443", ca: ca.pem}
platform: {in_process: p1}
"""

SLICE = PolicySlice(
    service="frontend",
    trust_domain="td.test",
    may_call=frozenset({"orders"}),
    registry={
        "orders": MeshEntry("orders", "spiffe://td.test/svc/orders", (HostPort("10.0.0.2", 8080),)),
    },
    native_services={"legacy": NativeEntry("legacy", HostPort("10.0.0.9", 80), waf=True)},
)


def config(extra: str = "") -> object:
    return parse_shield_config(BASE + extra)


def test_registry_addresses_are_protected_with_the_services_identity() -> None:
    verdict = decide_outbound(config().outbound, SLICE, HostPort("10.0.0.2", 8080), {})
    assert verdict == Protected("orders", HostPort("10.0.0.2", 8080))
    other_port = decide_outbound(config().outbound, SLICE, HostPort("10.0.0.2", 8081), {})
    assert isinstance(other_port, Refused) and other_port.reason is Reason.DESTINATION_NOT_IN_MESH


def test_no_wildcard_rule_can_send_a_mesh_service_plaintext() -> None:
    outbound = config(
        'outbound: {default: unprotected, destinations: [{address: "*:*", mode: unprotected}]}'
    ).outbound
    assert isinstance(decide_outbound(outbound, SLICE, HostPort("10.0.0.2", 8080), {}), Protected)
    assert isinstance(decide_outbound(outbound, SLICE, HostPort("10.0.0.3", 1), {}), Unprotected)


def test_native_services_take_the_native_route() -> None:
    verdict = decide_outbound(config().outbound, SLICE, HostPort("10.0.0.9", 80), {})
    assert verdict == Native("legacy", HostPort("10.0.0.9", 80), True)


def test_address_rules_apply_in_order_and_the_default_last() -> None:
    outbound = config(
        "outbound:\n"
        "  default: unprotected\n"
        "  destinations:\n"
        '    - {address: "10.9.0.0/16:*", mode: refuse}\n'
        '    - {address: "db.internal:5432", mode: unprotected}\n'
    ).outbound
    refused = decide_outbound(outbound, SLICE, HostPort("10.9.1.1", 22), {})
    assert isinstance(refused, Refused) and "outbound.destinations[0]" in refused.detail
    named = decide_outbound(
        outbound, SLICE, HostPort("10.1.1.1", 5432), {"db.internal": frozenset({"10.1.1.1"})}
    )
    assert isinstance(named, Unprotected) and "destinations[1]" in named.detail
    assert isinstance(decide_outbound(outbound, SLICE, HostPort("10.1.1.2", 5432), {}), Unprotected)
    strict = decide_outbound(config().outbound, SLICE, HostPort("10.1.1.2", 5432), {})
    assert isinstance(strict, Refused) and "outbound.default is refuse" in strict.detail


def test_without_credentials_nothing_is_decided_but_a_refusal() -> None:
    outbound = config("outbound: {default: unprotected}").outbound
    verdict = decide_outbound(outbound, None, HostPort("10.1.1.2", 5432), {})
    assert isinstance(verdict, Refused) and verdict.reason is Reason.NO_CREDENTIALS


def test_a_service_rule_with_an_address_overrides_the_registry() -> None:
    outbound = config(
        'outbound: {destinations: [{service: orders, address: "127.0.0.1:9000", names: [orders]}]}'
    ).outbound
    assert decide_outbound(outbound, SLICE, HostPort("127.0.0.1", 9000), {}) == Protected(
        "orders", HostPort("127.0.0.1", 9000)
    )
    assert addresses_for_name(outbound, SLICE, "Orders.") == [HostPort("127.0.0.1", 9000)]
    assert addresses_for_name(outbound, SLICE, "payments") is None


def test_names_of_a_service_stand_for_its_registry_addresses() -> None:
    outbound = config(
        "outbound: {destinations: [{service: orders, names: [orders.mesh]}]}"
    ).outbound
    assert addresses_for_name(outbound, SLICE, "orders.mesh") == [HostPort("10.0.0.2", 8080)]
    assert addresses_for_name(outbound, None, "orders.mesh") == []


def test_udp_to_a_mesh_destination_is_refused_and_elsewhere_follows_the_rules() -> None:
    outbound = config('outbound: {destinations: [{address: "*:53", mode: unprotected}]}').outbound
    refused = decide_datagram(outbound, SLICE, HostPort("10.0.0.2", 8080), {})
    assert refused is not None and refused.reason is Reason.UDP_NOT_PROTECTED
    assert decide_datagram(outbound, SLICE, HostPort("10.0.0.53", 53), {}) is None
    other = decide_datagram(outbound, SLICE, HostPort("10.0.0.53", 54), {})
    assert other is not None and other.reason is Reason.DESTINATION_NOT_IN_MESH


def test_listening_ports_follow_the_inbound_rules() -> None:
    inbound = config(
        "inbound: {default: refuse, ports: [{port: 8080}, {port: 9100, mode: unprotected}]}"
    ).inbound
    assert decide_listen(inbound, 8080) == "protected"
    assert decide_listen(inbound, 9100) == "unprotected"
    assert decide_listen(inbound, 22) == "refuse"
    assert decide_listen(config().inbound, 22) == "protected"
    assert listen_refusal(22).reason is Reason.LISTEN_REFUSED


@pytest.mark.parametrize(
    ("pattern", "dest", "hit"),
    [
        ("*:*", "1.2.3.4:5", True),
        ("*:53", "1.2.3.4:53", True),
        ("*:53", "1.2.3.4:54", False),
        ("10.0.0.0/8:*", "10.200.0.1:1", True),
        ("10.0.0.0/8:*", "11.0.0.1:1", False),
        ("[::1]:80", "::1:80", True),
        ("[::ffff:0:0/96]:80", "10.0.0.1:80", True),
        ("10.0.0.1:80", "[::1]:80", False),
    ],
)
def test_address_patterns(pattern: str, dest: str, hit: bool) -> None:
    host, _, port = dest.rpartition(":")
    assert pattern_matches(parse_pattern(pattern), HostPort(host.strip("[]"), int(port)), {}) is hit
