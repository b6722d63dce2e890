"""The sidecar's hardware quoter (configfs-tsm): report data bound to the CSR key, SEV-SNP reports
with the host's certificate table as PEM, TDX quotes, retries when another writer interferes,
and one clear error when the kernel interface is not there. The kernel is `FakeTsm`; a real
confidential VM was not available here."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from netshield.agent.attest import attest
from netshield.attestation.evidence import snp
from netshield.attestation.evidence.decode import decode_evidence
from netshield.errors import ConfigError, NetshieldError
from netshield.quoting.tsm import TsmQuoter
from netshield.reasons import Reason
from netshield.sidecar.config import parse_sidecar_config
from tests.support import TD, cas_subprocess
from tests.tee_lab import DcapLab, FakeTsm, SnpLab, cert_table
from tests.test_evidence_cas import SNP_M, TD_M, setup

ROOT = Path("/sys/kernel/config/tsm/report")
RD = "ab" * 32


@pytest.fixture(scope="module")
def labs() -> tuple[SnpLab, DcapLab]:
    return SnpLab(), DcapLab()


def test_snp_quote_binds_report_data_and_carries_the_hosts_certificates(
    labs: tuple[SnpLab, DcapLab],
) -> None:
    fake = FakeTsm("sev_guest", labs[0])
    quoter = TsmQuoter(ROOT, fs=fake)
    decoded = decode_evidence(asyncio.run(quoter.quote(RD)))
    assert decoded.evidence_type == "sev-snp"
    assert isinstance(decoded.parsed, snp.SnpReport)
    assert decoded.parsed.report_data == bytes.fromhex(RD) + bytes(32)
    assert {c.subject for c in decoded.certificates} == {
        labs[0].vcek.subject,
        labs[0].ask.subject,
        labs[0].ark.subject,
    }
    assert quoter.platform_id == "sev-snp:" + labs[0].chip_id.hex()
    assert fake.removed and not fake.entries  # the report directory is removed again


def test_tdx_quote_and_a_racing_writer(labs: tuple[SnpLab, DcapLab]) -> None:
    quoter = TsmQuoter(ROOT, fs=FakeTsm("tdx_guest", dcap_lab=labs[1], racy=1))
    decoded = decode_evidence(asyncio.run(quoter.quote(RD)))
    assert decoded.evidence_type == "tdx" and quoter.platform_id == "tdx:" + "ab" * 16
    always_racing = TsmQuoter(ROOT, fs=FakeTsm("tdx_guest", dcap_lab=labs[1], racy=100))
    with pytest.raises(NetshieldError, match="another writer") as info:
        asyncio.run(always_racing.quote(RD))
    assert info.value.reason == Reason.PLATFORM_UNAVAILABLE


def test_missing_kernel_interface_or_unknown_provider_is_one_clear_error(
    tmp_path: Path, labs: tuple[SnpLab, DcapLab]
) -> None:
    absent = TsmQuoter(tmp_path / "no-tsm")  # the real configfs code path, on a machine without it
    with pytest.raises(NetshieldError, match="cannot make a report") as info:
        asyncio.run(absent.quote(RD))
    assert info.value.reason == Reason.PLATFORM_UNAVAILABLE
    with pytest.raises(NetshieldError, match="provider 'arm_cca'"):
        asyncio.run(TsmQuoter(ROOT, fs=FakeTsm("arm_cca", labs[0])).quote(RD))
    with pytest.raises(ValueError, match="32 bytes"):
        asyncio.run(TsmQuoter(ROOT, fs=FakeTsm("sev_guest", labs[0])).quote("ab"))


def test_certificate_table_parser_refuses_tables_that_point_outside(
    labs: tuple[SnpLab, DcapLab],
) -> None:
    table = cert_table([("63da758d-e664-4564-adc5-f4b93be8accd", b"\x30\x03\x02\x01\x00")])
    assert snp.parse_cert_table(table) == [
        ("63da758d-e664-4564-adc5-f4b93be8accd", b"\x30\x03\x02\x01\x00")
    ]
    assert snp.CERT_GUIDS["63da758d-e664-4564-adc5-f4b93be8accd"] == "vcek"
    with pytest.raises(ValueError, match="outside"):
        snp.parse_cert_table(table[:-2])
    unterminated = table[:24] + table[48:]  # the entry and its blob, no zero entry
    unterminated = unterminated[:16] + (24).to_bytes(4, "little") + unterminated[20:]
    with pytest.raises(ValueError, match="terminating"):
        snp.parse_cert_table(unterminated)


async def test_sidecar_quoter_attests_at_the_cas_with_hardware_evidence(
    tmp_path: Path, labs: tuple[SnpLab, DcapLab]
) -> None:
    domain, extra = setup(tmp_path, labs)
    snp_quoter = TsmQuoter(ROOT, fs=FakeTsm("sev_guest", labs[0], measurement=bytes.fromhex(SNP_M)))
    tdx_quoter = TsmQuoter(
        ROOT, fs=FakeTsm("tdx_guest", dcap_lab=labs[1], measurement=bytes.fromhex(TD_M))
    )
    with cas_subprocess(domain, *extra):
        async with domain.client() as cas:
            for quoter in (snp_quoter, tdx_quoter):
                got = await attest(cas, quoter, "vault", trust_domain=TD)
                assert got.credentials.spiffe_id.endswith("/svc/vault")
            wrong = TsmQuoter(
                ROOT, fs=FakeTsm("tdx_guest", dcap_lab=labs[1], measurement=b"\x00" * 48)
            )
            with pytest.raises(NetshieldError) as info:
                await attest(cas, wrong, "vault", trust_domain=TD)
            assert info.value.reason == Reason.MEASUREMENT_NOT_ALLOWED


def sidecar_yaml(tmp_path: Path, platform: str, workload: str = "") -> str:
    (tmp_path / "ca.pem").write_text("x")
    return f"""
service: vault
cas: {{url: "https://127.0.0.1:8443", ca: ca.pem}}
platform: {platform}
{workload}
inbound: {{listen: "127.0.0.1:0", upstream: "127.0.0.1:9000"}}
"""


def test_sidecar_config_takes_platform_tsm_and_refuses_a_workload_beside_it(tmp_path: Path) -> None:
    config = parse_sidecar_config(
        sidecar_yaml(tmp_path, "{tsm: /sys/kernel/config/tsm/report}"), base_dir=tmp_path
    )
    assert config.platform.tsm == ROOT and config.workload is None
    with pytest.raises(ConfigError, match="hardware measures the confidential VM itself"):
        parse_sidecar_config(
            sidecar_yaml(
                tmp_path, "{tsm: /sys/kernel/config/tsm/report}", "workload: {path: ., cmd: [x]}"
            ),
            base_dir=tmp_path,
        )
    with pytest.raises(ConfigError, match="give one of socket, tsm, in_process"):
        parse_sidecar_config(sidecar_yaml(tmp_path, "{tsm: /t, socket: /s}"), base_dir=tmp_path)


def test_sidecar_config_check_names_a_missing_configfs_tsm(tmp_path: Path) -> None:
    from netshield.sidecar.config import file_problems

    missing = parse_sidecar_config(
        sidecar_yaml(tmp_path, f"{{tsm: {tmp_path / 'tsm'}}}"), base_dir=tmp_path
    )
    assert [p.path for p in file_problems(missing)] == ["platform.tsm"]
    assert "Linux 6.7" in str(file_problems(missing)[0])
    (tmp_path / "tsm").mkdir()
    assert file_problems(missing) == []
