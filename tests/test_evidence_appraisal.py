"""The shared appraisal over hardware evidence: policy keys per evidence type, the TCB rules,
debug, the report_data binding, and the reference values, each with its negative twin."""

from __future__ import annotations

import hashlib
from types import MappingProxyType

import pytest

from netshield.attestation.appraisal import appraise
from netshield.attestation.evidence.claims import DcapTcb, SnpTcb, VerifiedEvidence
from netshield.errors import ConfigError
from netshield.nonces import NonceStatus
from netshield.policy import parse_policy
from netshield.reasons import Reason

NONCE = b"\x01" * 16
KEY = b"csr-key-der"
BOUND = hashlib.sha256(KEY + NONCE).digest() + bytes(32)
SNP_M, TD_M, ENCLAVE, SIGNER = "5a" * 48, "7d" * 48, "e1" * 32, "51" * 32

POLICY = f"""
trust_domain: test.local
platforms:
  sev-snp: {{min_tcb: {{bootloader: 3, snp: 8}}}}
  sgx: {{accepted_tcb_statuses: [UpToDate, SWHardeningNeeded]}}
services:
  legacy:
    measurements: ["{"aa" * 32}"]
  confidential:
    evidence:
      sev-snp:
        measurements: ["{SNP_M}"]
        host_data: "{"0f" * 32}"
      sgx:
        mrsigner: "{SIGNER}"
        product_id: 4
        min_svn: 2
      tdx:
        mrtd: ["{TD_M}"]
        rtmr1: ["{"01" * 48}"]
        accepted_tcb_statuses: [UpToDate]
  enclave:
    evidence:
      sgx:
        mrenclave: ["{ENCLAVE}"]
        allow_debug: true
"""


def snp(**values: object) -> VerifiedEvidence:
    tcb = values.pop("tcb", SnpTcb(3, 0, 8, 115))
    debug = bool(values.pop("debug", False))
    report_data = values.pop("report_data", BOUND)
    base = {
        "measurement": SNP_M,
        "host_data": "0f" * 32,
        "guest_svn": 1,
        "id_key_digest": "00" * 48,
    }
    base.update(values)  # type: ignore[arg-type]
    return VerifiedEvidence(
        "sev-snp", "sev-snp:chip", debug, report_data, SNP_M, tcb, MappingProxyType(base)
    )  # type: ignore[arg-type]


def dcap(
    kind: str, status: str = "UpToDate", debug: bool = False, **values: object
) -> VerifiedEvidence:
    tcb = DcapTcb(status, status, "UpToDate", ("INTEL-SA-00615",) if status != "UpToDate" else ())  # type: ignore[arg-type]
    if kind == "sgx":
        base: dict[str, object] = {
            "mrenclave": ENCLAVE,
            "mrsigner": SIGNER,
            "product_id": 4,
            "svn": 2,
        }
    else:
        base = {
            "mrtd": TD_M,
            "rtmr0": "00" * 48,
            "rtmr1": "01" * 48,
            "rtmr2": "02" * 48,
            "rtmr3": "03" * 48,
        }
    base.update(values)
    return VerifiedEvidence(
        kind,
        f"{kind}:ppid",
        debug,
        BOUND,
        str(base.get("mrenclave", base.get("mrtd"))),
        tcb,
        MappingProxyType(base),
    )  # type: ignore[arg-type]


def decide(
    evidence: VerifiedEvidence, service: str = "confidential", policy: str = POLICY
) -> tuple[Reason, str]:
    decision = appraise(
        parse_policy(policy),
        evidence,
        service=service,
        nonce=NONCE,
        nonce_status=NonceStatus.VALID,
        csr_public_key_der=KEY,
    )
    assert decision.evidence_type == evidence.evidence_type
    return decision.reason, decision.detail


@pytest.mark.parametrize(
    "evidence", [snp(), dcap("sgx"), dcap("tdx")], ids=["sev-snp", "sgx", "tdx"]
)
def test_hardware_evidence_meeting_the_policy_is_allowed(evidence: VerifiedEvidence) -> None:
    assert decide(evidence)[0] == Reason.OK


