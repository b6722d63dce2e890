"""The policy document: parsing with every problem by key path, questions asked of it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from netshield.errors import ConfigError, NetshieldError
from netshield.policy import (
    PLACEHOLDER_MEASUREMENT,
    CertificatePolicy,
    NativeService,
    PlatformRules,
    ServicePolicy,
    describe_problems,
    may_call,
    parse_policy,
    policy_hash,
    starter_policy,
)
from netshield.policyslice import PolicySlice, slice_for
from netshield.reasons import Reason

M1, M2, M3 = "a" * 64, "b" * 64, "c" * 64

POLICY = f"""
trust_domain: prod.example.org
certificates:
  lifetime: 5m
  min_epoch: 3
platforms:
  min_tcb: 2
  allow_debug: false
  revoked: [p-old]
services:
  frontend:
    measurements: ["{M1}"]
    addresses: ["10.0.0.1:7001"]
  orders:
    measurements: ["{M2}", "{M3}"]
    signer: "{M1}"
    product_id: 7
    min_svn: 2
    allowed_callers: [frontend]
    addresses: ["10.0.0.2:7002", "[::1]:7002"]
    allow_debug: true
    authorization: audit
  legacy:
    measurements: ["{M1}"]
    allowed_callers: [frontend]
    enabled: false
native_services:
  billing:
    address: billing.internal:9000
    waf: false
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, source="p.yaml")
    assert info.value.reason is Reason.POLICY_INVALID
    return [str(p) for p in info.value.problems]


def minimal(services: str = "", extra: str = "") -> str:
    return f"trust_domain: t.example\n{extra}services:\n{services}"


# --- parsing ----------------------------------------------------------------------------------


def test_parse_policy_builds_frozen_values() -> None:
    policy = parse_policy(POLICY)
    assert policy.trust_domain == "prod.example.org"
    assert policy.certificates == CertificatePolicy(lifetime=timedelta(minutes=5), min_epoch=3)
    assert policy.platforms == PlatformRules(min_tcb=2, revoked=frozenset({"p-old"}))
    assert policy.services["orders"] == ServicePolicy(
        name="orders",
        measurements=frozenset({M2, M3}),
        signer=M1,
        product_id=7,
        min_svn=2,
        allowed_callers=frozenset({"frontend"}),
        addresses=("10.0.0.2:7002", "[::1]:7002"),
        allow_debug=True,
        authorization="audit",
    )
    assert policy.native_services == {
        "billing": NativeService(name="billing", address="billing.internal:9000", waf=False)
    }
    with pytest.raises(TypeError):
        policy.services["x"] = policy.services["orders"]  # type: ignore[index]


def test_parse_policy_applies_defaults_to_a_minimal_document() -> None:
    policy = parse_policy(minimal(f'  a:\n    measurements: ["{M1}"]\n'))
    assert policy.certificates == CertificatePolicy(lifetime=timedelta(minutes=10), min_epoch=1)
    assert policy.platforms == PlatformRules(min_tcb=0, allow_debug=False, revoked=frozenset())
    assert policy.services["a"] == ServicePolicy(name="a", measurements=frozenset({M1}))
    assert policy.native_services == {}


def test_parse_policy_accepts_bytes_and_str_alike() -> None:
    assert parse_policy(POLICY.encode()) == parse_policy(POLICY)


def test_policy_reports_a_bad_measurement_with_its_key_path() -> None:
    text = minimal('  orders:\n    measurements: ["3f2a9c"]\n')
    assert problems_of(text) == [
        "services.orders.measurements[0]: not a sha256 digest (expected 64 hex characters)"
    ]


def test_policy_reports_every_problem_at_once() -> None:
    text = """
trust_domain: Prod!
certificates: {lifetime: 30s, min_epok: 2}
platforms: {min_tcb: -1, allow_debug: maybe}
services:
  orders:
    measurements: [abc]
    allowed_caller: [frontend]
    authorization: enforec
  frontend:
    measurements: []
    addresses: ["10.0.0.1"]
"""
    assert problems_of(text) == [
        "trust_domain: not a trust domain (lower-case letters, digits, '.', '-', '_'; "
        "e.g. prod.example.org)",
        "certificates.min_epok: unknown key (did you mean 'min_epoch'?)",
        "certificates.lifetime: must be at least 1m, got 30s",
        "platforms.min_tcb: must be at least 0, got an integer (-1)",
        "platforms.allow_debug: expected true or false, got a string ('maybe')",
        "services.orders.allowed_caller: unknown key (did you mean 'allowed_callers'?)",
        "services.orders.measurements[0]: not a sha256 digest (expected 64 hex characters)",
        "services.orders.authorization: 'enforec' is not allowed (did you mean 'enforce'?)",
        "services.frontend.measurements: must not be empty (expected a list of sha256 digests)",
        "services.frontend.addresses[0]: not an address (expected host:port, "
        "e.g. 10.0.0.7:8443 or orders.internal:8443)",
    ]


