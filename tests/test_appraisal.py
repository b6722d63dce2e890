"""Appraisal: each reason code with its passing twin, and the order the checks run in."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from netshield.attestation.appraisal import Decision, appraise
from netshield.attestation.evidence.sim import sim_evidence
from netshield.attestation.quote import QUOTE_FORMAT, QuoteBody, report_data_for
from netshield.attestation.verifier import VerifiedQuote
from netshield.nonces import NonceStatus
from netshield.policy import parse_policy
from netshield.reasons import Reason

GOOD, OTHER, SIGNER = "3f2a" + "0" * 58 + "9c", "b" * 64, "5" * 64
KEY_DER, OTHER_KEY_DER = b"csr-public-key-der", b"another-public-key-der"
NONCE = bytes(range(32))

POLICY = parse_policy(f"""
trust_domain: test.example
platforms:
  min_tcb: 3
  allow_debug: false
  revoked: [p-retired]
services:
  orders:
    measurements: ["{GOOD}", "{OTHER}"]
    signer: "{SIGNER}"
    product_id: 7
    min_svn: 2
  frontend:
    measurements: ["{GOOD}"]
  debuggable:
    measurements: ["{GOOD}"]
    allow_debug: true
  strict:
    measurements: ["{GOOD}"]
    allow_debug: false
  retired:
    measurements: ["{GOOD}"]
    enabled: false
