"""Property tests: any document gives a Policy or a ConfigError; valid policies roundtrip."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netshield.errors import ConfigError
from netshield.policy import (
    CertificatePolicy,
    NativeService,
    PlatformRules,
    Policy,
    ServicePolicy,
    may_call,
    parse_policy,
)
from netshield.policyslice import PolicySlice, slice_for
from netshield.schema import format_duration

KEYS = [
    "trust_domain", "certificates", "lifetime", "min_epoch", "platforms", "min_tcb",
    "allow_debug", "revoked", "services", "native_services", "measurements", "signer",
    "product_id", "min_svn", "allowed_callers", "addresses", "enabled", "authorization",
    "address", "waf", "orders", "frontend",
]  # fmt: skip

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["a" * 64, "orders", "frontend", "10m", "h:1", "enforce", "audit"])
)

DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | SCALARS, children, max_size=5)
    ),
    max_leaves=40,
)


def parse_or_config_error(text: str | bytes) -> Policy | None:
    try:
        return parse_policy(text, source="fuzz")
    except ConfigError as err:
        assert err.problems and all("\n" not in str(p) for p in err.problems)
        return None


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_any_yaml_document_gives_a_policy_or_a_config_error(doc: Any) -> None:
    parse_or_config_error(yaml.safe_dump(doc))


@given(st.one_of(st.text(), st.binary()))
def test_any_text_gives_a_policy_or_a_config_error(text: str | bytes) -> None:
    parse_or_config_error(text)


# --- valid policies ---------------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z0-9]([a-z0-9_\-]{0,8}[a-z0-9])?", fullmatch=True)
HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
U32 = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def valid_policies(draw: st.DrawFn) -> tuple[dict[str, Any], Policy]:
    """A policy document with randomly present keys, and the Policy it must parse to."""
    names = draw(st.lists(NAMES, unique=True, max_size=6))
    split = draw(st.integers(min_value=0, max_value=len(names)))
    service_names, native_names = names[:split], names[split:]
    ports = iter(range(1000, 2000))
    doc: dict[str, Any] = {
        "trust_domain": draw(st.from_regex(r"[a-z0-9]([a-z0-9.]{0,20}[a-z0-9])?", fullmatch=True))
    }

    def coin() -> bool:
        return draw(st.booleans())

    def maybe(key: str, strategy: st.SearchStrategy[Any], into: dict[str, Any]) -> Any:
        if coin():
            into[key] = draw(strategy)
            return into[key]
        return None

    certs: dict[str, Any] = {}
    lifetime = maybe("lifetime", st.integers(min_value=60, max_value=86400), certs)
    if lifetime is not None and coin():
        certs["lifetime"] = format_duration(timedelta(seconds=lifetime))
    epoch = maybe("min_epoch", st.integers(min_value=1, max_value=2**32 - 1), certs)
    platforms: dict[str, Any] = {}
    min_tcb = maybe("min_tcb", U32, platforms)
    platform_debug = maybe("allow_debug", st.booleans(), platforms)
    revoked = maybe(
        "revoked", st.lists(st.text(min_size=1, max_size=8).filter(str.strip)), platforms
    )
    if certs or coin():
        doc["certificates"] = certs
    if platforms or coin():
        doc["platforms"] = platforms

    services: dict[str, ServicePolicy] = {}
    if service_names or coin():
        doc["services"] = {}
    for name in service_names:
        entry: dict[str, Any] = {"measurements": draw(st.lists(HEX64, min_size=1, max_size=3))}
        signer = maybe("signer", HEX64, entry)
        product_id = maybe("product_id", U32, entry)
        min_svn = maybe("min_svn", U32, entry)
        callers = maybe("allowed_callers", st.lists(st.sampled_from(service_names)), entry)
        addresses = [f"127.0.0.1:{next(ports)}" for _ in range(draw(st.integers(0, 2)))]
        if addresses or coin():
            entry["addresses"] = addresses
        enabled = maybe("enabled", st.booleans(), entry)
        allow_debug = maybe("allow_debug", st.booleans(), entry)
        authorization = maybe("authorization", st.sampled_from(["enforce", "audit"]), entry)
        doc["services"][name] = entry
        services[name] = ServicePolicy(
            name=name,
            measurements=frozenset(entry["measurements"]),
            signer=signer,
            product_id=product_id,
            min_svn=0 if min_svn is None else min_svn,
            allowed_callers=frozenset(callers or ()),
            addresses=tuple(addresses),
            enabled=True if enabled is None else enabled,
            allow_debug=allow_debug,
            authorization=authorization or "enforce",
        )

    natives: dict[str, NativeService] = {}
    if native_names or coin():
        doc["native_services"] = {}
    for name in native_names:
        native: dict[str, Any] = {"address": f"native-{name}.internal:{next(ports)}"}
        waf = maybe("waf", st.booleans(), native)
        doc["native_services"][name] = native
        natives[name] = NativeService(name, native["address"], True if waf is None else waf)

    expected = Policy(
        trust_domain=doc["trust_domain"],
        certificates=CertificatePolicy(
            lifetime=timedelta(seconds=600 if lifetime is None else lifetime),
            min_epoch=1 if epoch is None else epoch,
        ),
        platforms=PlatformRules(
            min_tcb=min_tcb or 0,
            allow_debug=bool(platform_debug),
            revoked=frozenset(revoked or ()),
        ),
        services=services,
        native_services=natives,
    )
    return doc, expected


@given(valid_policies())
def test_valid_policies_roundtrip(case: tuple[dict[str, Any], Policy]) -> None:
    doc, expected = case
    policy = parse_policy(yaml.safe_dump(doc, sort_keys=False))
    assert policy == expected
    for name, service in policy.services.items():
        typed = slice_for(policy, name)
        data = typed.to_json()
        assert json.loads(json.dumps(data)) == data
        assert PolicySlice.from_json(data) == typed
        assert data["allowed_callers"] == sorted(service.allowed_callers)
        for callee in data["may_call"]:
            assert may_call(policy, name, callee)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(valid_policies(), st.data())
def test_a_valid_policy_with_one_value_replaced_never_raises_anything_else(
    case: tuple[dict[str, Any], Policy], data: st.DataObject
) -> None:
    doc, _ = case
    node: Any = doc
    while isinstance(node, dict | list) and node and data.draw(st.booleans()):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys))
        if not isinstance(node[key], dict | list) or data.draw(st.booleans()):
            node[key] = data.draw(DOCUMENTS)
            break
        node = node[key]
    parse_or_config_error(yaml.safe_dump(doc))