def test_unknown_top_level_key_suggests_the_known_one() -> None:
    assert problems_of(minimal(extra="native_service: {}\n")) == [
        "native_service: unknown key (did you mean 'native_services'?)"
    ]


def test_trust_domain_is_required() -> None:
    assert problems_of("services: {}\n") == ["trust_domain: missing (required: a trust domain)"]
    assert parse_policy("trust_domain: t.example\n").services == {}


def test_empty_document_is_one_problem() -> None:
    assert problems_of("") == [
        "expected a policy (a mapping with trust_domain, certificates, platforms, services), "
        "got nothing (null)"
    ]


def test_service_name_is_checked() -> None:
    problems = problems_of(minimal(f'  Orders:\n    measurements: ["{M1}"]\n'))
    assert problems == [
        "services.Orders: not a service name (1-63 lower-case letters, digits, '-' or '_', "
        "e.g. orders)"
    ]


def test_measurement_must_be_lower_case_hex() -> None:
    upper = minimal(f'  a:\n    measurements: ["{M1.upper()}"]\n')
    assert problems_of(upper) == [
        "services.a.measurements[0]: not a sha256 digest (hex must be lower-case)"
    ]


def test_unquoted_digits_only_measurement_gets_a_quoting_hint() -> None:
    digits = "1" * 64
    problems = problems_of(minimal(f"  a:\n    measurements: [{digits}]\n"))
    assert problems[0].endswith("(put it in quotes)")
    assert parse_policy(minimal(f'  a:\n    measurements: ["{digits}"]\n'))


@pytest.mark.parametrize(
    ("lifetime", "ok"),
    [("59s", False), ("1m", True), ("24h", True), ("24h1s", False), (3600, True), ("1d", False)],
)
def test_certificate_lifetime_is_between_one_minute_and_a_day(lifetime: object, ok: bool) -> None:
    text = minimal(extra=f"certificates: {{lifetime: {lifetime}}}\n")
    if ok:
        parse_policy(text)
    else:
        assert problems_of(text)[0].startswith("certificates.lifetime: ")


def test_allowed_callers_must_name_services() -> None:
    text = minimal(
        f'  frontend:\n    measurements: ["{M1}"]\n'
        f'  orders:\n    measurements: ["{M1}"]\n    allowed_callers: [fronted, frontend]\n'
    )
    assert problems_of(text) == [
        "services.orders.allowed_callers[0]: no service named 'fronted' (did you mean 'frontend'?)"
    ]


def test_allowed_caller_naming_a_service_with_its_own_problems_is_not_reported_twice() -> None:
    text = minimal(
        "  frontend:\n    measurements: [bad]\n"
        f'  orders:\n    measurements: ["{M1}"]\n    allowed_callers: [frontend]\n'
    )
    assert problems_of(text) == [
        "services.frontend.measurements[0]: not a sha256 digest (expected 64 hex characters)"
    ]


def test_native_service_cannot_be_an_allowed_caller() -> None:
    text = minimal(
        f'  orders:\n    measurements: ["{M1}"]\n    allowed_callers: [billing]\n',
        extra="native_services:\n  billing: {address: 'h:1'}\n",
    )
    assert problems_of(text) == [
        "services.orders.allowed_callers[0]: 'billing' is a native service, "
        "which cannot be a caller"
    ]


def test_native_service_cannot_share_a_service_name() -> None:
    text = minimal(
        f'  billing:\n    measurements: ["{M1}"]\n',
        extra="native_services:\n  billing: {address: 'h:1'}\n",
    )
    assert problems_of(text) == [
        "native_services.billing: 'billing' is also a service under services"
    ]
    assert parse_policy(text.replace("  billing: {", "  billing2: {")).native_services


def test_an_address_is_claimed_once() -> None:
    text = minimal(
        f'  a:\n    measurements: ["{M1}"]\n    addresses: ["h:1"]\n'
        f'  b:\n    measurements: ["{M1}"]\n    addresses: ["h:2"]\n',
        extra="native_services:\n  c: {address: 'h:1'}\n",
    )
    assert problems_of(text) == [
        "native_services.c.address: address h:1 is also services.a.addresses[0]"
    ]