def test_service_without_evidence_section_accepts_only_the_simulated_platform() -> None:
    reason, detail = decide(snp(), service="legacy")
    assert reason == Reason.EVIDENCE_TYPE_NOT_ACCEPTED
    assert "accepts sim, not sev-snp" in detail and "services.legacy.evidence.sev-snp" in detail
    assert parse_policy(POLICY).services["legacy"].accepted_evidence == ("sim",)
    assert parse_policy(POLICY).services["confidential"].accepted_evidence == (
        "sev-snp",
        "sgx",
        "tdx",
    )


def test_tdx_evidence_for_an_sgx_only_service_is_not_accepted() -> None:
    assert decide(dcap("tdx"), service="enclave")[0] == Reason.EVIDENCE_TYPE_NOT_ACCEPTED


def test_snp_tcb_below_the_platform_minimum_is_out_of_date() -> None:
    reason, detail = decide(snp(tcb=SnpTcb(2, 0, 8, 115)))
    assert reason == Reason.TCB_OUT_OF_DATE
    assert "platforms.sev-snp.min_tcb" in detail and "bootloader 2 < 3" in detail


def test_snp_tcb_minimum_per_service_overrides_the_platforms() -> None:
    strict = POLICY.replace(
        f'host_data: "{"0f" * 32}"',
        f'host_data: "{"0f" * 32}"\n        min_tcb: {{microcode: 200}}',
    )
    reason, detail = decide(snp(), policy=strict)
    assert (
        reason == Reason.TCB_OUT_OF_DATE
        and "services.confidential.evidence.sev-snp.min_tcb" in detail
    )


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [
        ("sgx", "SWHardeningNeeded", Reason.OK),  # tolerated under platforms.sgx
        ("sgx", "ConfigurationNeeded", Reason.TCB_STATUS_NOT_ACCEPTED),
        ("sgx", "OutOfDate", Reason.TCB_OUT_OF_DATE),
        (
            "tdx",
            "SWHardeningNeeded",
            Reason.TCB_STATUS_NOT_ACCEPTED,
        ),  # the service accepts UpToDate only
        ("tdx", "Revoked", Reason.TCB_REVOKED),
    ],
)
def test_intel_tcb_status_is_accepted_only_where_the_policy_tolerates_it(
    kind: str, status: str, expected: Reason
) -> None:
    reason, detail = decide(dcap(kind, status))
    assert reason == expected, detail
    if expected in (Reason.TCB_STATUS_NOT_ACCEPTED, Reason.TCB_OUT_OF_DATE):
        assert "INTEL-SA-00615" in detail and "accepted_tcb_statuses" in detail


def test_policy_cannot_accept_revoked_tcb() -> None:
    with pytest.raises(ConfigError, match=r"platforms\.sgx\.accepted_tcb_statuses"):
        parse_policy(POLICY.replace("[UpToDate, SWHardeningNeeded]", "[Revoked]"))


def test_debug_guest_is_refused_unless_the_type_allows_it() -> None:
    reason, detail = decide(snp(debug=True))
    assert (
        reason == Reason.DEBUG_NOT_ALLOWED
        and "SEV-SNP guest" in detail
        and "platforms.allow_debug" in detail
    )
    assert decide(dcap("sgx", debug=True), service="enclave")[0] == Reason.OK


def test_report_data_of_another_key_is_refused() -> None:
    other = hashlib.sha256(b"another key" + NONCE).digest() + bytes(32)
    reason, detail = decide(snp(report_data=other))
    assert reason == Reason.REPORT_DATA_MISMATCH and "32 zero bytes" in detail
    padded_wrong = BOUND[:32] + b"\x01" + bytes(31)  # the right hash, but not zero padding
    assert decide(snp(report_data=padded_wrong))[0] == Reason.REPORT_DATA_MISMATCH


