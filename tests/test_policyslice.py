"""The typed policy slice: cut on the CAS, sent as JSON, read back once on the sidecar."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.netaddr import HostPort
from netshield.policy import parse_policy
from netshield.policyslice import MeshEntry, NativeEntry, PolicySlice, slice_for

M = "a" * 64
POLICY = f"""
trust_domain: t.example
certificates: {{lifetime: 5m, min_epoch: 2}}
services:
  frontend:
    measurements: ["{M}"]
    addresses: ["10.0.0.1:8443"]
  orders:
    measurements: ["{M}"]
    allowed_callers: [frontend]
    addresses: ["orders.internal:8443", "[fd00::2]:8443"]
    authorization: audit
native_services:
  billing: {{address: "10.0.0.9:9000", waf: false}}
"""


def test_a_slice_round_trips_through_its_json_form() -> None:
    typed = slice_for(parse_policy(POLICY), "frontend")
    assert PolicySlice.from_json(typed.to_json()) == typed
    assert typed.may_call == {"orders"} and typed.min_epoch == 2
    assert typed.registry["orders"] == MeshEntry(
        "orders",
        "spiffe://t.example/svc/orders",
        (HostPort("orders.internal", 8443), HostPort("fd00::2", 8443)),
        "audit",
        frozenset({M}),
    )
    assert typed.certificate_lifetime.total_seconds() == 300
    assert typed.native_services["billing"] == NativeEntry(
        "billing", HostPort("10.0.0.9", 9000), waf=False
    )
    assert typed.address_of("orders") == HostPort("orders.internal", 8443)
    assert typed.address_of("nowhere") is None
    assert typed.authorization_of("orders") == "audit"
    assert typed.authorization_of("nowhere") == "enforce"


def test_a_slice_is_read_only() -> None:
    typed = slice_for(parse_policy(POLICY), "frontend")
    with pytest.raises(TypeError):
        typed.registry["x"] = typed.registry["orders"]  # type: ignore[index]


def test_a_malformed_slice_names_every_problem_by_key_path() -> None:
    doc = slice_for(parse_policy(POLICY), "frontend").to_json()
    del doc["trust_domain"]
    doc["min_epoch"] = "2"
    doc["registry"]["orders"]["addresses"] = ["orders.internal:0"]
    doc["native_services"]["billing"]["waf"] = "no"
    with pytest.raises(ValueError) as info:
        PolicySlice.from_json(doc)
    text = str(info.value)
    for path in (
        "policy.trust_domain",
        "policy.min_epoch",
        "policy.registry.orders.addresses[0]",
        "policy.native_services.billing.waf",
    ):
        assert path in text


def test_a_well_formed_slice_raises_nothing() -> None:
    doc = slice_for(parse_policy(POLICY), "orders").to_json()
    assert PolicySlice.from_json(doc).allowed_callers == {"frontend"}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(_json)
def test_any_json_is_a_slice_or_one_value_error(doc: Any) -> None:
    try:
        PolicySlice.from_json(doc)
    except ValueError as err:
        assert str(err).startswith("the CAS sent a malformed policy slice: ")
