"""Property tests: any byte string is evidence of a known type or refused with a reason code —
never another exception — and so is every mutation of valid SEV-SNP and DCAP evidence, through
the parsers and through full verification."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netshield.attestation.evidence import dcap, snp
from netshield.attestation.evidence.chains import TrustAnchors
from netshield.attestation.evidence.collateral import collateral_from_files, read_collateral_dir
from netshield.attestation.evidence.decode import decode_evidence, evidence_envelope
from netshield.attestation.evidence.intel import parse_signed_json
from netshield.attestation.evidence.verifier import EvidenceVerifier
from netshield.errors import QuoteError
from netshield.reasons import Reason
from tests.tee_lab import NOW, DcapLab, SnpLab

SNP_LAB = SnpLab()
DCAP_LAB = DcapLab()
_DIR = Path(tempfile.mkdtemp(prefix="netshield-evidence-props-"))
DCAP_LAB.write_collateral(_DIR / "sgx", "sgx")
DCAP_LAB.write_collateral(_DIR / "tdx", "tdx")
COLLATERAL = {kind: read_collateral_dir(_DIR / kind) for kind in ("sgx", "tdx")}
GOOD = {
    "sev-snp": evidence_envelope("sev-snp", SNP_LAB.report(), SNP_LAB.certificates_pem),
    "snp-raw": SNP_LAB.report(),
    "sgx": DCAP_LAB.quote("sgx"),
    "tdx": DCAP_LAB.quote("tdx"),
}
CODES = {r.value for r in Reason}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def verifier(kind: str) -> EvidenceVerifier:
    collateral = COLLATERAL.get(kind, COLLATERAL["sgx"])
    return EvidenceVerifier(
        sim=None,
        anchors=TrustAnchors().with_extra([SNP_LAB.ark, DCAP_LAB.root]),
        collateral=lambda: collateral,
    )


def decodes_or_refuses(data: bytes) -> None:
    try:
        decode_evidence(data)
    except QuoteError as err:
        assert err.reason.value in CODES and str(err) and "\n" not in str(err)


@SETTINGS
@given(st.binary(max_size=6000))
def test_any_bytes_decode_or_are_refused_with_a_reason(data: bytes) -> None:
    decodes_or_refuses(data)


@SETTINGS
@given(st.sampled_from([(3, 0), (4, 0), (4, 0x81), (5, 0x81), (3, 0x81)]), st.binary(max_size=5000))
def test_anything_behind_a_dcap_header_decodes_or_is_refused(
    head: tuple[int, int], rest: bytes
) -> None:
    version, tee = head
    data = (
        version.to_bytes(2, "little") + (2).to_bytes(2, "little") + tee.to_bytes(4, "little") + rest
    )
    try:
        dcap.parse_quote(data)
    except QuoteError as err:
        assert err.reason == Reason.QUOTE_MALFORMED


@SETTINGS
@given(st.binary(min_size=snp.REPORT_SIZE, max_size=snp.REPORT_SIZE))
def test_any_report_sized_bytes_parse_or_are_refused(data: bytes) -> None:
    try:
        snp.parse_report(data)
    except QuoteError as err:
        assert err.reason == Reason.QUOTE_MALFORMED


@SETTINGS
@given(
    st.sampled_from(sorted(GOOD)),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=4),
    st.integers(0, 10**6) | st.none(),
)
def test_mutated_evidence_verifies_or_is_refused_with_a_reason(
    kind: str, flips: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(GOOD[kind])
    for offset, bit in flips:
        data[offset % len(data)] ^= 1 << bit
    if cut is not None:
        del data[cut % len(data) :]
    try:
        verifier(kind).verify(bytes(data), now=NOW)
    except QuoteError as err:
        assert err.reason.value in CODES


@SETTINGS
@given(st.binary(max_size=3000))
def test_collateral_files_of_any_content_are_used_or_listed_as_skipped(data: bytes) -> None:
    collateral = collateral_from_files([("file", data)], source="test")
    used = (
        len(collateral.certificates)
        + len(collateral.crls)
        + len(collateral.tcb_infos)
        + len(collateral.qe_identities)
    )
    assert used or collateral.skipped


@SETTINGS
@given(st.text(max_size=400))
def test_signed_collateral_json_parses_or_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        parse_signed_json(text.encode(), "tcbInfo")


@SETTINGS
@given(st.binary(max_size=600))
def test_snp_certificate_tables_of_any_content_parse_or_raise_value_error(data: bytes) -> None:
    from netshield.attestation.evidence.snp import parse_cert_table

    try:
        entries = parse_cert_table(data)
    except ValueError:
        return
    assert all(blob and len(guid) == 36 for guid, blob in entries)
