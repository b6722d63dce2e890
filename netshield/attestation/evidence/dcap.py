"""Intel DCAP quotes (SGX version 3, TDX version 4 and 5) and their verification.

`parse_quote` decodes a quote as the Intel SGX ECDSA Quote Library API and the Intel TDX DCAP
Quoting Library API lay it out: the 48-byte header (version, attestation key type 2 = ECDSA
P-256, TEE type 0 = SGX or 0x81 = TDX, QE and PCE SVN, QE vendor id, user data), the report
body (`sgx.SgxReportBody` or `tdx.TdReport`; version 5 names the body type and size), then the
signature data: the ECDSA signature over header ‖ body, the attestation public key, and the
certification data — the QE report, its signature, the QE authentication data and the PCK
certificate chain (certification data type 5; version 4 and 5 wrap these in type 6). Zero
padding after the signature data (quote buffers of a fixed size) is ignored; any other byte
there is refused. It is total: a `DcapQuote` or `EvidenceError(QUOTE_MALFORMED)`, for any bytes.

`verify_quote` checks, stopping at the first failure, each with its reason code:

1. the PCK certificate chain leads to a pinned Intel SGX Root CA, every certificate valid at
   `now` and none revoked by a CRL of the collateral (`PLATFORM_CERT_UNTRUSTED`,
   `PLATFORM_CERT_REVOKED`, `COLLATERAL_EXPIRED` for a stale CRL);
2. the QE report is signed by the PCK key, and its report data is SHA-256(attestation key ‖
   QE authentication data) padded with zeros (`QE_REPORT_INVALID`);
3. the quote signature over header ‖ body verifies with the attestation key
   (`QUOTE_SIGNATURE_INVALID`);
4. TCB Info for the PCK certificate's FMSPC and the QE Identity are in the collateral
   (`COLLATERAL_MISSING`), signed by an Intel TCB Signing certificate that chains to the root
   (`COLLATERAL_INVALID`) and current at `now` (`COLLATERAL_EXPIRED`);
5. the quoting enclave is the one the QE Identity names (`QE_IDENTITY_MISMATCH`), and for TDX
   the TDX module is the one the TCB Info names (`TDX_MODULE_MISMATCH`);
6. the platform meets one of the TCB levels (`TCB_OUT_OF_DATE` if it meets none).

It returns the TCB status (platform and QE merged by severity, as Intel's QVL does) with its
advisories; whether that status is acceptable is the policy's call, made in the appraisal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from netshield.attestation.evidence import der, sgx, tdx
from netshield.attestation.evidence.binary import Cursor, malformed, u16, u32
from netshield.attestation.evidence.chains import build_chain, load_certificates
from netshield.attestation.evidence.claims import (
    DcapTcb,
    EvidenceError,
    EvidenceType,
    TcbStatus,
    VerifiedEvidence,
)
from netshield.attestation.evidence.collateral import Collateral
from netshield.attestation.evidence.intel import (
    QeIdentity,
    SignedJson,
    TcbInfo,
    platform_level,
    qe_level,
    worst,
)
from netshield.attestation.evidence.sgx import SgxReportBody, parse_report_body
from netshield.attestation.evidence.tdx import TD10_SIZE, TD15_SIZE, TdReport, parse_td_report
from netshield.reasons import Reason

HEADER_SIZE = 48
ATT_KEY_ECDSA_P256 = 2
TEE_SGX = 0x00000000
TEE_TDX = 0x00000081
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6
MAX_QUOTE_BYTES = 65536
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

_SGX_EXT = "1.2.840.113741.1.13.1"
OID_PPID, OID_TCB, OID_PCEID, OID_FMSPC = (f"{_SGX_EXT}.{n}" for n in (1, 2, 3, 4))


@dataclass(frozen=True, slots=True)
class DcapQuote:
    version: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    body: SgxReportBody | TdReport
    signed_bytes: bytes
    signature: bytes  # r ‖ s, 64 bytes
    attestation_key: bytes  # x ‖ y, 64 bytes
    qe_report: SgxReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_type: int
    cert_data: bytes

    @property
    def kind(self) -> EvidenceType:
        return "tdx" if self.tee_type == TEE_TDX else "sgx"


def parse_quote(data: bytes) -> DcapQuote:
    """Decode a DCAP quote; see the module docstring."""
    raw: object = data
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise malformed("sgx", "DCAP quote is not bytes")
    data = bytes(raw)
    if len(data) > MAX_QUOTE_BYTES:
        raise malformed("sgx", f"DCAP quote is {len(data)} bytes, more than {MAX_QUOTE_BYTES}")
    if len(data) < HEADER_SIZE:
        raise malformed("sgx", f"DCAP quote is {len(data)} bytes, shorter than its header")
    version, key_type, tee_type = u16(data, 0), u16(data, 2), u32(data, 4)
    kind: EvidenceType = "tdx" if tee_type == TEE_TDX else "sgx"
    if version not in (3, 4, 5):
        raise malformed(kind, f"DCAP quote version {version} is not 3, 4 or 5")
    if key_type != ATT_KEY_ECDSA_P256:
        raise malformed(kind, f"DCAP attestation key type {key_type} is not ECDSA P-256 (2)")
    if tee_type not in (TEE_SGX, TEE_TDX) or (version == 3 and tee_type != TEE_SGX):
        raise malformed(kind, f"DCAP quote version {version} with TEE type {tee_type:#x}")
    cur = Cursor(data, kind, f"DCAP quote v{version}")
    cur.take(HEADER_SIZE, "header")
    if version == 5:
        body_type = cur.u16("body type")
        body_size = cur.u32("body size")
        expected = {1: 384, 2: TD10_SIZE, 3: TD15_SIZE}.get(body_type)
        if expected is None or body_size != expected or (body_type == 1) != (kind == "sgx"):
            raise malformed(kind, f"DCAP quote v5 body type {body_type} of {body_size} bytes")
        body_raw = cur.take(body_size, "report body")
    else:
        body_raw = cur.take(384 if kind == "sgx" else TD10_SIZE, "report body")
    signed_bytes = data[: cur.position]
    body: SgxReportBody | TdReport = (
        parse_report_body(body_raw) if kind == "sgx" else parse_td_report(body_raw)
    )
    sig_len = cur.u32("signature data length")
    sig = Cursor(cur.take(sig_len, "signature data"), kind, "DCAP signature data")
    if any(cur.take(cur.remaining, "padding")):
        raise malformed(kind, f"DCAP quote v{version}: bytes other than zero padding after the end")
    signature = sig.take(64, "quote signature")
    att_key = sig.take(64, "attestation key")
    if version == 3:
        qe = sig
    else:
        outer = sig.u16("certification data type")
        if outer != CERT_QE_REPORT:
            raise malformed(kind, f"certification data type {outer} is not QE report data (6)")
        qe = Cursor(
            sig.take(sig.u32("certification data size"), "QE report data"), kind, "QE report data"
        )
        sig.expect_end()
    qe_report_raw = qe.take(384, "QE report")
    qe_report_sig = qe.take(64, "QE report signature")
    qe_auth = qe.take(qe.u16("QE auth data size"), "QE auth data")
    cert_type = qe.u16("certification data type")
    cert_data = qe.take(qe.u32("certification data size"), "certification data")
    qe.expect_end()
    return DcapQuote(
        version=version,
        tee_type=tee_type,
        qe_svn=u16(data, 8),
        pce_svn=u16(data, 10),
        qe_vendor_id=data[12:28],
        user_data=data[28:48],
        body=body,
        signed_bytes=signed_bytes,
        signature=signature,
        attestation_key=att_key,
        qe_report=parse_report_body(qe_report_raw, kind, "QE report"),
        qe_report_signature=qe_report_sig,
        qe_auth_data=qe_auth,
        cert_type=cert_type,
        cert_data=cert_data,
    )


@dataclass(frozen=True, slots=True)
class PckClaims:
    """What Intel's PCK certificate says about the platform (its SGX extensions)."""

    ppid: bytes
    cpusvn_components: tuple[int, ...]
    pcesvn: int
    pce_id: bytes
    fmspc: bytes


