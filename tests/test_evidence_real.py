"""Real published SEV-SNP reports and SGX/TDX DCAP quotes, verified against AMD's and Intel's
real roots with the collateral valid at their time, and their negative twins.

The vectors come from releases on the Python package index that carry them as test data
(dcap-qvl, omne-attest, sev-attest-tool, libertai-confidential-inference, voltage-verify), pinned
by SHA-256 in `tests/tee_vectors.py`; ``scripts/test`` fetches them into ``.venv/tee-vectors``
(SOURCES.md there names release, path and licence of each file). Without them these tests are
skipped, which under CI=true is a failure. Their report data was made by others, so the tests show
verification against the vendors' roots and show that the appraisal refuses them for a CSR key
they were not made for; the CAS flow with report data bound to a CSR runs with test hardware
(test_evidence_cas.py).

Real evidence no registry carries, so not verified here: a SEV-SNP report of a Turin machine or
one signed with a VLEK (built to the specification with test keys in test_evidence_verify.py), a
non-debug Milan report, and the TCB Info for the FMSPC of go-tdx-guest's Sapphire Rapids quote
(that quote is checked up to its TCB evaluation).
"""

from __future__ import annotations

from datetime import datetime

import pytest
from cryptography.hazmat.primitives import serialization

from netshield.attestation.appraisal import appraise
from netshield.attestation.evidence.chains import load_certificates
from netshield.attestation.evidence.claims import VerifiedEvidence
from netshield.attestation.evidence.collateral import Collateral, collateral_from_files
from netshield.attestation.evidence.decode import evidence_envelope
from netshield.attestation.evidence.verifier import EvidenceVerifier
from netshield.errors import QuoteError
from netshield.nonces import NonceStatus
from netshield.policy import parse_policy
from netshield.reasons import Reason
from tests.tee_vectors import is_current, missing_reason, vectors_dir

VECTORS = vectors_dir()
GO_TDX_TEST_SUFFIX = b"\nextra bytes(only for testing purpose)\n"

pytestmark = pytest.mark.skipif(not is_current(VECTORS), reason=missing_reason(VECTORS))

GENOA = "snp-genoa-sev-attest-tool"
GENOA_V5 = "snp-genoa-v5-libertai"
MILAN = "snp-milan-go-sev-guest"
GENOA_CHAIN = f"{GENOA}/ask_ark_genoa.pem"
MILAN_CHAIN = (f"{MILAN}/milan_ask.der", f"{MILAN}/milan_ark.der")
H200 = tuple(
    f"tdx-h200-voltage/{name}"
    for name in (
        "tcb_info.json",
        "tcb_info_issuer_chain.pem",
        "qe_identity.json",
        "qe_identity_issuer_chain.pem",
    )
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


GENOA_TIME = at("2024-06-01T00:00:00+00:00")
RECENT_TIME = at("2026-11-01T00:00:00+00:00")  # the re-fetched VCEKs date from 2026
SGX_TIME = at("2025-06-20T00:00:00+00:00")
TDX_OUTDATED_TIME = at("2026-02-20T00:00:00+00:00")
H200_TIME = at("2026-09-20T00:00:00+00:00")
GO_TDX_TIME = at("2023-06-20T00:00:00+00:00")


def read(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def collateral(*names: str) -> Collateral:
    return collateral_from_files(((n, read(n)) for n in names), source="test vectors")


def envelope_snp(report: bytes, *cert_files: str) -> bytes:
    """The `netshield-evidence/1` envelope a sidecar sends: the report and the certificates."""
    pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM)
        for f in cert_files
        for c in load_certificates(read(f))
    )
    return evidence_envelope("sev-snp", report, pem)


def verify(data: bytes, now: datetime, *collateral_files: str) -> VerifiedEvidence:
    files = collateral(*collateral_files)
    return EvidenceVerifier(sim=None, collateral=lambda: files).verify(data, now=now)


def refused(data: bytes, now: datetime, reason: Reason, *collateral_files: str) -> QuoteError:
    with pytest.raises(QuoteError) as info:
        verify(data, now, *collateral_files)
    assert info.value.reason == reason, str(info.value)
    return info.value


