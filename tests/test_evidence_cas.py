"""Hardware evidence end to end: a real `netshield cas serve` with --collateral and test roots
issues certificates for SEV-SNP and TDX evidence bound to the CSR key, refuses the negative
twins with their reason codes, and its audit log names the evidence type of every decision;
`netshield evidence verify` checks the same evidence offline."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from netshield.attestation.evidence.decode import evidence_envelope
from netshield.attestation.quote import report_data_for
from netshield.casclient import CasRefused
from netshield.identity import SpiffeId
from netshield.pki.certext import attestation_claims_of
from netshield.pki.csr import build_csr
from netshield.pki.keys import generate_key, public_key_der
from tests.support import POLICY, TD, cas_subprocess, make_domain, netshield_cmd
from tests.tee_lab import DcapLab, SnpLab, pem

SNP_M, TD_M = "5a" * 48, "44" * 48
HW_POLICY = POLICY.replace(
    "  frontend:\n",
    f"""  vault:
    evidence:
      sev-snp:
        measurements: ["{SNP_M}"]
      tdx:
        mrtd: ["{TD_M}"]
  frontend:
""",
)


@pytest.fixture(scope="module")
def labs() -> tuple[SnpLab, DcapLab]:
    return SnpLab(), DcapLab()


def setup(tmp_path: Path, labs: tuple[SnpLab, DcapLab]) -> tuple[object, list[str]]:
    snp_lab, dcap_lab = labs
    domain = make_domain(tmp_path, HW_POLICY)
    collateral = dcap_lab.write_collateral(tmp_path / "collateral", "tdx", now=datetime.now(UTC))
    (collateral / "snp_chain.pem").write_bytes(pem(snp_lab.ask, snp_lab.ark))
    roots = tmp_path / "test-roots.pem"
    roots.write_bytes(pem(snp_lab.ark, dcap_lab.root))
    return domain, ["--collateral", str(collateral), "--unsafe-evidence-roots", str(roots)]


async def attest(domain, service: str, make) -> str:  # type: ignore[no-untyped-def]
    """Attest with evidence `make(report_data)`; "OK" (checked) or the refusal's reason code."""
    key = generate_key()
    async with domain.client() as cas:
        nonce = await cas.nonce()
        bound = bytes.fromhex(report_data_for(public_key_der(key.public_key()), nonce)) + bytes(32)
        csr = build_csr(key, SpiffeId.for_service(TD, service))
        try:
            creds = await cas.attest(service=service, nonce=nonce, quote=make(bound), csr_pem=csr)
        except CasRefused as err:
            return err.code
    leaf = x509.load_pem_x509_certificates(creds.chain_pem)[0]
    claims = attestation_claims_of(leaf)
    assert claims is not None and claims.platform_id.split(":")[0] in ("sev-snp", "tdx")
    assert claims.measurement in (SNP_M, TD_M)  # the 48-byte hardware measurement, certified
    return "OK"


