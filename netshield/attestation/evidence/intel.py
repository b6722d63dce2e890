"""Intel's DCAP collateral: TCB Info and QE Identity, their signatures, and TCB evaluation.

Collateral is what Intel's Provisioning Certification Service (PCS) publishes and an operator
fetches ahead of time; nothing here goes to the network. A `TcbInfo` (``{"tcbInfo": …,
"signature": …}``, version 2 or 3, id ``SGX`` or ``TDX``) lists, per FMSPC, TCB levels from the
newest down with their status; an `QeIdentity` (``{"enclaveIdentity": …}``, id ``QE`` or
``TD_QE``) says which quoting enclave is genuine and how current its SVN is. Each is signed
(ECDSA P-256 over the exact bytes of the inner JSON object) by Intel's TCB Signing key, whose
certificate chains to the SGX Root CA.

`parse_signed_json` keeps the exact signed bytes (never a re-encoding); `parse_tcb_info` and
`parse_qe_identity` raise ValueError for anything off-schema. `platform_status` and `qe_status`
implement Intel's matching (the first level whose SGX components, PCESVN and, for TDX, TDX
components the platform meets; the first QE level whose ISVSVN the QE meets), and `worst`
merges statuses by severity as Intel's QVL does. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from netshield.attestation.evidence.claims import TCB_STATUSES, TcbStatus


@dataclass(frozen=True, slots=True)
class SignedJson:
    """A signed collateral object: the exact signed bytes, the raw r‖s signature, the value."""

    signed: bytes
    signature: bytes
    value: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TcbLevel:
    sgx_components: tuple[int, ...]
    pcesvn: int
    tdx_components: tuple[int, ...] | None
    status: TcbStatus
    date: str | None
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModuleIdentity:
    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[tuple[int, TcbStatus, tuple[str, ...]], ...]  # (isvsvn, status, advisories)


@dataclass(frozen=True, slots=True)
class TcbInfo:
    id: str  # "SGX" or "TDX"
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    evaluation_number: int | None
    levels: tuple[TcbLevel, ...]
    tdx_module: ModuleIdentity | None
    tdx_module_identities: tuple[ModuleIdentity, ...]
    source: SignedJson


@dataclass(frozen=True, slots=True)
class QeIdentity:
    id: str  # "QE" (SGX) or "TD_QE" (TDX)
    version: int
    issue_date: datetime
    next_update: datetime
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isv_prod_id: int
    levels: tuple[tuple[int, TcbStatus, str | None, tuple[str, ...]], ...]
    source: SignedJson


def parse_signed_json(data: bytes, key: str) -> SignedJson:
    """``{"<key>": {...}, "signature": "<hex>"}`` with the exact bytes of the inner object."""
    text = data.decode("utf-8")
    decoder = json.JSONDecoder()
    pos = _skip(text, 0)
    if text[pos : pos + 1] != "{":
        raise ValueError("not a JSON object")
    pos = _skip(text, pos + 1)
    spans: dict[str, tuple[int, int, Any]] = {}
    while text[pos : pos + 1] != "}":
        name, pos = decoder.raw_decode(text, pos)
        pos = _skip(text, pos)
        if not isinstance(name, str) or text[pos : pos + 1] != ":":
            raise ValueError("bad JSON member")
        start = _skip(text, pos + 1)
        value, end = decoder.raw_decode(text, start)
        if name in spans:
            raise ValueError(f"duplicate key {name!r}")
        spans[name] = (start, end, value)
        pos = _skip(text, end)
        if text[pos : pos + 1] == ",":
            pos = _skip(text, pos + 1)
    if _skip(text, pos + 1) != len(text):
        raise ValueError("trailing data after the JSON object")
    if set(spans) != {key, "signature"}:
        raise ValueError(f"expected the keys {key!r} and 'signature'")
    start, end, value = spans[key]
    signature = spans["signature"][2]
    if not isinstance(value, dict) or not isinstance(signature, str):
        raise ValueError("bad signed collateral")
    return SignedJson(text[start:end].encode("utf-8"), _hex(signature, 64), value)


def signed_from_parts(body: str, signature_hex: str) -> SignedJson:
    """A signed object given as its exact text and hex signature (collateral bundles)."""
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return SignedJson(body.encode("utf-8"), _hex(signature_hex, 64), value)


def parse_tcb_info(source: SignedJson) -> TcbInfo:
    v = source.value
    kind = _str(v, "id") if "id" in v else "SGX"
    version = _int(v, "version")
    if kind not in ("SGX", "TDX") or version not in (2, 3):
        raise ValueError(f"TCB Info {kind!r} version {version} is not supported")
    levels = []
    for raw in _list(v, "tcbLevels"):
        tcb = _dict(raw, "tcb")
        if version == 2:
            sgx = tuple(_int(tcb, f"sgxtcbcomp{i:02d}svn") for i in range(1, 17))
            tdx = None
        else:
            sgx = tuple(_int(c, "svn") for c in _list(tcb, "sgxtcbcomponents"))
            tdx_raw = tcb.get("tdxtcbcomponents")
            tdx = tuple(_int(c, "svn") for c in tdx_raw) if isinstance(tdx_raw, list) else None
        if len(sgx) != 16 or (tdx is not None and len(tdx) != 16):
            raise ValueError("a TCB level does not have 16 components")
        if kind == "TDX" and tdx is None:
            raise ValueError("a TDX TCB level lacks tdxtcbcomponents")
        levels.append(
            TcbLevel(
                sgx_components=sgx,
                pcesvn=_int(tcb, "pcesvn"),
                tdx_components=tdx,
                status=_status(raw.get("tcbStatus")),
                date=raw.get("tcbDate") if isinstance(raw.get("tcbDate"), str) else None,
                advisory_ids=tuple(str(a) for a in raw.get("advisoryIDs", []) or []),
            )
        )
    module = _module(v["tdxModule"], "TDX_00") if isinstance(v.get("tdxModule"), dict) else None
    identities = tuple(_module(m, _str(m, "id")) for m in v.get("tdxModuleIdentities", []) or [])
    number = v.get("tcbEvaluationDataNumber")
    return TcbInfo(
        id=kind,
        version=version,
        issue_date=_time(v, "issueDate"),
        next_update=_time(v, "nextUpdate"),
        fmspc=_hex(_str(v, "fmspc"), 6),
        pce_id=_hex(_str(v, "pceId"), 2),
        evaluation_number=number if isinstance(number, int) else None,
        levels=tuple(levels),
        tdx_module=module,
        tdx_module_identities=identities,
        source=source,
    )


def parse_qe_identity(source: SignedJson) -> QeIdentity:
    v = source.value
    levels = []
    for raw in _list(v, "tcbLevels"):
        levels.append(
            (
                _int(_dict(raw, "tcb"), "isvsvn"),
                _status(raw.get("tcbStatus")),
                raw.get("tcbDate") if isinstance(raw.get("tcbDate"), str) else None,
                tuple(str(a) for a in raw.get("advisoryIDs", []) or []),
            )
        )
    return QeIdentity(
        id=_str(v, "id"),
        version=_int(v, "version"),
        issue_date=_time(v, "issueDate"),
        next_update=_time(v, "nextUpdate"),
        miscselect=int.from_bytes(_hex(_str(v, "miscselect"), 4), "big"),
        miscselect_mask=int.from_bytes(_hex(_str(v, "miscselectMask"), 4), "big"),
        attributes=_hex(_str(v, "attributes"), 16),
        attributes_mask=_hex(_str(v, "attributesMask"), 16),
        mrsigner=_hex(_str(v, "mrsigner"), 32),
        isv_prod_id=_int(v, "isvprodid"),
        levels=tuple(levels),
        source=source,
    )


def severity(status: TcbStatus) -> int:
    return TCB_STATUSES.index(status)


def worst(a: TcbStatus, b: TcbStatus) -> TcbStatus:
    return a if severity(a) >= severity(b) else b


def platform_level(
    info: TcbInfo,
    cpusvn_components: Sequence[int],
    pcesvn: int,
    tee_tcb_svn: bytes | None,
) -> TcbLevel | None:
    """The first (newest) TCB level the platform meets; None if it meets none."""
    for level in info.levels:
        if pcesvn < level.pcesvn:
            continue
        if any(
            have < need for have, need in zip(cpusvn_components, level.sgx_components, strict=True)
        ):
            continue
        # TDX: TEE_TCB_SVN against the TDX components, all 16 as Intel's QVL compares them.
        if (
            tee_tcb_svn is not None
            and level.tdx_components is not None
            and any(
                have < need for have, need in zip(tee_tcb_svn, level.tdx_components, strict=True)
            )
        ):
            continue
        return level
    return None


def qe_level(
    identity: QeIdentity, isv_svn: int
) -> tuple[TcbStatus, str | None, tuple[str, ...]] | None:
    for svn, status, date, advisories in identity.levels:
        if isv_svn >= svn:
            return status, date, advisories
    return None


def _module(raw: dict[str, Any], default_id: str) -> ModuleIdentity:
    levels = tuple(
        (
            _int(_dict(level, "tcb"), "isvsvn"),
            _status(level.get("tcbStatus")),
            tuple(str(a) for a in level.get("advisoryIDs", []) or []),
        )
        for level in raw.get("tcbLevels", []) or []
    )
    return ModuleIdentity(
        id=str(raw.get("id", default_id)),
        mrsigner=_hex(_str(raw, "mrsigner"), 48),
        attributes=_hex(_str(raw, "attributes"), 8),
        attributes_mask=_hex(_str(raw, "attributesMask"), 8),
        levels=levels,
    )


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _hex(text: str, size: int) -> bytes:
    value = bytes.fromhex(text)
    if len(value) != size:
        raise ValueError(f"expected {size} bytes of hex, got {len(value)}")
    return value


def _str(obj: object, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


def _int(obj: object, key: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} is not a non-negative integer")
    return value


def _list(obj: object, key: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a list")
    return value


def _dict(obj: object, key: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, dict):
        raise ValueError(f"{key} is not an object")
    return value


def _status(value: object) -> TcbStatus:
    for status in TCB_STATUSES:
        if value == status:
            return status
    raise ValueError(f"unknown TCB status {value!r}")


def _time(obj: object, key: str) -> datetime:
    text = _str(obj, key)
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{key} has no time zone")
    return value