def pck_claims(cert: x509.Certificate) -> PckClaims:
    """The SGX extensions of a PCK certificate; ValueError if absent or malformed."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(_SGX_EXT))
    except x509.ExtensionNotFound:
        raise ValueError("no SGX extensions") from None
    raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    fields: dict[str, tuple[int, bytes]] = {}
    for tag, pair in der.children(der.single(raw, der.SEQUENCE)):
        if tag != der.SEQUENCE:
            raise ValueError("SGX extension entry is not a SEQUENCE")
        (_, oid_raw), (vtag, value) = der.children(pair)[:2]
        fields[der.oid(oid_raw)] = (vtag, value)
    comps: dict[str, int] = {}
    cpusvn = b""
    for _, pair in der.children(fields[OID_TCB][1]):
        (_, oid_raw), (vtag, value) = der.children(pair)[:2]
        name = der.oid(oid_raw)
        if vtag == der.INTEGER:
            comps[name] = der.integer(value)
        elif vtag == der.OCTET_STRING:
            cpusvn = value
    components = tuple(comps[f"{OID_TCB}.{i}"] for i in range(1, 17))
    if len(cpusvn) != 16:
        raise ValueError("no 16-byte CPUSVN in the PCK certificate")
    return PckClaims(
        ppid=fields[OID_PPID][1],
        cpusvn_components=components,
        pcesvn=comps[f"{OID_TCB}.17"],
        pce_id=fields[OID_PCEID][1],
        fmspc=fields[OID_FMSPC][1],
    )


def verify_quote(
    quote: DcapQuote, *, collateral: Collateral, anchors: frozenset[str], now: datetime
) -> VerifiedEvidence:
    """Verify `quote` against `collateral`; see the module docstring."""
    kind = quote.kind
    label = "TDX" if kind == "tdx" else "SGX"
    pck, chain = _pck_chain(quote, collateral, anchors, now)
    try:
        claims = pck_claims(pck)
    except (ValueError, KeyError, IndexError) as exc:
        raise EvidenceError(
            f"the {label} quote's PCK certificate has no well-formed SGX extensions ({exc})",
            reason=Reason.PLATFORM_CERT_UNTRUSTED,
            evidence_type=kind,
        ) from None
    pck_key = pck.public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey):
        raise EvidenceError(
            f"the {label} PCK certificate holds no EC key",
            reason=Reason.PLATFORM_CERT_UNTRUSTED,
            evidence_type=kind,
        )
    if not _ecdsa_ok(pck_key, quote.qe_report_signature, quote.qe_report.raw):
        raise EvidenceError(
            f"the {label} quote's QE report is not signed by its PCK certificate's key",
            reason=Reason.QE_REPORT_INVALID,
            evidence_type=kind,
        )
    binding = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if quote.qe_report.report_data != binding:
        raise EvidenceError(
            f"the {label} quote's QE report does not bind its attestation key "
            "(report data is not SHA-256(attestation key ‖ QE auth data))",
            reason=Reason.QE_REPORT_INVALID,
            evidence_type=kind,
        )
    try:
        att_key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + quote.attestation_key
        )
    except ValueError:
        raise EvidenceError(
            f"the {label} quote's attestation key is not a P-256 point",
            reason=Reason.QUOTE_SIGNATURE_INVALID,
            evidence_type=kind,
        ) from None
    if not _ecdsa_ok(att_key, quote.signature, quote.signed_bytes):
        raise EvidenceError(
            f"the {label} quote's signature does not verify with its attestation key: the quote "
            "was altered or forged",
            reason=Reason.QUOTE_SIGNATURE_INVALID,
            evidence_type=kind,
        )
    tcb = _evaluate_tcb(quote, claims, collateral, anchors, now)
    body = quote.body
    values = (
        sgx.reference_values(body)
        if isinstance(body, SgxReportBody)
        else tdx.reference_values(body)
    )
    body_claims = (
        sgx.body_claims(body) if isinstance(body, SgxReportBody) else tdx.body_claims(body)
    )
    body_claims.update(
        quote_version=quote.version,
        fmspc=claims.fmspc.hex(),
        pce_id=claims.pce_id.hex(),
        pcesvn=claims.pcesvn,
        qe_svn=quote.qe_report.isv_svn,
    )
    measurement = body.mrenclave.hex() if isinstance(body, SgxReportBody) else body.mrtd.hex()
    return VerifiedEvidence(
        evidence_type=kind,
        platform_id=f"{kind}:{claims.ppid.hex()}",
        debug=body.debug,
        report_data=body.report_data,
        measurement=measurement,
        tcb=tcb,
        values=MappingProxyType(values),
        claims=MappingProxyType(body_claims),
        chain=chain,
    )


def _pck_chain(
    quote: DcapQuote, collateral: Collateral, anchors: frozenset[str], now: datetime
) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    kind = quote.kind
    label = "TDX" if kind == "tdx" else "SGX"
    if quote.cert_type != CERT_PCK_CHAIN:
        raise EvidenceError(
            f"the {label} quote carries certification data type {quote.cert_type}, not the PCK "
            "certificate chain (5); configure the platform's quote provider to embed the chain",
            reason=Reason.COLLATERAL_MISSING,
            evidence_type=kind,
        )
    try:
        certs = load_certificates(quote.cert_data.rstrip(b"\x00"))
    except ValueError:
        raise EvidenceError(
            f"the {label} quote's PCK certificate chain is not PEM certificates",
            reason=Reason.QUOTE_MALFORMED,
            evidence_type=kind,
        ) from None
    if not certs:
        raise EvidenceError(
            f"the {label} quote's PCK certificate chain is empty",
            reason=Reason.QUOTE_MALFORMED,
            evidence_type=kind,
        )
    chain = build_chain(
        certs[0],
        [*certs[1:], *collateral.certificates],
        anchors=anchors,
        now=now,
        kind=kind,
        what=f"{label} PCK certificate",
        crls=collateral.crls,
    )
    return certs[0], chain


def _evaluate_tcb(
    quote: DcapQuote,
    pck: PckClaims,
    collateral: Collateral,
    anchors: frozenset[str],
    now: datetime,
) -> DcapTcb:
    kind = quote.kind
    label = "TDX" if kind == "tdx" else "SGX"
    info_id, qe_id = ("TDX", "TD_QE") if kind == "tdx" else ("SGX", "QE")
    infos = [t for t in collateral.tcb_infos if t.id == info_id and t.fmspc == pck.fmspc]
    if not infos:
        raise _missing(
            kind,
            f"{collateral.source} has no {info_id} TCB Info for FMSPC {pck.fmspc.hex()}; fetch "
            f"it from Intel's PCS ({label.lower()}/certification/v4/tcb?fmspc={pck.fmspc.hex()})",
        )
    info = _current(infos, now, kind, f"{info_id} TCB Info for FMSPC {pck.fmspc.hex()}")
    _check_signed(info.source, collateral, anchors, now, kind, f"{info_id} TCB Info")
    identities = [q for q in collateral.qe_identities if q.id == qe_id]
    if not identities:
        raise _missing(
            kind,
            f"{collateral.source} has no {qe_id} QE Identity; fetch it from Intel's PCS "
            f"({label.lower()}/certification/v4/qe/identity)",
        )
    identity = _current(identities, now, kind, f"{qe_id} QE Identity")
    _check_signed(identity.source, collateral, anchors, now, kind, f"{qe_id} QE Identity")
    qe_status, qe_advisories = _qe_status(quote, identity)
    tee_tcb_svn = quote.body.tee_tcb_svn if isinstance(quote.body, TdReport) else None
    level = platform_level(info, pck.cpusvn_components, pck.pcesvn, tee_tcb_svn)
    if level is None:
        raise EvidenceError(
            f"the {label} platform (FMSPC {pck.fmspc.hex()}, PCESVN {pck.pcesvn}) is below every "
            f"TCB level of the TCB Info (evaluation {info.evaluation_number}); update its "
            "microcode and BIOS",
            reason=Reason.TCB_OUT_OF_DATE,
            evidence_type=kind,
        )
    status, advisories = level.status, list(level.advisory_ids)
    if isinstance(quote.body, TdReport):
        module = _module_status(quote.body, info)
        if module is not None:
            status = worst(status, module[0])
            advisories += [a for a in module[1] if a not in advisories]
    platform_status = status
    status = worst(status, qe_status)
    advisories += [a for a in qe_advisories if a not in advisories]
    return DcapTcb(
        status=status,
        platform_status=platform_status,
        qe_status=qe_status,
        advisory_ids=tuple(advisories),
        tcb_date=level.date,
        evaluation_number=info.evaluation_number,
    )


def _qe_status(quote: DcapQuote, identity: QeIdentity) -> tuple[TcbStatus, tuple[str, ...]]:
    qe = quote.qe_report
    kind = quote.kind

    def mismatch(what: str) -> EvidenceError:
        return EvidenceError(
            f"the quoting enclave is not the one Intel's {identity.id} QE Identity names: {what}",
            reason=Reason.QE_IDENTITY_MISMATCH,
            evidence_type=kind,
        )

    if qe.mrsigner != identity.mrsigner:
        raise mismatch(f"MRSIGNER {qe.mrsigner.hex()[:16]}… is not {identity.mrsigner.hex()[:16]}…")
    if qe.isv_prod_id != identity.isv_prod_id:
        raise mismatch(f"ISVPRODID {qe.isv_prod_id} is not {identity.isv_prod_id}")
    if qe.miscselect & identity.miscselect_mask != identity.miscselect & identity.miscselect_mask:
        raise mismatch(f"MISCSELECT {qe.miscselect:#x} does not match under the mask")
    masked = bytes(a & m for a, m in zip(qe.attributes, identity.attributes_mask, strict=True))
    expected = bytes(
        a & m for a, m in zip(identity.attributes, identity.attributes_mask, strict=True)
    )
    if masked != expected or qe.debug:
        raise mismatch(f"ATTRIBUTES {qe.attributes.hex()} do not match under the mask")
    level = qe_level(identity, qe.isv_svn)
    if level is None:
        raise EvidenceError(
            f"the quoting enclave's ISVSVN {qe.isv_svn} is below every level of Intel's "
            f"{identity.id} QE Identity; update the platform's DCAP software",
            reason=Reason.TCB_OUT_OF_DATE,
            evidence_type=kind,
        )
    return level[0], level[2]


def _module_status(body: TdReport, info: TcbInfo) -> tuple[TcbStatus, tuple[str, ...]] | None:
    module = info.tdx_module
    isvsvn, major = body.tee_tcb_svn[0], body.tee_tcb_svn[1]
    levels: tuple[tuple[int, TcbStatus, tuple[str, ...]], ...] | None = None
    if major > 0 and info.tdx_module_identities:
        wanted = f"TDX_{major:02X}"
        module = next((m for m in info.tdx_module_identities if m.id.upper() == wanted), None)
        if module is None:
            raise _module_mismatch(f"the TCB Info names no TDX module identity {wanted}")
        levels = module.levels
    if module is None:
        return None
    if body.mrsignerseam != module.mrsigner:
        raise _module_mismatch(
            f"MRSIGNERSEAM {body.mrsignerseam.hex()[:16]}… is not {module.mrsigner.hex()[:16]}…"
        )
    for have, want, mask in zip(
        body.seam_attributes, module.attributes, module.attributes_mask, strict=True
    ):
        if have & mask != want & mask:
            raise _module_mismatch(f"SEAMATTRIBUTES {body.seam_attributes.hex()} do not match")
    if levels is None:
        return None
    for svn, status, advisories in levels:
        if isvsvn >= svn:
            return status, advisories
    raise EvidenceError(
        f"the TDX module's ISVSVN {isvsvn} is below every level Intel lists for {module.id}",
        reason=Reason.TCB_OUT_OF_DATE,
        evidence_type="tdx",
    )


_Dated = TypeVar("_Dated", TcbInfo, QeIdentity)


def _module_mismatch(what: str) -> EvidenceError:
    return EvidenceError(
        f"the TDX module is not one Intel's TCB Info names: {what}",
        reason=Reason.TDX_MODULE_MISMATCH,
        evidence_type="tdx",
    )


def _current(items: list[_Dated], now: datetime, kind: EvidenceType, what: str) -> _Dated:
    current = [i for i in items if i.issue_date <= now <= i.next_update]
    if current:
        return max(current, key=lambda i: i.issue_date)
    newest = max(items, key=lambda i: i.issue_date)
    raise EvidenceError(
        f"the {what} is valid from {newest.issue_date.isoformat()} to "
        f"{newest.next_update.isoformat()}, not at {now.isoformat()}; fetch a current one",
        reason=Reason.COLLATERAL_EXPIRED,
        evidence_type=kind,
    )


def _check_signed(
    signed: SignedJson,
    collateral: Collateral,
    anchors: frozenset[str],
    now: datetime,
    kind: EvidenceType,
    what: str,
) -> None:
    for cert in collateral.certificates:
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not _ecdsa_ok(
            key, signed.signature, signed.signed
        ):
            continue
        try:
            build_chain(
                cert,
                collateral.certificates,
                anchors=anchors,
                now=now,
                kind=kind,
                what=f"the {what}'s signing certificate",
                crls=collateral.crls,
            )
        except EvidenceError as err:
            raise EvidenceError(
                str(err), reason=Reason.COLLATERAL_INVALID, evidence_type=kind
            ) from None
        return
    raise EvidenceError(
        f"the {what} in {collateral.source} is not signed by any certificate there (put its "
        "issuer chain, the TCB Signing certificate, beside it) or was altered",
        reason=Reason.COLLATERAL_INVALID,
        evidence_type=kind,
    )


def _ecdsa_ok(key: ec.EllipticCurvePublicKey, raw_sig: bytes, data: bytes) -> bool:
    if len(raw_sig) != 64:
        return False
    r, s = int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _missing(kind: EvidenceType, message: str) -> EvidenceError:
    return EvidenceError(message, reason=Reason.COLLATERAL_MISSING, evidence_type=kind)