def flipped(data: bytes, offset: int, bit: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= bit
    return bytes(out)


def vm_policy(kind: str, key: str, value: str, extra: str = "", service_extra: str = "") -> str:
    """A policy whose service accepts evidence of `kind` with reference value `key`: [value]."""
    return (
        f"trust_domain: t.local\n{extra}services:\n  vm:\n    evidence:\n      {kind}:\n"
        f'        {key}: ["{value}"]\n{service_extra}'
    )


APPRAISAL = {
    "service": "vm",
    "nonce": b"\x00" * 16,
    "nonce_status": NonceStatus.VALID,
    "csr_public_key_der": b"our key",
}


def appraised(policy: str, ev: VerifiedEvidence) -> Reason:
    return appraise(parse_policy(policy), ev, **APPRAISAL).reason  # type: ignore[arg-type]


def chain_names(ev: VerifiedEvidence) -> list[str]:
    return [c.subject.rfc4514_string().split(",")[0] for c in ev.chain]


# --- SEV-SNP --------------------------------------------------------------------------------------


def test_real_genoa_report_in_its_envelope_verifies_against_amds_ark() -> None:
    data = envelope_snp(read(f"{GENOA}/report.bin"), f"{GENOA}/vcek.der", GENOA_CHAIN)
    ev = verify(data, GENOA_TIME)
    assert ev.evidence_type == "sev-snp" and not ev.debug
    assert ev.claims["product"] == "Genoa" and ev.claims["version"] == 2
    assert ev.tcb.to_json() == {"bootloader": 7, "tee": 0, "snp": 11, "microcode": 62}
    assert ev.measurement.startswith("047a76ad25e9") and ev.report_data == b"\x07" * 64
    assert chain_names(ev) == ["CN=SEV-VCEK", "CN=SEV-Genoa", "CN=ARK-Genoa"]


def test_real_genoa_report_v5_verifies_with_its_vcek_from_the_collateral() -> None:
    ev = verify(read(f"{GENOA_V5}/report.bin"), RECENT_TIME, f"{GENOA_V5}/vcek.der", GENOA_CHAIN)
    assert ev.claims["version"] == 5 and ev.claims["product"] == "Genoa" and not ev.debug
    assert ev.tcb.to_json() == {"bootloader": 12, "tee": 0, "snp": 28, "microcode": 88}
    assert ev.measurement.startswith("6fe0972f96cb")
    assert chain_names(ev)[-1] == "CN=ARK-Genoa"


def test_real_genoa_reports_with_one_bit_flipped_are_refused() -> None:
    report = flipped(read(f"{GENOA}/report.bin"), 0x90)  # the launch measurement, signed
    data = envelope_snp(report, f"{GENOA}/vcek.der", GENOA_CHAIN)
    refused(data, GENOA_TIME, Reason.QUOTE_SIGNATURE_INVALID)
    v5 = flipped(read(f"{GENOA_V5}/report.bin"), 0x50)  # report data
    refused(v5, RECENT_TIME, Reason.QUOTE_SIGNATURE_INVALID, f"{GENOA_V5}/vcek.der", GENOA_CHAIN)


def test_real_vceks_with_another_products_chain_are_refused() -> None:
    milan = read(f"{MILAN}/attestation.bin")
    refused(
        milan, RECENT_TIME, Reason.PLATFORM_CERT_UNTRUSTED, f"{MILAN}/kds_vcek.der", GENOA_CHAIN
    )
    genoa = envelope_snp(read(f"{GENOA}/report.bin"), f"{GENOA}/vcek.der", *MILAN_CHAIN)
    refused(genoa, GENOA_TIME, Reason.PLATFORM_CERT_UNTRUSTED)


def test_real_reports_without_their_vcek_name_the_missing_collateral() -> None:
    err = refused(
        read(f"{GENOA_V5}/report.bin"), RECENT_TIME, Reason.COLLATERAL_MISSING, GENOA_CHAIN
    )
    assert "VCEK" in str(err)
    refused(read(f"{MILAN}/attestation.bin"), RECENT_TIME, Reason.COLLATERAL_MISSING, *MILAN_CHAIN)


def test_real_milan_report_is_a_debug_guest_the_policy_refuses_unless_allowed() -> None:
    ev = verify(
        read(f"{MILAN}/attestation.bin"), RECENT_TIME, f"{MILAN}/kds_vcek.der", *MILAN_CHAIN
    )
    assert ev.debug and ev.claims["product"] == "Milan-B0"
    assert ev.tcb.to_json() == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert chain_names(ev) == ["CN=SEV-VCEK", "CN=SEV-Milan", "CN=ARK-Milan"]
    policy = vm_policy("sev-snp", "measurements", ev.measurement)
    assert appraised(policy, ev) == Reason.DEBUG_NOT_ALLOWED
    debug_ok = policy + "        allow_debug: true\n"
    assert appraised(debug_ok, ev) == Reason.REPORT_DATA_MISMATCH  # report data of another key


def test_real_genoa_report_below_the_policys_tcb_and_for_another_key_is_refused() -> None:
    ev = verify(
        envelope_snp(read(f"{GENOA}/report.bin"), f"{GENOA}/vcek.der", GENOA_CHAIN), GENOA_TIME
    )
    strict = "platforms:\n  sev-snp: {min_tcb: {snp: 12}}\n"
    assert appraised(vm_policy("sev-snp", "measurements", ev.measurement, strict), ev) == (
        Reason.TCB_OUT_OF_DATE
    )
    assert appraised(vm_policy("sev-snp", "measurements", ev.measurement), ev) == (
        Reason.REPORT_DATA_MISMATCH
    )


# --- Intel SGX and TDX (DCAP) -------------------------------------------------------------------------

SGX_COLLATERAL = "sgx-dcap-qvl/sgx_quote_collateral.json"
TDX_COLLATERAL = "tdx-dcap-qvl/tdx_quote_collateral.json"


def test_real_sgx_quote_verifies_with_its_collateral_and_status() -> None:
    ev = verify(read("sgx-dcap-qvl/sgx_quote"), SGX_TIME, SGX_COLLATERAL)
    assert ev.evidence_type == "sgx" and not ev.debug
    assert ev.tcb.to_json()["status"] == "ConfigurationAndSWHardeningNeeded"
    assert ev.tcb.to_json()["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert str(ev.values["mrenclave"]).startswith("33d8736db756")
    assert ev.chain[-1].subject.rfc4514_string().endswith("CN=Intel SGX Root CA")
    # the default policy accepts UpToDate only; tolerating the status (MarbleRun-style) accepts it
    policy = vm_policy("sgx", "mrenclave", str(ev.values["mrenclave"]))
    assert appraised(policy, ev) == Reason.TCB_STATUS_NOT_ACCEPTED
    tolerant = (
        policy + "        accepted_tcb_statuses: [UpToDate, ConfigurationAndSWHardeningNeeded]\n"
    )
    assert appraised(tolerant, ev) == Reason.REPORT_DATA_MISMATCH


def test_real_sgx_quote_with_one_bit_flipped_is_refused() -> None:
    quote = flipped(read("sgx-dcap-qvl/sgx_quote"), 48 + 64)  # MRENCLAVE
    refused(quote, SGX_TIME, Reason.QUOTE_SIGNATURE_INVALID, SGX_COLLATERAL)


def test_real_sgx_quote_after_its_collateral_expired_is_refused() -> None:
    quote = read("sgx-dcap-qvl/sgx_quote")
    refused(quote, at("2025-08-01T00:00:00+00:00"), Reason.COLLATERAL_EXPIRED, SGX_COLLATERAL)


def test_real_tdx_quote_verifies_up_to_date() -> None:
    ev = verify(read("tdx-dcap-qvl/tdx_quote"), SGX_TIME, TDX_COLLATERAL)
    assert ev.evidence_type == "tdx" and ev.tcb.to_json()["status"] == "UpToDate"
    assert str(ev.values["mrtd"]).startswith("91eb2b44d141") and ev.claims["quote_version"] == 4


def test_real_tdx_quote_with_one_bit_flipped_or_without_collateral_is_refused() -> None:
    quote = read("tdx-dcap-qvl/tdx_quote")
    refused(
        flipped(quote, 48 + 136, 0x80), SGX_TIME, Reason.QUOTE_SIGNATURE_INVALID, TDX_COLLATERAL
    )
    refused(quote, SGX_TIME, Reason.COLLATERAL_MISSING, SGX_COLLATERAL)  # SGX collateral only


def test_real_h200_tdx_quote_verifies_up_to_date_with_pcs_collateral() -> None:
    ev = verify(read("tdx-h200-voltage/quote.bin"), H200_TIME, *H200)
    assert ev.evidence_type == "tdx" and not ev.debug and ev.claims["quote_version"] == 4
    tcb = ev.tcb.to_json()
    assert tcb["status"] == "UpToDate" and tcb["tcb_evaluation_data_number"] == 20
    assert ev.claims["fmspc"] == "90c06f000000"
    assert str(ev.values["mrtd"]).startswith("eea8b6a81456")
    policy = vm_policy("tdx", "mrtd", str(ev.values["mrtd"]))
    assert appraised(policy, ev) == Reason.REPORT_DATA_MISMATCH


def test_real_h200_tdx_quote_altered_or_after_its_collateral_is_refused() -> None:
    quote = read("tdx-h200-voltage/quote.bin")
    refused(flipped(quote, 48 + 136), H200_TIME, Reason.QUOTE_SIGNATURE_INVALID, *H200)  # MRTD
    late = at("2026-10-12T00:00:00+00:00")  # the TCB Info's nextUpdate has passed
    refused(quote, late, Reason.COLLATERAL_EXPIRED, *H200)


def test_real_tdx_v5_quote_below_every_tcb_level_is_out_of_date() -> None:
    outdated = read("tdx-outdated-dcap-qvl/tdx_quote_outdated")
    own = "tdx-outdated-dcap-qvl/tdx_quote_outdated_collateral.json"
    err = refused(outdated, TDX_OUTDATED_TIME, Reason.TCB_OUT_OF_DATE, own)
    assert "90c06f000000" in str(err)
    # the same FMSPC's newer TCB Info (the H200's, evaluation 20) still has no level for it
    refused(outdated, H200_TIME, Reason.TCB_OUT_OF_DATE, *H200)


def test_real_go_tdx_guest_quote_verifies_up_to_its_tcb_evaluation() -> None:
    """go-tdx-guest's Sapphire Rapids quote: its PCK chain, QE report and signature verify (the
    verifier checks them before it looks for a TCB Info); the TCB Info for its FMSPC is in no
    package registry, so its TCB evaluation is not shown with real collateral."""
    go_quote = read("tdx-go-tdx-guest/tdx_prod_quote_SPR_E4.dat")
    assert go_quote.endswith(GO_TDX_TEST_SUFFIX)
    quote = go_quote[: -len(GO_TDX_TEST_SUFFIX)]
    err = refused(quote, GO_TDX_TIME, Reason.COLLATERAL_MISSING, *H200)
    assert "TDX TCB Info for FMSPC 50806f000000" in str(err)
    refused(flipped(quote, 48 + 136), GO_TDX_TIME, Reason.QUOTE_SIGNATURE_INVALID, *H200)
    # the extra bytes go-tdx-guest appends are not zero padding: refused as malformed
    refused(go_quote, GO_TDX_TIME, Reason.QUOTE_MALFORMED, *H200)


def test_real_tdx_v5_td15ex_quote_is_refused_as_a_body_type_netshield_does_not_parse() -> None:
    """dcap-qvl's TD report 1.5-ex quote (v5, body type 4) is real and UpToDate for dcap-qvl;
    netshield parses the v5 body types 1 to 3 (SGX, TD 1.0, TD 1.5) only and refuses it with a
    reason, not an exception."""
    quote = read("tdx-td15ex-dcap-qvl/tdx_quote_td15ex")
    own = "tdx-td15ex-dcap-qvl/tdx_quote_td15ex_collateral.json"
    err = refused(quote, at("2026-10-08T02:45:00+00:00"), Reason.QUOTE_MALFORMED, own)
    assert "body type 4" in str(err)