def test_yaml_syntax_error_is_one_line_with_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy("trust_domain: t\nservices:\n  a: [\n", source="p.yaml")
    assert str(info.value).startswith("p.yaml: 1 problem(s): line 4, column 1: ")
    assert "\n" not in str(info.value)


def test_describe_problems_lists_one_problem_per_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy("trust_domain: X\nservices: []\n", source="p.yaml")
    assert describe_problems(info.value).splitlines() == [
        "p.yaml: 2 problems",
        "  trust_domain: not a trust domain (lower-case letters, digits, '.', '-', '_'; "
        "e.g. prod.example.org)",
        "  services: expected a mapping of services, got a list",
    ]


# --- hash ---------------------------------------------------------------------------------------


def test_policy_hash_is_over_the_exact_bytes() -> None:
    digest = policy_hash(POLICY)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert policy_hash(POLICY.encode()) == digest
    assert policy_hash(POLICY + "\n") != digest  # same policy, different text


# --- questions ----------------------------------------------------------------------------------


def test_may_call_follows_allowed_callers() -> None:
    policy = parse_policy(POLICY)
    assert may_call(policy, "frontend", "orders")
    assert not may_call(policy, "orders", "frontend")
    assert not may_call(policy, "frontend", "legacy")  # disabled callee
    assert not may_call(policy, "nobody", "orders")
    assert not may_call(policy, "frontend", "nowhere")


def test_slice_for_gives_a_sidecar_its_part_of_the_policy() -> None:
    policy = parse_policy(POLICY)
    typed = slice_for(policy, "frontend")
    frontend = typed.to_json()
    assert json.loads(json.dumps(frontend)) == frontend
    assert PolicySlice.from_json(frontend) == typed
    assert frontend == {
        "service": "frontend",
        "trust_domain": "prod.example.org",
        "may_call": ["orders"],
        "allowed_callers": [],
        "authorization": "enforce",
        "min_epoch": 3,
        "certificate_lifetime_seconds": 300,
        "registry": {
            "frontend": {
                "addresses": ["10.0.0.1:7001"],
                "identity": "spiffe://prod.example.org/svc/frontend",
                "authorization": "enforce",
                "measurements": [M1],
            },
            "legacy": {
                "addresses": [],
                "identity": "spiffe://prod.example.org/svc/legacy",
                "authorization": "enforce",
                "measurements": [M1],
            },
            "orders": {
                "addresses": ["10.0.0.2:7002", "[::1]:7002"],
                "identity": "spiffe://prod.example.org/svc/orders",
                "authorization": "audit",
                "measurements": [M2, M3],
            },
        },
        "native_services": {"billing": {"address": "billing.internal:9000", "waf": False}},
    }
    orders = slice_for(policy, "orders")
    assert orders.may_call == frozenset() and orders.allowed_callers == {"frontend"}
    assert orders.authorization == "audit"


def test_slice_for_an_unknown_service_is_service_unknown() -> None:
    with pytest.raises(NetshieldError, match="did you mean 'orders'") as info:
        slice_for(parse_policy(POLICY), "ordres")
    assert info.value.reason is Reason.SERVICE_UNKNOWN


# --- starter policy -----------------------------------------------------------------------------


def test_starter_policy_is_commented_yaml_that_parses() -> None:
    text = starter_policy("demo.local", frontend_measurement=M1, orders_measurement="0" * 64)
    assert text.count("\n#") + text.count("  #") >= 5
    policy = parse_policy(text)
    assert policy.trust_domain == "demo.local"
    assert set(policy.services) == {"frontend", "orders"}
    assert policy.services["frontend"].measurements == {M1}
    assert policy.services["orders"].measurements == {"0" * 64}  # quoted: stays a string
    assert may_call(policy, "frontend", "orders")
    assert not may_call(policy, "orders", "frontend")


def test_starter_policy_defaults_to_a_placeholder_no_workload_matches() -> None:
    policy = parse_policy(starter_policy("demo.local"))
    assert policy.services["orders"].measurements == {PLACEHOLDER_MEASUREMENT}
    assert policy.services["frontend"].measurements == {PLACEHOLDER_MEASUREMENT}


def test_starter_policy_refuses_a_bad_placeholder() -> None:
    with pytest.raises(ConfigError, match=r"services\.frontend\.measurements\[0\]"):
        starter_policy("demo.local", frontend_measurement="nope", orders_measurement=M1)
    with pytest.raises(ConfigError, match="trust_domain"):
        starter_policy("Demo Local", frontend_measurement=M1, orders_measurement=M1)
