"""Hardware evidence verification with test hardware built to the specifications: every check
of the SEV-SNP and DCAP verifiers passes for good evidence and fails with its reason code for
the negative twin that breaks exactly that check."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from netshield.attestation.evidence.chains import TrustAnchors
from netshield.attestation.evidence.collateral import read_collateral_dir
from netshield.attestation.evidence.decode import evidence_envelope
from netshield.attestation.evidence.verifier import EvidenceVerifier
from netshield.errors import QuoteError
from netshield.reasons import Reason
from tests.tee_lab import NOW, OLD_COMPONENTS, DcapLab, SnpLab, pem


@pytest.fixture(scope="module")
def snp_lab() -> SnpLab:
    return SnpLab()


@pytest.fixture(scope="module")
def dcap_lab() -> DcapLab:
    return DcapLab()


def snp_verifier(lab: SnpLab) -> EvidenceVerifier:
    return EvidenceVerifier(sim=None, anchors=TrustAnchors().with_extra([lab.ark]))


def refused(verifier: EvidenceVerifier, data: bytes, reason: Reason, now=NOW) -> QuoteError:  # type: ignore[no-untyped-def]
    with pytest.raises(QuoteError) as info:
        verifier.verify(data, now=now)
    assert info.value.reason == reason, str(info.value)
    return info.value


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


# --- SEV-SNP ------------------------------------------------------------------------------------


def test_snp_report_with_its_vcek_chain_verifies(snp_lab: SnpLab) -> None:
    report = snp_lab.report(report_data=b"\x07" * 64, measurement=b"\x42" * 48)
    ev = snp_verifier(snp_lab).verify(
        evidence_envelope("sev-snp", report, snp_lab.certificates_pem), now=NOW
    )
    assert ev.evidence_type == "sev-snp"
    assert ev.platform_id == "sev-snp:" + snp_lab.chip_id.hex()
    assert ev.measurement == "42" * 48 and ev.report_data == b"\x07" * 64 and not ev.debug
    assert ev.tcb.to_json() == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert [c.subject for c in ev.chain] == [
        snp_lab.vcek.subject,
        snp_lab.ask.subject,
        snp_lab.ark.subject,
    ]


def test_snp_report_with_one_bit_flipped_in_the_signed_body_is_refused(snp_lab: SnpLab) -> None:
    report = flip(snp_lab.report(), 0x90)  # the measurement
    refused(
        snp_verifier(snp_lab),
        evidence_envelope("sev-snp", report, snp_lab.certificates_pem),
        Reason.QUOTE_SIGNATURE_INVALID,
    )


def test_snp_chain_from_another_root_is_refused(snp_lab: SnpLab) -> None:
    data = evidence_envelope("sev-snp", snp_lab.report(), snp_lab.certificates_pem)
    err = refused(EvidenceVerifier(sim=None), data, Reason.PLATFORM_CERT_UNTRUSTED)
    assert "not a pinned AMD root" in str(err)
    assert err.evidence_type == "sev-snp"  # type: ignore[attr-defined]


def test_snp_vcek_signed_by_a_stranger_ask_is_refused(snp_lab: SnpLab) -> None:
    stranger = SnpLab(name="Test")  # same names, other keys
    data = evidence_envelope(
        "sev-snp", snp_lab.report(), pem(snp_lab.vcek, stranger.ask, snp_lab.ark)
    )
    refused(snp_verifier(snp_lab), data, Reason.PLATFORM_CERT_UNTRUSTED)


def test_snp_report_without_a_vcek_names_the_missing_collateral(snp_lab: SnpLab) -> None:
    err = refused(snp_verifier(snp_lab), snp_lab.report(), Reason.COLLATERAL_MISSING)
    assert snp_lab.chip_id.hex()[:16] in str(err)


def test_snp_vcek_of_another_tcb_does_not_verify_a_report(snp_lab: SnpLab) -> None:
    report = snp_lab.report(tcb=(2, 0, 8, 115))  # reported TCB differs from the VCEK's
    err = refused(
        snp_verifier(snp_lab),
        evidence_envelope("sev-snp", report, snp_lab.certificates_pem),
        Reason.COLLATERAL_MISSING,
    )
    assert "bootloader=3" in str(err)


def test_snp_vcek_from_the_collateral_directory_is_found(snp_lab: SnpLab, tmp_path: Path) -> None:
    (tmp_path / "vcek.pem").write_bytes(pem(snp_lab.vcek))
    (tmp_path / "cert_chain").write_bytes(pem(snp_lab.ask, snp_lab.ark))
    verifier = EvidenceVerifier(
        sim=None,
        anchors=TrustAnchors().with_extra([snp_lab.ark]),
        collateral=lambda: read_collateral_dir(tmp_path),
    )
    assert verifier.verify(snp_lab.report(), now=NOW).evidence_type == "sev-snp"


def test_snp_chain_outside_its_validity_is_refused(snp_lab: SnpLab) -> None:
    data = evidence_envelope("sev-snp", snp_lab.report(), snp_lab.certificates_pem)
    refused(
        snp_verifier(snp_lab),
        data,
        Reason.PLATFORM_CERT_UNTRUSTED,
        now=NOW + timedelta(days=20 * 365),
    )


def test_snp_debug_and_unsigned_reports(snp_lab: SnpLab) -> None:
    verifier = snp_verifier(snp_lab)
    debug = verifier.verify(
        evidence_envelope("sev-snp", snp_lab.report(debug=True), snp_lab.certificates_pem), now=NOW
    )
    assert debug.debug  # verified: whether debug is allowed is the policy's call
    unsigned = snp_lab.report(signing_key=7)
    refused(
        verifier,
        evidence_envelope("sev-snp", unsigned, snp_lab.certificates_pem),
        Reason.QUOTE_SIGNATURE_INVALID,
    )


# --- Intel DCAP (SGX v3, TDX v4) ----------------------------------------------------------------


def dcap_verifier(lab: DcapLab, directory: Path) -> EvidenceVerifier:
    return EvidenceVerifier(
        sim=None,
        anchors=TrustAnchors().with_extra([lab.root]),
        collateral=lambda: read_collateral_dir(directory),
    )


KINDS = ["sgx", "tdx"]


@pytest.mark.parametrize("kind", KINDS)
def test_dcap_quote_with_current_collateral_verifies(
    dcap_lab: DcapLab, tmp_path: Path, kind: str
) -> None:
    verifier = dcap_verifier(dcap_lab, dcap_lab.write_collateral(tmp_path, kind))
    ev = verifier.verify(dcap_lab.quote(kind, report_data=b"\x09" * 64), now=NOW)
    assert ev.evidence_type == kind and ev.platform_id == f"{kind}:" + "ab" * 16
    assert ev.tcb.to_json()["status"] == "UpToDate" and ev.report_data == b"\x09" * 64
    if kind == "sgx":
        assert ev.values["mrenclave"] == "22" * 32 and ev.values["product_id"] == 1
    else:
        assert ev.values["mrtd"] == "44" * 48 and ev.values["rtmr3"] == "53" * 48


@pytest.mark.parametrize("kind", KINDS)
def test_dcap_quote_with_one_bit_flipped_in_the_body_is_refused(
    dcap_lab: DcapLab, tmp_path: Path, kind: str
) -> None:
    verifier = dcap_verifier(dcap_lab, dcap_lab.write_collateral(tmp_path, kind))
    refused(verifier, flip(dcap_lab.quote(kind), 48 + 100), Reason.QUOTE_SIGNATURE_INVALID)


@pytest.mark.parametrize("kind", KINDS)
def test_dcap_chain_from_another_root_is_refused(
    dcap_lab: DcapLab, tmp_path: Path, kind: str
) -> None:
    dcap_lab.write_collateral(tmp_path, kind)
    verifier = EvidenceVerifier(sim=None, collateral=lambda: read_collateral_dir(tmp_path))
    err = refused(verifier, dcap_lab.quote(kind), Reason.PLATFORM_CERT_UNTRUSTED)
    assert "not a pinned Intel root" in str(err)


def test_dcap_qe_report_not_signed_by_the_pck_is_refused(dcap_lab: DcapLab, tmp_path: Path) -> None:
    verifier = dcap_verifier(dcap_lab, dcap_lab.write_collateral(tmp_path))
    quote = dcap_lab.quote()
    # the QE report starts after header, body, length, signature and attestation key
    refused(verifier, flip(quote, 48 + 384 + 4 + 128 + 300), Reason.QE_REPORT_INVALID)


def test_dcap_qe_report_that_does_not_bind_the_attestation_key_is_refused(
    dcap_lab: DcapLab, tmp_path: Path
) -> None:
    verifier = dcap_verifier(dcap_lab, dcap_lab.write_collateral(tmp_path))
    quote = dcap_lab.quote()
    auth_at = 48 + 384 + 4 + 128 + 384 + 64 + 2  # the QE authentication data
    refused(verifier, flip(quote, auth_at), Reason.QE_REPORT_INVALID)


def test_dcap_pck_on_the_revocation_list_is_refused(dcap_lab: DcapLab, tmp_path: Path) -> None:
    pck = dcap_lab.pck_cert()
    crl = dcap_lab.pck_crl([pck.serial_number])
    verifier = dcap_verifier(dcap_lab, dcap_lab.write_collateral(tmp_path, **{"pck_crl.der": crl}))
    refused(verifier, dcap_lab.quote(pck=pck), Reason.PLATFORM_CERT_REVOKED)


def test_dcap_stale_revocation_list_is_expired_collateral(
    dcap_lab: DcapLab, tmp_path: Path
) -> None:
    stale = dcap_lab.pck_crl(issue=NOW - timedelta(days=60))
    verifier = dcap_verifier(
        dcap_lab, dcap_lab.write_collateral(tmp_path, **{"pck_crl.der": stale})
    )
    refused(verifier, dcap_lab.quote(), Reason.COLLATERAL_EXPIRED)


@pytest.mark.parametrize("kind", KINDS)
def test_dcap_missing_tcb_info_or_qe_identity_is_named(
    dcap_lab: DcapLab, tmp_path: Path, kind: str
) -> None:
    no_tcb = dcap_lab.write_collateral(tmp_path / "a", kind, **{f"{kind}_tcb_info.json": b""})
    err = refused(dcap_verifier(dcap_lab, no_tcb), dcap_lab.quote(kind), Reason.COLLATERAL_MISSING)
    assert "00906ed50000" in str(err)  # the FMSPC to fetch
    no_qe = dcap_lab.write_collateral(tmp_path / "b", kind, **{f"{kind}_qe_identity.json": b""})
    refused(dcap_verifier(dcap_lab, no_qe), dcap_lab.quote(kind), Reason.COLLATERAL_MISSING)


def test_dcap_altered_tcb_info_is_invalid_collateral(dcap_lab: DcapLab, tmp_path: Path) -> None:
    altered = dcap_lab.tcb_info().replace(
        b'"tcbEvaluationDataNumber":17', b'"tcbEvaluationDataNumber":18'
    )
    verifier = dcap_verifier(
        dcap_lab, dcap_lab.write_collateral(tmp_path, **{"sgx_tcb_info.json": altered})
    )
    refused(verifier, dcap_lab.quote(), Reason.COLLATERAL_INVALID)


def test_dcap_tcb_info_signed_by_a_stranger_is_invalid_collateral(
    dcap_lab: DcapLab, tmp_path: Path
) -> None:
    stranger = DcapLab(name="Stranger")
    files = {
        "sgx_tcb_info.json": stranger.tcb_info(),
        "stranger_chain.pem": pem(stranger.tcb_signer, stranger.root),
    }
    verifier = dcap_verifier(dcap_lab, dcap_lab.write_collateral(tmp_path, **files))
    refused(verifier, dcap_lab.quote(), Reason.COLLATERAL_INVALID)


def test_dcap_expired_tcb_info_is_expired_collateral(dcap_lab: DcapLab, tmp_path: Path) -> None:
    later = NOW + timedelta(days=45)
    fresh_crl = dcap_lab.pck_crl(issue=later - timedelta(days=1))
    verifier = dcap_verifier(
        dcap_lab, dcap_lab.write_collateral(tmp_path, **{"pck_crl.der": fresh_crl})
    )
    err = refused(verifier, dcap_lab.quote(), Reason.COLLATERAL_EXPIRED, now=later)
    assert "TCB Info" in str(err)


def test_dcap_quoting_enclave_not_intels_is_refused(dcap_lab: DcapLab, tmp_path: Path) -> None:
    other = dcap_lab.qe_identity(mrsigner=b"\x77" * 32, issue=NOW - timedelta(days=1))
    verifier = dcap_verifier(
        dcap_lab, dcap_lab.write_collateral(tmp_path, **{"sgx_qe_identity.json": other})
    )
    refused(verifier, dcap_lab.quote(), Reason.QE_IDENTITY_MISMATCH)


def test_dcap_quoting_enclave_below_every_level_is_out_of_date(
    dcap_lab: DcapLab, tmp_path: Path
) -> None:
    verifier = dcap_verifier(dcap_lab, dcap_lab.write_collateral(tmp_path))
    ev = verifier.verify(dcap_lab.quote(qe_svn=3), now=NOW)  # QE level 0 is OutOfDate
    assert (
        ev.tcb.to_json()["qe_status"] == "OutOfDate" and ev.tcb.to_json()["status"] == "OutOfDate"
    )


def test_tdx_module_not_intels_is_refused(dcap_lab: DcapLab, tmp_path: Path) -> None:
    info = dcap_lab.tcb_info("tdx", module_signer=b"\x66" * 48, issue=NOW - timedelta(days=1))
    verifier = dcap_verifier(
        dcap_lab, dcap_lab.write_collateral(tmp_path, "tdx", **{"tdx_tcb_info.json": info})
    )
    refused(verifier, dcap_lab.quote("tdx"), Reason.TDX_MODULE_MISMATCH)


@pytest.mark.parametrize("kind", KINDS)
def test_dcap_outdated_platform_gets_the_collaterals_status(
    dcap_lab: DcapLab, tmp_path: Path, kind: str
) -> None:
    verifier = dcap_verifier(dcap_lab, dcap_lab.write_collateral(tmp_path, kind))
    old = dcap_lab.pck_cert(components=OLD_COMPONENTS)
    ev = verifier.verify(dcap_lab.quote(kind, pck=old), now=NOW)
    assert ev.tcb.to_json()["platform_status"] == "OutOfDate"
    assert ev.tcb.to_json()["advisory_ids"] == ["INTEL-SA-00001"]
    older = dcap_lab.pck_cert(components=(1,) * 16)
    refused(verifier, dcap_lab.quote(kind, pck=older), Reason.TCB_OUT_OF_DATE)


def test_collateral_directory_lists_files_it_cannot_use(tmp_path: Path) -> None:
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01garbage")
    collateral = read_collateral_dir(tmp_path)
    assert len(collateral.skipped) == 2 and not collateral.tcb_infos


def test_the_type_names_match_the_policys_names() -> None:
    import typing

    from netshield import evidence_policy
    from netshield.attestation.evidence import claims

    assert typing.get_args(claims.TcbStatus) == evidence_policy.TCB_STATUSES == claims.TCB_STATUSES
    assert typing.get_args(claims.EvidenceType) == evidence_policy.EVIDENCE_TYPES
    assert set(claims.EVIDENCE_NAMES) == set(evidence_policy.EVIDENCE_TYPES)


def test_snp_report_signed_by_a_vlek_verifies_and_its_twin_without_one_is_named(
    snp_lab: SnpLab,
) -> None:
    vlek = snp_lab.vcek_for(snp_lab.tcb, vlek=True)
    report = snp_lab.report(signing_key=1)
    ev = snp_verifier(snp_lab).verify(
        evidence_envelope("sev-snp", report, pem(vlek, snp_lab.ask, snp_lab.ark)), now=NOW
    )
    assert ev.claims["signing_key"] == "vlek" and ev.chain[0].subject == vlek.subject
    # the VCEK of the chip does not stand in for a VLEK
    err = refused(
        snp_verifier(snp_lab),
        evidence_envelope("sev-snp", report, snp_lab.certificates_pem),
        Reason.COLLATERAL_MISSING,
    )
    assert "VLEK" in str(err)


def test_snp_turin_report_reads_the_tcb_in_turins_layout(snp_lab: SnpLab) -> None:
    vcek = snp_lab.vcek_for(snp_lab.tcb, fmc=2, product=b"Turin-B0")
    report = snp_lab.report(version=3, turin_fmc=2)
    ev = snp_verifier(snp_lab).verify(
        evidence_envelope("sev-snp", report, pem(vcek, snp_lab.ask, snp_lab.ark)), now=NOW
    )
    assert ev.tcb.to_json() == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115, "fmc": 2}
    assert ev.claims["product"] == "Turin-B0"
    # the same bytes read in Milan's layout are another TCB: that VCEK does not match
    milan_read = snp_lab.report(
        version=3, tcb=(2, 3, 8, 115)
    )  # fmc=2 bl=3 where Milan reads bl, tee
    refused(
        snp_verifier(snp_lab),
        evidence_envelope("sev-snp", milan_read, pem(vcek, snp_lab.ask, snp_lab.ark)),
        Reason.COLLATERAL_MISSING,
    )


def test_snp_ask_on_the_arks_revocation_list_is_refused(snp_lab: SnpLab, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    def ark_crl(revoked: list[int]) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(snp_lab.ark.subject)
            .last_update(NOW - timedelta(days=1))
            .next_update(NOW + timedelta(days=30))
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(NOW - timedelta(days=1))
                .build()
            )
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
        return builder.sign(snp_lab.ark_key, hashes.SHA384(), rsa_padding=pss).public_bytes(
            serialization.Encoding.DER
        )

    def verifier(crl: bytes) -> EvidenceVerifier:
        (tmp_path / "ark.crl").write_bytes(crl)
        return EvidenceVerifier(
            sim=None,
            anchors=TrustAnchors().with_extra([snp_lab.ark]),
            collateral=lambda: read_collateral_dir(tmp_path),
        )

    data = evidence_envelope("sev-snp", snp_lab.report(), snp_lab.certificates_pem)
    assert verifier(ark_crl([])).verify(data, now=NOW).evidence_type == "sev-snp"
    refused(verifier(ark_crl([snp_lab.ask.serial_number])), data, Reason.PLATFORM_CERT_REVOKED)