async def test_cas_issues_certificates_for_hardware_evidence_and_audits_the_type(
    tmp_path: Path, labs: tuple[SnpLab, DcapLab]
) -> None:
    snp_lab, dcap_lab = labs
    domain, extra = setup(tmp_path, labs)

    def snp(bound: bytes, **kw: object) -> bytes:
        report = snp_lab.report(report_data=bound, measurement=bytes.fromhex(SNP_M), **kw)  # type: ignore[arg-type]
        return evidence_envelope("sev-snp", report, pem(snp_lab.vcek))

    def tdx(bound: bytes, **kw: object) -> bytes:
        return dcap_lab.quote("tdx", report_data=bound, mrtd=bytes.fromhex(TD_M), **kw)  # type: ignore[arg-type]

    with cas_subprocess(domain, *extra):
        assert await attest(domain, "vault", snp) == "OK"
        assert await attest(domain, "vault", tdx) == "OK"
        # negative twins: debug guest, another key's report data, a flipped bit, wrong service
        assert await attest(domain, "vault", lambda b: snp(b, debug=True)) == "DEBUG_NOT_ALLOWED"
        assert await attest(domain, "vault", lambda b: tdx(bytes(64))) == "REPORT_DATA_MISMATCH"

        def flipped(bound: bytes) -> bytes:
            quote = bytearray(tdx(bound))
            quote[100] ^= 1  # inside the TD report body
            return bytes(quote)

        assert await attest(domain, "vault", flipped) == "QUOTE_SIGNATURE_INVALID"
        assert await attest(domain, "orders", tdx) == "EVIDENCE_TYPE_NOT_ACCEPTED"
        assert (
            await attest(domain, "vault", lambda b: snp(b, tcb=(1, 0, 8, 115)))
            == "COLLATERAL_MISSING"
        )
        audit = subprocess.run(
            netshield_cmd(
                "cas",
                "audit",
                "--cas",
                domain._url,
                "--admin",
                str(domain.layout.admin_dir),
                "--json",
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert audit.returncode == 0, audit.stderr
    entries = [json.loads(line) for line in audit.stdout.splitlines() if line.startswith("{")]
    if not entries:
        entries = json.loads(audit.stdout)
        entries = entries.get("entries", entries) if isinstance(entries, dict) else entries
    attests = [e for e in entries if str(e.get("event", "")).startswith("attest.")]
    kinds = [(e["event"], e["data"].get("evidence_type"), e["data"].get("reason")) for e in attests]
    assert kinds == [
        ("attest.allow", "sev-snp", None),
        ("attest.allow", "tdx", None),
        ("attest.deny", "sev-snp", "DEBUG_NOT_ALLOWED"),
        ("attest.deny", "tdx", "REPORT_DATA_MISMATCH"),
        ("attest.deny", "tdx", "QUOTE_SIGNATURE_INVALID"),
        ("attest.deny", "tdx", "EVIDENCE_TYPE_NOT_ACCEPTED"),
        ("attest.deny", "sev-snp", "COLLATERAL_MISSING"),
    ]


def test_cas_without_test_roots_refuses_test_hardware(
    tmp_path: Path, labs: tuple[SnpLab, DcapLab]
) -> None:
    import asyncio

    domain, extra = setup(tmp_path, labs)
    snp_lab = labs[0]
    with cas_subprocess(domain, *extra[:2]):  # --collateral only: AMD's and Intel's roots
        got = asyncio.run(
            attest(
                domain,
                "vault",
                lambda b: evidence_envelope(
                    "sev-snp", snp_lab.report(report_data=b), snp_lab.certificates_pem
                ),
            )
        )
    assert got == "PLATFORM_CERT_UNTRUSTED"


def test_cas_refuses_to_start_with_a_missing_collateral_directory(tmp_path: Path) -> None:
    domain = make_domain(tmp_path, HW_POLICY)
    with pytest.raises(AssertionError, match=r"--collateral .*no such directory"):
        with cas_subprocess(domain, "--collateral", str(tmp_path / "nope")):
            pass


def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        netshield_cmd("evidence", "verify", *args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_evidence_verify_prints_claims_verdict_and_policy_keys(
    tmp_path: Path, labs: tuple[SnpLab, DcapLab]
) -> None:
    snp_lab, dcap_lab = labs
    roots = tmp_path / "roots.pem"
    roots.write_bytes(pem(snp_lab.ark, dcap_lab.root))
    report = tmp_path / "report.bin"
    report.write_bytes(snp_lab.report(measurement=bytes.fromhex(SNP_M)))
    chain = tmp_path / "certs"
    chain.mkdir()
    (chain / "vcek.der").write_bytes(snp_lab.vcek.public_bytes(serialization.Encoding.DER))
    (chain / "cert_chain.pem").write_bytes(pem(snp_lab.ask, snp_lab.ark))
    ok = run_verify(str(report), "--collateral", str(chain), "--unsafe-evidence-roots", str(roots))
    assert ok.returncode == 0, ok.stderr
    assert "verified: sev-snp evidence" in ok.stdout and SNP_M in ok.stdout
    assert '"evidence": {"sev-snp": {"measurements": ["' + SNP_M in ok.stdout
    as_json = json.loads(
        run_verify(
            str(report), "--collateral", str(chain), "--unsafe-evidence-roots", str(roots), "--json"
        ).stdout
    )
    assert as_json["verdict"] == "verified" and as_json["tcb"]["bootloader"] == 3
    # negative twins: AMD's roots only; no collateral; a flipped bit; an unreadable file
    untrusted = run_verify(str(report), "--collateral", str(chain), "--json")
    assert untrusted.returncode == 1
    assert json.loads(untrusted.stdout)["reason"] == "PLATFORM_CERT_UNTRUSTED"
    missing = run_verify(str(report), "--unsafe-evidence-roots", str(roots))
    assert (
        missing.returncode == 1
        and "refused: COLLATERAL_MISSING (sev-snp evidence)" in missing.stdout
    )
    assert "unverified claims" in missing.stdout and SNP_M in missing.stdout
    data = bytearray(report.read_bytes())
    data[0x90] ^= 1
    report.write_bytes(bytes(data))
    flipped = run_verify(
        str(report), "--collateral", str(chain), "--unsafe-evidence-roots", str(roots), "--json"
    )
    assert json.loads(flipped.stdout)["reason"] == "QUOTE_SIGNATURE_INVALID"
    absent = run_verify(str(tmp_path / "absent.bin"))
    assert (
        absent.returncode == 2
        and "cannot read" in absent.stderr
        and "Traceback" not in absent.stderr
    )


def test_evidence_verify_checks_a_tdx_quote_against_collateral(
    tmp_path: Path, labs: tuple[SnpLab, DcapLab]
) -> None:
    _, dcap_lab = labs
    roots = tmp_path / "roots.pem"
    roots.write_bytes(pem(dcap_lab.root))
    quote = tmp_path / "quote.dat"
    quote.write_bytes(dcap_lab.quote("tdx", mrtd=bytes.fromhex(TD_M)))
    collateral = dcap_lab.write_collateral(tmp_path / "collateral", "tdx")
    got = run_verify(
        str(quote),
        "--collateral",
        str(collateral),
        "--unsafe-evidence-roots",
        str(roots),
        "--at",
        "2026-03-01T12:00:00Z",
        "--json",
    )
    report = json.loads(got.stdout)
    assert (
        got.returncode == 0
        and report["tcb"]["status"] == "UpToDate"
        and report["values"]["mrtd"] == TD_M
    )
    late = run_verify(
        str(quote),
        "--collateral",
        str(collateral),
        "--unsafe-evidence-roots",
        str(roots),
        "--at",
        "2026-09-01T00:00:00Z",
        "--json",
    )
    assert late.returncode == 1 and json.loads(late.stdout)["reason"] == "COLLATERAL_EXPIRED"
    bad_time = run_verify(str(quote), "--at", "yesterday")
    assert bad_time.returncode == 2 and "--at" in bad_time.stderr


def test_fail_closed_record_and_explain_name_the_failed_check_and_evidence_type() -> None:
    from netshield.agent.credentials import CredentialHolder
    from netshield.explain import explain_record
    from netshield.record import ConnectionRecord

    holder = CredentialHolder()
    assert holder.state().detail == "not attested yet"  # negative twin: no attestation tried yet
    holder.note_failure(
        "CAS refused: TCB_STATUS_NOT_ACCEPTED: tdx platform 'tdx:ab' has TCB status "
        "SWHardeningNeeded, which platforms.tdx.accepted_tcb_statuses (UpToDate) does not accept"
    )
    state = holder.state()
    assert (
        state.reason == "NO_CREDENTIALS" and "TCB_STATUS_NOT_ACCEPTED: tdx platform" in state.detail
    )
    record = ConnectionRecord(
        ts="2026-03-01T12:00:00.000Z",
        conn_id="0k2x7c9m1a2b3c4e",
        direction="inbound",
        listener="0.0.0.0:7002",
        src="10.0.0.5:40000",
        dst="127.0.0.1:9000",
        local_identity=f"spiffe://{TD}/svc/vault",
        decision="deny",
        reason="NO_CREDENTIALS",
        detail=state.detail,
        close_reason="NO_CREDENTIALS",
    )
    text = " ".join(explain_record(record, None).lines())
    assert (
        "TCB_STATUS_NOT_ACCEPTED" in text
        and "tdx platform" in text
        and "accepted_tcb_statuses" in text
    )