@pytest.mark.parametrize(
    ("evidence", "reason", "key"),
    [
        (
            snp(measurement="00" * 48),
            Reason.MEASUREMENT_NOT_ALLOWED,
            "evidence.sev-snp.measurements",
        ),
        (snp(host_data="ff" * 32), Reason.MEASUREMENT_NOT_ALLOWED, "evidence.sev-snp.host_data"),
        (dcap("sgx", mrsigner="00" * 32), Reason.SIGNER_NOT_ALLOWED, "evidence.sgx.mrsigner"),
        (dcap("sgx", product_id=5), Reason.PRODUCT_NOT_ALLOWED, "evidence.sgx.product_id"),
        (dcap("sgx", svn=1), Reason.SVN_TOO_LOW, "evidence.sgx.min_svn"),
        (dcap("tdx", mrtd="00" * 48), Reason.MEASUREMENT_NOT_ALLOWED, "evidence.tdx.mrtd"),
        (dcap("tdx", rtmr1="00" * 48), Reason.MEASUREMENT_NOT_ALLOWED, "evidence.tdx.rtmr1"),
    ],
)
def test_reference_values_that_do_not_match_name_the_policy_key(
    evidence: VerifiedEvidence, reason: Reason, key: str
) -> None:
    got, detail = decide(evidence)
    assert got == reason and f"services.confidential.{key}" in detail


def test_sgx_mrenclave_list_pins_the_exact_enclave() -> None:
    assert decide(dcap("sgx"), service="enclave")[0] == Reason.OK
    assert (
        decide(dcap("sgx", mrenclave="00" * 32), service="enclave")[0]
        == Reason.MEASUREMENT_NOT_ALLOWED
    )


def test_policy_problems_in_the_evidence_section_are_listed_by_key_path() -> None:
    bad = POLICY.replace(f'mrtd: ["{TD_M}"]', 'mrtd: ["abc"]').replace("product_id: 4", "")
    with pytest.raises(ConfigError) as info:
        parse_policy(bad)
    text = str(info.value)
    assert "services.confidential.evidence.tdx.mrtd[0]" in text
    assert "services.confidential.evidence.sgx.product_id: required with mrsigner" in text
    with pytest.raises(ConfigError, match=r"services\.x\.measurements: missing"):
        parse_policy("trust_domain: t.local\nservices:\n  x: {allowed_callers: []}\n")
    with pytest.raises(ConfigError, match=r"services\.x\.evidence\.sgx: needs mrenclave"):
        parse_policy("trust_domain: t.local\nservices:\n  x: {evidence: {sgx: {min_svn: 1}}}\n")


def test_peers_attested_with_hardware_evidence_pass_the_data_planes_measurement_check() -> None:
    from netshield.policyslice import PolicySlice, slice_for

    policy = parse_policy(POLICY)
    confidential = policy.services["confidential"]  # SNP + TDX listed, SGX by its signer
    assert confidential.certified_measurements == {SNP_M, TD_M} and confidential.any_measurement
    enclave = policy.services["enclave"]  # SGX by MRENCLAVE
    assert enclave.certified_measurements == {ENCLAVE} and not enclave.any_measurement
    listed = slice_for(policy, "legacy").registry
    assert listed["enclave"].measurements == {ENCLAVE} and not listed["enclave"].any_measurement
    assert listed["confidential"].any_measurement
    assert listed["legacy"].measurements == {"aa" * 32}  # the simulated platform's, as before
    sliced = slice_for(policy, "legacy")
    assert PolicySlice.from_json(sliced.to_json()) == sliced
    registry = sliced.to_json()["registry"]
    assert registry["confidential"]["any_measurement"] is True
    assert "any_measurement" not in registry["legacy"]


def test_data_plane_admits_a_hardware_attested_caller_and_refuses_an_unlisted_measurement() -> None:
    from dataclasses import replace as _replace

    from netshield.authz import authorize_inbound
    from netshield.policyslice import slice_for
    from tests.test_authz import NOW as AUTHZ_NOW
    from tests.test_authz import ok, peer

    hw = POLICY.replace("  legacy:\n", "  legacy:\n    allowed_callers: [confidential, enclave]\n")
    sliced = slice_for(parse_policy(hw), "legacy")
    sliced = _replace(sliced, min_epoch=2)

    def inbound(service: str, measurement: str) -> Reason:
        caller = peer(f"spiffe://test.local/svc/{service}", measurement=measurement)
        return authorize_inbound(sliced, caller, ok, policy_version=1, now=AUTHZ_NOW).reason

    assert inbound("enclave", ENCLAVE) == Reason.OK
    assert inbound("enclave", "0e" * 32) == Reason.PEER_MEASUREMENT_NOT_ALLOWED
    assert inbound("confidential", SNP_M) == Reason.OK
    assert inbound("confidential", "0e" * 48) == Reason.OK  # SGX by signer: any MRENCLAVE of it