""")
DEBUG_POLICY = dataclasses.replace(
    POLICY, platforms=dataclasses.replace(POLICY.platforms, allow_debug=True)
)


def _platform_cert() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p-1")])
    now = datetime(2025, 1, 1, tzinfo=UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


CERT = _platform_cert()


@dataclass(frozen=True)
class Case:
    """Everything appraise looks at; the defaults pass for service orders."""

    service: str = "orders"
    platform_id: str = "p-1"
    tcb_level: int = 3
    debug: bool = False
    nonce_status: NonceStatus = NonceStatus.VALID
    quoted_key: bytes = KEY_DER  # the key the platform bound into report_data
    measurement: str = GOOD
    signer: str = SIGNER
    product_id: int = 7
    svn: int = 2
    revoked_platforms: frozenset[str] = frozenset()
    revoked_services: frozenset[str] = frozenset()
    policy: object = field(default=POLICY)

    def run(self, **changes: object) -> Decision:
        case = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        body = QuoteBody(
            format=QUOTE_FORMAT,
            measurement=case.measurement,
            signer=case.signer,
            product_id=case.product_id,
            svn=case.svn,
            platform_id=case.platform_id,
            tcb_level=case.tcb_level,
            debug=case.debug,
            report_data=report_data_for(case.quoted_key, NONCE),
        )
        quote = sim_evidence(VerifiedQuote(body, case.platform_id, case.tcb_level, CERT))
        return appraise(
            case.policy,  # type: ignore[arg-type]
            quote,
            service=case.service,
            nonce=NONCE,
            nonce_status=case.nonce_status,
            csr_public_key_der=KEY_DER,
            revoked_platforms=case.revoked_platforms,
            revoked_services=case.revoked_services,
        )


OK = Case()


def denied(decision: Decision, reason: Reason) -> str:
    assert not decision.allowed
    assert decision.reason is reason, decision
    assert "\n" not in decision.detail
    return decision.detail


def allowed(decision: Decision) -> None:
    assert decision.allowed, decision
    assert decision.reason is Reason.OK


def test_quote_meeting_the_policy_is_allowed() -> None:
    decision = OK.run()
    allowed(decision)
    assert decision.detail == (
        "service 'orders' on platform 'p-1' with measurement 3f2a…9c meets services.orders"
    )


# --- one test per reason, each with its passing twin -----------------------------------------


def test_platform_listed_in_policy_revoked_is_refused() -> None:
    detail = denied(OK.run(platform_id="p-retired"), Reason.PLATFORM_REVOKED)
    assert detail == "platform 'p-retired' is listed in platforms.revoked"
    allowed(OK.run(platform_id="p-2"))


def test_platform_revoked_at_the_cas_is_refused() -> None:
    detail = denied(OK.run(revoked_platforms=frozenset({"p-1"})), Reason.PLATFORM_REVOKED)
    assert "'p-1' was revoked at the CAS" in detail
    allowed(OK.run(revoked_platforms=frozenset({"p-2"})))


def test_tcb_below_the_minimum_is_refused() -> None:
    detail = denied(OK.run(tcb_level=2), Reason.TCB_OUT_OF_DATE)
    assert detail == (
        "platform 'p-1' has TCB level 2, below platforms.min_tcb (3); update the platform firmware"
    )
    allowed(OK.run(tcb_level=3))


def test_debug_workload_is_refused_when_platforms_disallow_debug() -> None:
    detail = denied(OK.run(debug=True), Reason.DEBUG_NOT_ALLOWED)
    assert (
        detail
        == "the workload on platform 'p-1' runs in debug mode but platforms.allow_debug is false"
    )
    allowed(OK.run(debug=True, policy=DEBUG_POLICY))


def test_service_allow_debug_overrides_the_platform_rule() -> None:
    allowed(OK.run(debug=True, service="debuggable"))
    detail = denied(
        OK.run(debug=True, service="strict", policy=DEBUG_POLICY), Reason.DEBUG_NOT_ALLOWED
    )
    assert "services.strict.allow_debug is false" in detail


def test_debug_for_an_unknown_service_follows_the_platform_rule() -> None:
    denied(OK.run(debug=True, service="ghost"), Reason.DEBUG_NOT_ALLOWED)
    denied(OK.run(debug=True, service="ghost", policy=DEBUG_POLICY), Reason.SERVICE_UNKNOWN)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (NonceStatus.UNKNOWN, Reason.NONCE_UNKNOWN),
        (NonceStatus.REUSED, Reason.NONCE_REUSED),
        (NonceStatus.EXPIRED, Reason.NONCE_EXPIRED),
    ],
)
def test_nonce_that_is_not_valid_is_refused(status: NonceStatus, reason: Reason) -> None:
    detail = denied(OK.run(nonce_status=status), reason)
    assert detail.startswith("nonce 0001…1f ")
    allowed(OK.run(nonce_status=NonceStatus.VALID))


def test_report_data_binding_another_key_is_refused() -> None:
    detail = denied(OK.run(quoted_key=OTHER_KEY_DER), Reason.REPORT_DATA_MISMATCH)
    assert "report_data" in detail and "the CSR is not the one the quote was made for" in detail
    allowed(OK.run(quoted_key=KEY_DER))


def test_unknown_service_is_refused_with_a_suggestion() -> None:
    detail = denied(OK.run(service="ordres"), Reason.SERVICE_UNKNOWN)
    assert detail == "service 'ordres' is not in services (did you mean 'orders'?)"
    allowed(OK.run(service="frontend"))


def test_disabled_service_is_refused() -> None:
    detail = denied(OK.run(service="retired"), Reason.SERVICE_DISABLED)
    assert detail == "service 'retired' is disabled (services.retired.enabled is false)"
    allowed(OK.run(service="frontend"))


def test_revoked_service_is_refused() -> None:
    detail = denied(OK.run(revoked_services=frozenset({"orders"})), Reason.SERVICE_REVOKED)
    assert "'orders' was revoked at the CAS" in detail
    allowed(OK.run(revoked_services=frozenset({"frontend"})))


def test_measurement_not_in_the_policy_is_refused() -> None:
    changed = "3f2a" + "1" * 58 + "9c"
    detail = denied(OK.run(measurement=changed), Reason.MEASUREMENT_NOT_ALLOWED)
    assert detail == (
        "measurement 3f2a…9c is not in services.orders.measurements (policy allows 2 measurements)"
    )
    allowed(OK.run(measurement=OTHER))


def test_signer_other_than_the_policy_signer_is_refused() -> None:
    detail = denied(OK.run(signer="6" * 64), Reason.SIGNER_NOT_ALLOWED)
    assert detail == "signer 6666…66 is not services.orders.signer (5555…55)"
    allowed(OK.run(service="frontend", signer="6" * 64))  # no signer set: any signer


def test_product_id_other_than_the_policy_product_is_refused() -> None:
    detail = denied(OK.run(product_id=8), Reason.PRODUCT_NOT_ALLOWED)
    assert detail == "product id 8 is not services.orders.product_id (7)"
    allowed(OK.run(service="frontend", product_id=8))  # no product_id set: any product


def test_svn_below_the_minimum_is_refused() -> None:
    detail = denied(OK.run(svn=1), Reason.SVN_TOO_LOW)
    assert detail == "svn 1 is below services.orders.min_svn (2); deploy the patched build"
    allowed(OK.run(svn=2))


# --- order ------------------------------------------------------------------------------------


def test_tcb_failure_is_reported_before_a_measurement_failure() -> None:
    denied(OK.run(tcb_level=0, measurement="f" * 64), Reason.TCB_OUT_OF_DATE)


# Each fault, in the order of DESIGN §3.4; applied together, fixing them one at a time from the
# front must reveal the reasons in exactly this order.
FAULTS: list[tuple[Reason, dict[str, object]]] = [
    (Reason.PLATFORM_REVOKED, {"revoked_platforms": frozenset({"p-1"})}),
    (Reason.TCB_OUT_OF_DATE, {"tcb_level": 0}),
    (Reason.DEBUG_NOT_ALLOWED, {"debug": True}),
    (Reason.NONCE_REUSED, {"nonce_status": NonceStatus.REUSED}),
    (Reason.REPORT_DATA_MISMATCH, {"quoted_key": OTHER_KEY_DER}),
    (Reason.SERVICE_UNKNOWN, {"service": "ghost"}),
    (Reason.SERVICE_DISABLED, {"service": "retired"}),
    (Reason.SERVICE_REVOKED, {"revoked_services": frozenset({"orders"})}),
    (Reason.MEASUREMENT_NOT_ALLOWED, {"measurement": "f" * 64}),
    (Reason.SIGNER_NOT_ALLOWED, {"signer": "6" * 64}),
    (Reason.PRODUCT_NOT_ALLOWED, {"product_id": 8}),
    (Reason.SVN_TOO_LOW, {"svn": 0}),
]


def test_checks_run_in_the_specified_order() -> None:
    seen = []
    for first in range(len(FAULTS) + 1):
        changes: dict[str, object] = {}
        for _, fault in reversed(FAULTS[first:]):  # earlier faults win on a shared field
            changes.update(fault)
        seen.append(OK.run(**changes).reason)
    assert seen == [reason for reason, _ in FAULTS] + [Reason.OK]


# --- totality ---------------------------------------------------------------------------------


@given(
    service=st.text(max_size=80),
    platform_id=st.text(min_size=1, max_size=80),
    tcb_level=st.integers(min_value=0, max_value=2**32 - 1),
    debug=st.booleans(),
    nonce_status=st.sampled_from(NonceStatus),
    measurement=st.sampled_from([GOOD, OTHER, "f" * 64]),
    svn=st.integers(min_value=0, max_value=2**32 - 1),
    product_id=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_appraise_always_returns_a_one_sentence_decision(**changes: object) -> None:
    decision = OK.run(**changes)
    assert decision.allowed == (decision.reason is Reason.OK)
    assert decision.detail and "\n" not in decision.detail and len(decision.detail) < 400
