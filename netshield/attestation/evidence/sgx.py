"""Intel SGX: the enclave REPORT body a DCAP quote (version 3, or 4 with TEE type SGX) carries.

`parse_report_body` decodes the 384-byte SGX REPORTBODY (Intel SDM vol. 3D, "REPORT"; Intel
SGX ECDSA Quote Library API, "Enclave Report Body"): CPUSVN, MISCSELECT, ISVEXTPRODID,
ATTRIBUTES (flags bit 1: DEBUG), MRENCLAVE, MRSIGNER, CONFIGID, ISVPRODID, ISVSVN, CONFIGSVN,
ISVFAMILYID and REPORTDATA. The same layout is the quoting enclave's own report inside every
DCAP quote. Pure and total: `SgxReportBody` or `EvidenceError(QUOTE_MALFORMED)`.

`reference_values` names the fields the way the policy does (``mrenclave``, ``mrsigner``,
``product_id``, ``svn``); `dcap.verify_quote` does the verification for SGX and TDX alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from netshield.attestation.evidence.binary import malformed, u16, u32, u64
from netshield.attestation.evidence.claims import EvidenceType, RefValue

REPORT_BODY_SIZE = 384
ATTR_DEBUG = 0x02
ATTR_MODE64 = 0x04
ATTR_PROVISION_KEY = 0x10


@dataclass(frozen=True, slots=True)
class SgxReportBody:
    cpusvn: bytes
    miscselect: int
    isv_ext_prod_id: bytes
    attributes: bytes  # 16 bytes: flags (u64 LE) then XFRM (u64 LE)
    mrenclave: bytes
    mrsigner: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes
    raw: bytes

    @property
    def flags(self) -> int:
        return u64(self.attributes, 0)

    @property
    def debug(self) -> bool:
        return bool(self.flags & ATTR_DEBUG)


def parse_report_body(
    data: bytes, kind: EvidenceType = "sgx", what: str = "SGX report body"
) -> SgxReportBody:
    if len(data) != REPORT_BODY_SIZE:
        raise malformed(kind, f"{what} is {len(data)} bytes, not {REPORT_BODY_SIZE}")
    return SgxReportBody(
        cpusvn=data[0:16],
        miscselect=u32(data, 16),
        isv_ext_prod_id=data[32:48],
        attributes=data[48:64],
        mrenclave=data[64:96],
        mrsigner=data[128:160],
        config_id=data[192:256],
        isv_prod_id=u16(data, 256),
        isv_svn=u16(data, 258),
        config_svn=u16(data, 260),
        isv_family_id=data[304:320],
        report_data=data[320:384],
        raw=bytes(data),
    )


def reference_values(body: SgxReportBody) -> dict[str, RefValue]:
    return {
        "mrenclave": body.mrenclave.hex(),
        "mrsigner": body.mrsigner.hex(),
        "product_id": body.isv_prod_id,
        "svn": body.isv_svn,
        "config_id": body.config_id.hex(),
        "config_svn": body.config_svn,
    }


def body_claims(body: SgxReportBody) -> dict[str, object]:
    return {
        "mrenclave": body.mrenclave.hex(),
        "mrsigner": body.mrsigner.hex(),
        "isv_prod_id": body.isv_prod_id,
        "isv_svn": body.isv_svn,
        "attributes": body.attributes.hex(),
        "debug": body.debug,
        "miscselect": f"{body.miscselect:#010x}",
        "cpusvn": body.cpusvn.hex(),
        "config_id": body.config_id.hex(),
        "config_svn": body.config_svn,
        "isv_ext_prod_id": body.isv_ext_prod_id.hex(),
        "isv_family_id": body.isv_family_id.hex(),
    }
