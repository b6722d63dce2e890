"""AMD SEV-SNP: the ATTESTATION_REPORT and its verification against AMD's VCEK/VLEK chain.

`parse_report` decodes the 1184-byte report as the SEV-SNP firmware ABI specification (AMD
publication 56860, "ATTESTATION_REPORT structure") lays it out: version, guest SVN, guest
policy (bit 19: debug), family and image id, VMPL, signature algorithm, current / reported /
committed / launch TCB, platform info, the signing-key selector (VCEK or VLEK), report data,
measurement, host data, ID and author key digests, report ids, CPUID family/model/stepping
(version 3 and later), chip id, firmware build numbers and the ECDSA P-384 signature (R and S
little-endian, zero-extended to 72 bytes). It is total: bytes in, `SnpReport` or an
`EvidenceError(QUOTE_MALFORMED)` out.

`verify_report` checks, stopping at the first failure:

1. a VCEK (chip id and reported TCB equal to the report's, as its hwID and SPL extensions say)
   or, when the report says so, a VLEK (TCB equal) is at hand: `COLLATERAL_MISSING` if not;
2. it chains through the ASK (or ASVK) to a pinned ARK, all valid at `now`, and none is on a
   current revocation list of the collateral (AMD's KDS publishes the ARK's CRL):
   `PLATFORM_CERT_UNTRUSTED`, `PLATFORM_CERT_REVOKED`, `COLLATERAL_EXPIRED` for a stale CRL;
3. the report's signature over its first 0x2A0 bytes verifies with that key (ECDSA P-384,
   SHA-384): `QUOTE_SIGNATURE_INVALID`.

The TCB minimum, debug policy and reference values are the appraisal's; this module reports
them. TCB_VERSION's layout differs between Milan/Genoa and Turin (which adds an FMC level);
the product comes from the report's CPUID family (version 3+) or the VCEK's product name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from netshield.attestation.evidence import der
from netshield.attestation.evidence.binary import malformed, u32, u64
from netshield.attestation.evidence.chains import build_chain, fingerprint
from netshield.attestation.evidence.claims import EvidenceError, SnpTcb, VerifiedEvidence
from netshield.reasons import Reason

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
VERSIONS = frozenset({2, 3, 4, 5})
SIG_ALGO_ECDSA_P384_SHA384 = 1
POLICY_DEBUG_BIT = 1 << 19
POLICY_RESERVED_ONE = 1 << 17
SIGNING_KEYS = {0: "vcek", 1: "vlek"}

_AMD = "1.3.6.1.4.1.3704.1."
OID_PRODUCT_NAME = _AMD + "2"
OID_BL_SPL, OID_TEE_SPL, OID_SNP_SPL, OID_UCODE_SPL, OID_FMC_SPL = (
    _AMD + "3.1",
    _AMD + "3.2",
    _AMD + "3.3",
    _AMD + "3.8",
    _AMD + "3.9",
)
OID_HWID = _AMD + "4"
OID_CSP_ID = _AMD + "5"
TURIN_FAMILY = 0x1A


@dataclass(frozen=True, slots=True)
class SnpReport:
    """An ATTESTATION_REPORT as carried; nothing in it verified yet. Digests are bytes."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    signing_key: int  # 0 VCEK, 1 VLEK, 7 none
    mask_chip_key: bool
    author_key_en: bool
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_family: int | None
    cpuid_model: int | None
    cpuid_stepping: int | None
    chip_id: bytes
    committed_tcb: int
    current_version: str
    committed_version: str
    launch_tcb: int
    signature_r: int
    signature_s: int
    signed_bytes: bytes

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG_BIT)

    @property
    def turin_layout(self) -> bool:
        return self.cpuid_family is not None and self.cpuid_family >= TURIN_FAMILY


