"""Intel TDX: the TD report body a DCAP quote version 4 (or 5) carries.

`parse_td_report` decodes the TD quote body of the Intel TDX DCAP Quoting Library API ("TD
Quote Body", 584 bytes; the TDX 1.5 body of a version-5 quote adds TEE_TCB_SVN2 and
MRSERVICETD, 648 bytes): TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, SEAMATTRIBUTES, TDATTRIBUTES (bit 0:
DEBUG), XFAM, MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0-3 and REPORTDATA. Pure and
total: `TdReport` or `EvidenceError(QUOTE_MALFORMED)`.

`reference_values` names the fields the way the policy does (``mrtd``, ``rtmr0``..``rtmr3``,
``mrconfigid``, ``mrowner``, ``mrownerconfig``).
"""

from __future__ import annotations

from dataclasses import dataclass

from netshield.attestation.evidence.binary import malformed
from netshield.attestation.evidence.claims import RefValue

TD10_SIZE = 584
TD15_SIZE = 648
TD_ATTR_DEBUG = 0x01


@dataclass(frozen=True, slots=True)
class TdReport:
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None
    mrservicetd: bytes | None
    raw: bytes

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & TD_ATTR_DEBUG)


def parse_td_report(data: bytes) -> TdReport:
    if len(data) not in (TD10_SIZE, TD15_SIZE):
        raise malformed(
            "tdx", f"TD report body is {len(data)} bytes, not {TD10_SIZE} or {TD15_SIZE}"
        )
    at = 0

    def take(size: int) -> bytes:
        nonlocal at
        chunk = data[at : at + size]
        at += size
        return chunk

    tee_tcb_svn, mrseam, mrsignerseam = take(16), take(48), take(48)
    seam_attributes, td_attributes, xfam = take(8), take(8), take(8)
    mrtd, mrconfigid, mrowner, mrownerconfig = take(48), take(48), take(48), take(48)
    rtmrs = (take(48), take(48), take(48), take(48))
    report_data = take(64)
    tee_tcb_svn2 = take(16) if len(data) == TD15_SIZE else None
    mrservicetd = take(48) if len(data) == TD15_SIZE else None
    return TdReport(
        tee_tcb_svn=tee_tcb_svn,
        mrseam=mrseam,
        mrsignerseam=mrsignerseam,
        seam_attributes=seam_attributes,
        td_attributes=td_attributes,
        xfam=xfam,
        mrtd=mrtd,
        mrconfigid=mrconfigid,
        mrowner=mrowner,
        mrownerconfig=mrownerconfig,
        rtmrs=rtmrs,
        report_data=report_data,
        tee_tcb_svn2=tee_tcb_svn2,
        mrservicetd=mrservicetd,
        raw=bytes(data),
    )


def reference_values(body: TdReport) -> dict[str, RefValue]:
    values: dict[str, RefValue] = {"mrtd": body.mrtd.hex()}
    values.update({f"rtmr{i}": r.hex() for i, r in enumerate(body.rtmrs)})
    values.update(
        mrconfigid=body.mrconfigid.hex(),
        mrowner=body.mrowner.hex(),
        mrownerconfig=body.mrownerconfig.hex(),
    )
    return values


def body_claims(body: TdReport) -> dict[str, object]:
    claims: dict[str, object] = dict(reference_values(body))
    claims.update(
        td_attributes=body.td_attributes.hex(),
        debug=body.debug,
        xfam=body.xfam.hex(),
        tee_tcb_svn=body.tee_tcb_svn.hex(),
        mrseam=body.mrseam.hex(),
        mrsignerseam=body.mrsignerseam.hex(),
        seam_attributes=body.seam_attributes.hex(),
    )
    if body.mrservicetd is not None:
        claims["mrservicetd"] = body.mrservicetd.hex()
        claims["tee_tcb_svn2"] = (body.tee_tcb_svn2 or b"").hex()
    return claims