def parse_report(data: bytes) -> SnpReport:
    """Decode an SEV-SNP ATTESTATION_REPORT; see the module docstring."""
    raw: object = data
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise malformed("sev-snp", "SEV-SNP report is not bytes")
    data = bytes(raw)
    if len(data) != REPORT_SIZE:
        raise malformed(
            "sev-snp", f"SEV-SNP report is {len(data)} bytes, not {REPORT_SIZE} (0x4A0)"
        )
    version = u32(data, 0x00)
    if version not in VERSIONS:
        raise malformed("sev-snp", f"SEV-SNP report version {version} is not one of 2..5")
    algo = u32(data, 0x34)
    if algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise malformed(
            "sev-snp", f"SEV-SNP report signature algorithm {algo} is not ECDSA P-384 (1)"
        )
    policy = u64(data, 0x08)
    if not policy & POLICY_RESERVED_ONE:
        raise malformed("sev-snp", "SEV-SNP guest policy bit 17 (reserved, must be one) is zero")
    flags = u32(data, 0x48)
    signing_key = (flags >> 2) & 0x7
    if signing_key not in (0, 1, 7):
        raise malformed("sev-snp", f"SEV-SNP signing key selector {signing_key} is reserved")
    sig = data[SIGNED_SIZE:]
    if any(sig[144:]):
        raise malformed("sev-snp", "SEV-SNP signature's reserved bytes are not zero")
    has_cpuid = version >= 3
    return SnpReport(
        version=version,
        guest_svn=u32(data, 0x04),
        policy=policy,
        family_id=data[0x10:0x20],
        image_id=data[0x20:0x30],
        vmpl=u32(data, 0x30),
        signature_algo=algo,
        current_tcb=u64(data, 0x38),
        platform_info=u64(data, 0x40),
        signing_key=signing_key,
        mask_chip_key=bool(flags & 0x2),
        author_key_en=bool(flags & 0x1),
        report_data=data[0x50:0x90],
        measurement=data[0x90:0xC0],
        host_data=data[0xC0:0xE0],
        id_key_digest=data[0xE0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=u64(data, 0x180),
        cpuid_family=data[0x188] if has_cpuid else None,
        cpuid_model=data[0x189] if has_cpuid else None,
        cpuid_stepping=data[0x18A] if has_cpuid else None,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=u64(data, 0x1E0),
        current_version=f"{data[0x1EA]}.{data[0x1E9]}.{data[0x1E8]}",
        committed_version=f"{data[0x1EE]}.{data[0x1ED]}.{data[0x1EC]}",
        launch_tcb=u64(data, 0x1F0),
        signature_r=int.from_bytes(sig[0:72], "little"),
        signature_s=int.from_bytes(sig[72:144], "little"),
        signed_bytes=data[:SIGNED_SIZE],
    )


CERT_TABLE_ENTRY = 24
CERT_GUIDS = {
    "63da758d-e664-4564-adc5-f4b93be8accd": "vcek",
    "a8074bc2-a25a-483e-aae6-39c045a0b8a1": "vlek",
    "4ab7b379-bbac-4fe4-a02f-05aef327c782": "ask",
    "c0b406a4-a803-4952-9743-3fb6014cd0ae": "ark",
}


def parse_cert_table(data: bytes) -> list[tuple[str, bytes]]:
    """The (GUID, DER) entries of the GHCB certificate table the host hands an SEV-SNP guest
    with its report (SNP_GET_EXT_REPORT, configfs-tsm's ``auxblob``): 24-byte entries (GUID,
    offset, length, little-endian) up to an all-zero entry. ValueError if it is not one."""
    entries: list[tuple[str, bytes]] = []
    for pos in range(0, len(data) - CERT_TABLE_ENTRY + 1, CERT_TABLE_ENTRY):
        entry = data[pos : pos + CERT_TABLE_ENTRY]
        if not any(entry):
            return entries
        guid = _guid(entry[:16])
        offset, length = u32(entry, 16), u32(entry, 20)
        if offset + length > len(data) or offset < pos + CERT_TABLE_ENTRY or length == 0:
            raise ValueError(f"certificate table entry {guid} points outside the table")
        entries.append((guid, data[offset : offset + length]))
    raise ValueError("certificate table has no terminating entry")


def _guid(raw: bytes) -> str:
    h = raw[3::-1].hex() + raw[5:3:-1].hex() + raw[7:5:-1].hex() + raw[8:10].hex() + raw[10:].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def decode_tcb(raw: int, *, turin: bool) -> SnpTcb:
    """A TCB_VERSION u64 in the product's layout."""
    b = raw.to_bytes(8, "little")
    if turin:
        return SnpTcb(bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
    return SnpTcb(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])


@dataclass(frozen=True, slots=True)
class SigningCert:
    """What a VCEK or VLEK certificate certifies."""

    cert: x509.Certificate
    product: str | None
    tcb: SnpTcb
    hwid: bytes | None
    csp_id: str | None


def signing_cert_claims(cert: x509.Certificate) -> SigningCert | None:
    """The AMD extensions of a VCEK/VLEK; None if `cert` is not one (or they are malformed)."""
    values: dict[str, bytes] = {}
    for ext in cert.extensions:
        if ext.oid.dotted_string.startswith(_AMD) and isinstance(
            ext.value, x509.UnrecognizedExtension
        ):
            values[ext.oid.dotted_string] = ext.value.value
    try:
        spl = {oid: der.integer(der.single(values[oid], der.INTEGER)) for oid in _SPL_OIDS}
        fmc_raw = values.get(OID_FMC_SPL)
        fmc = der.integer(der.single(fmc_raw, der.INTEGER)) if fmc_raw is not None else None
        product_raw = values.get(OID_PRODUCT_NAME)
        product = (
            der.single(product_raw, der.IA5STRING).decode("ascii")
            if product_raw is not None
            else None
        )
        hwid = values.get(OID_HWID)
        if hwid is not None and len(hwid) != 64:
            hwid = der.single(hwid, der.OCTET_STRING)
        csp_raw = values.get(OID_CSP_ID)
        csp = der.single(csp_raw, der.IA5STRING).decode("ascii") if csp_raw is not None else None
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    tcb = SnpTcb(
        bootloader=spl[OID_BL_SPL],
        tee=spl[OID_TEE_SPL],
        snp=spl[OID_SNP_SPL],
        microcode=spl[OID_UCODE_SPL],
        fmc=fmc,
    )
    return SigningCert(cert, product, tcb, hwid, csp)


_SPL_OIDS = (OID_BL_SPL, OID_TEE_SPL, OID_SNP_SPL, OID_UCODE_SPL)


def verify_report(
    report: SnpReport,
    *,
    certificates: Sequence[x509.Certificate],
    anchors: frozenset[str],
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> VerifiedEvidence:
    """Verify `report` with the VCEK/VLEK among `certificates`; see the module docstring."""
    key_name = SIGNING_KEYS.get(report.signing_key)
    if key_name is None:
        raise EvidenceError(
            "the SEV-SNP report is not signed (signing key selector 7: no key)",
            reason=Reason.QUOTE_SIGNATURE_INVALID,
            evidence_type="sev-snp",
        )
    signer = _find_signing_cert(report, key_name, certificates)
    chain = build_chain(
        signer.cert,
        certificates,
        anchors=anchors,
        now=now,
        kind="sev-snp",
        what=f"SEV-SNP {key_name.upper()}",
        crls=crls,
    )
    public_key = signer.cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP384R1
    ):
        raise EvidenceError(
            f"the SEV-SNP {key_name.upper()} does not hold an EC P-384 key",
            reason=Reason.PLATFORM_CERT_UNTRUSTED,
            evidence_type="sev-snp",
        )
    try:
        public_key.verify(
            encode_dss_signature(report.signature_r, report.signature_s),
            report.signed_bytes,
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature as exc:
        raise EvidenceError(
            f"the SEV-SNP report's signature does not verify with the {key_name.upper()} of "
            f"chip {report.chip_id.hex()[:16]}…: the report was altered or forged",
            reason=Reason.QUOTE_SIGNATURE_INVALID,
            evidence_type="sev-snp",
        ) from exc
    turin = report.turin_layout or (signer.product or "").startswith("Turin")
    tcb = decode_tcb(report.reported_tcb, turin=turin)
    if any(report.chip_id) and not report.mask_chip_key:
        platform_id = "sev-snp:" + report.chip_id.hex()
    else:
        platform_id = f"sev-snp:{key_name}:{fingerprint(signer.cert)}"
    return VerifiedEvidence(
        evidence_type="sev-snp",
        platform_id=platform_id,
        debug=report.debug,
        report_data=report.report_data,
        measurement=report.measurement.hex(),
        tcb=tcb,
        values=MappingProxyType(
            {
                "measurement": report.measurement.hex(),
                "host_data": report.host_data.hex(),
                "id_key_digest": report.id_key_digest.hex(),
                "author_key_digest": report.author_key_digest.hex(),
                "family_id": report.family_id.hex(),
                "image_id": report.image_id.hex(),
                "guest_svn": report.guest_svn,
                "vmpl": report.vmpl,
            }
        ),
        claims=MappingProxyType(report_claims(report, tcb, signer)),
        chain=chain,
    )


def report_claims(report: SnpReport, tcb: SnpTcb, signer: SigningCert | None) -> dict[str, object]:
    """The report's fields for display and JSON (nothing secret in a report)."""
    turin = tcb.fmc is not None
    return {
        "version": report.version,
        "product": signer.product if signer else None,
        "signing_key": SIGNING_KEYS.get(report.signing_key, "none"),
        "policy": f"{report.policy:#x}",
        "debug": report.debug,
        "vmpl": report.vmpl,
        "guest_svn": report.guest_svn,
        "chip_id": report.chip_id.hex(),
        "reported_tcb": tcb.to_json(),
        "current_tcb": decode_tcb(report.current_tcb, turin=turin).to_json(),
        "committed_tcb": decode_tcb(report.committed_tcb, turin=turin).to_json(),
        "launch_tcb": decode_tcb(report.launch_tcb, turin=turin).to_json(),
        "firmware": report.current_version,
        "platform_info": f"{report.platform_info:#x}",
        "report_id": report.report_id.hex(),
    }


def _find_signing_cert(
    report: SnpReport, key_name: str, certificates: Sequence[x509.Certificate]
) -> SigningCert:
    tcbs = {decode_tcb(report.reported_tcb, turin=t) for t in (False, True)}
    seen_for_chip = []
    for cert in certificates:
        claims = signing_cert_claims(cert)
        if claims is None:
            continue
        if key_name == "vcek":
            if claims.csp_id is not None or claims.hwid is None:
                continue
            if claims.hwid != report.chip_id:
                continue
        elif claims.csp_id is None:
            continue
        seen_for_chip.append(claims)
        if claims.tcb in tcbs:
            return claims
    if seen_for_chip:
        raise EvidenceError(
            f"the SEV-SNP {key_name.upper()} at hand certifies "
            f"{seen_for_chip[0].tcb.describe()}, not the report's reported TCB "
            f"({decode_tcb(report.reported_tcb, turin=report.turin_layout).describe()}); "
            f"fetch the {key_name.upper()} for this TCB from AMD's key distribution service",
            reason=Reason.COLLATERAL_MISSING,
            evidence_type="sev-snp",
        )
    where = f"chip {report.chip_id.hex()[:16]}…" if key_name == "vcek" else "this platform"
    raise EvidenceError(
        f"no SEV-SNP {key_name.upper()} certificate for {where}: send it with the evidence or put "
        "it in the collateral directory",
        reason=Reason.COLLATERAL_MISSING,
        evidence_type="sev-snp",
    )
