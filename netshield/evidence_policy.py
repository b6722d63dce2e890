"""The policy's part for hardware evidence: which types a service accepts, and their values.

A service lists under ``evidence`` the hardware evidence types it accepts, each with the
reference values that stand for its approved build; the simulated platform's values stay where
they always were (``measurements``, ``signer``, ``product_id``, ``min_svn``), so existing
policies mean what they meant. The platform rules per type sit beside ``platforms.min_tcb``::

    platforms:
      sev-snp: {min_tcb: {bootloader: 3, tee: 0, snp: 8, microcode: 115}}
      sgx: {accepted_tcb_statuses: [UpToDate, SWHardeningNeeded]}
      tdx: {accepted_tcb_statuses: [UpToDate]}
    services:
      orders:
        evidence:
          sev-snp: {measurements: [<96 hex>], host_data: <64 hex>}
          sgx: {mrsigner: <64 hex>, product_id: 1, min_svn: 3}   # or mrenclave: [<64 hex>]
          tdx: {mrtd: [<96 hex>], rtmr1: [<96 hex>], accepted_tcb_statuses: [UpToDate]}

A service may override its platform rules (``min_tcb``, ``accepted_tcb_statuses``) and
``allow_debug`` per type. ``Revoked`` can never be accepted. This module holds the shapes
(`Record`s for `netshield.policy.POLICY_SPEC`) and the frozen values built from them. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from netshield.schema import Bool, Field, Int, ListOf, Record, Str

EVIDENCE_TYPES = ("sim", "sev-snp", "sgx", "tdx")
HARDWARE_TYPES = ("sev-snp", "sgx", "tdx")
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
ACCEPTABLE_STATUSES = TCB_STATUSES[:-1]
DEFAULT_ACCEPTED = ("UpToDate",)
SNP_TCB_PARTS = ("bootloader", "tee", "snp", "microcode", "fmc")
_U32_MAX = 2**32 - 1
_U16_MAX = 2**16 - 1


def _hex_problem(size: int, what: str) -> Any:
    pattern = re.compile(f"[0-9a-f]{{{2 * size}}}")

    def problem(value: str) -> str | None:
        if pattern.fullmatch(value):
            return None
        if pattern.fullmatch(value.lower()):
            return f"not {what} (hex must be lower-case)"
        return f"not {what} (expected {2 * size} hex characters)"

    return problem


HEX48 = Str(
    expected="a 48-byte digest (96 hex characters)",
    validators=(_hex_problem(48, "a 48-byte digest"),),
)
HEX32 = Str(
    expected="a 32-byte value (64 hex characters)",
    validators=(_hex_problem(32, "a 32-byte value"),),
)


class OptionalList(ListOf):
    """A list whose absence is None, so a non-empty list is only required when present."""

    def empty(self) -> object:
        return None


class OptionalRecord(Record):
    """A sub-record whose absence is None (the type is not accepted), not its defaults."""

    def empty(self) -> object:
        return None


_STATUSES = OptionalList(
    Str(
        expected="an Intel TCB status",
        choices=ACCEPTABLE_STATUSES,
    ),
    expected=f"a list of TCB statuses ({', '.join(ACCEPTABLE_STATUSES)}; Revoked is never accepted)",
    non_empty=True,
)
_SNP_TCB = Record(
    {name: Field(Int(min=0, max=255), default=0) for name in SNP_TCB_PARTS},
    expected="an SEV-SNP TCB (bootloader, tee, snp, microcode, fmc: 0..255)",
)
_DEBUG = Field(Bool())

SNP_REFERENCE = OptionalRecord(
    {
        "measurements": Field(
            ListOf(HEX48, expected="a list of SEV-SNP launch measurements", non_empty=True),
            required=True,
        ),
        "host_data": Field(HEX32),
        "id_key_digest": Field(HEX48),
        "min_guest_svn": Field(Int(min=0, max=_U32_MAX), default=0),
        "min_tcb": Field(OptionalRecord(_SNP_TCB.fields, expected=_SNP_TCB.expected)),
        "allow_debug": _DEBUG,
    },
    expected="SEV-SNP reference values (measurements, host_data, min_tcb, ...)",
)
SGX_REFERENCE = OptionalRecord(
    {
        "mrenclave": Field(
            OptionalList(HEX32, expected="a list of MRENCLAVE values", non_empty=True)
        ),
        "mrsigner": Field(HEX32),
        "product_id": Field(Int(min=0, max=_U16_MAX)),
        "min_svn": Field(Int(min=0, max=_U16_MAX), default=0),
        "accepted_tcb_statuses": Field(_STATUSES),
        "allow_debug": _DEBUG,
    },
    expected="SGX reference values (mrenclave, or mrsigner with product_id and min_svn)",
)
TDX_REFERENCE = OptionalRecord(
    {
        "mrtd": Field(
            ListOf(HEX48, expected="a list of MRTD values", non_empty=True), required=True
        ),
        **{
            f"rtmr{i}": Field(
                OptionalList(HEX48, expected=f"a list of RTMR{i} values", non_empty=True)
            )
            for i in range(4)
        },
        "mrconfigid": Field(
            OptionalList(HEX48, expected="a list of MRCONFIGID values", non_empty=True)
        ),
        "accepted_tcb_statuses": Field(_STATUSES),
        "allow_debug": _DEBUG,
    },
    expected="TDX reference values (mrtd, rtmr0..rtmr3, mrconfigid, ...)",
)
SERVICE_EVIDENCE = OptionalRecord(
    {"sev-snp": Field(SNP_REFERENCE), "sgx": Field(SGX_REFERENCE), "tdx": Field(TDX_REFERENCE)},
    expected="the hardware evidence types this service accepts (sev-snp, sgx, tdx)",
)
PLATFORM_EVIDENCE = {
    "sev-snp": Field(
        Record({"min_tcb": Field(_SNP_TCB)}, expected="SEV-SNP platform rules (min_tcb)")
    ),
    "sgx": Field(
        Record(
            {"accepted_tcb_statuses": Field(_STATUSES, default=list(DEFAULT_ACCEPTED))},
            expected="SGX platform rules (accepted_tcb_statuses)",
        )
    ),
    "tdx": Field(
        Record(
            {"accepted_tcb_statuses": Field(_STATUSES, default=list(DEFAULT_ACCEPTED))},
            expected="TDX platform rules (accepted_tcb_statuses)",
        )
    ),
}
"""Keys added to ``platforms``."""


@dataclass(frozen=True)
class SnpReference:
    measurements: frozenset[str]
    host_data: str | None = None
    id_key_digest: str | None = None
    min_guest_svn: int = 0
    min_tcb: Mapping[str, int] | None = None
    allow_debug: bool | None = None


@dataclass(frozen=True)
class SgxReference:
    mrenclave: frozenset[str] | None = None
    mrsigner: str | None = None
    product_id: int | None = None
    min_svn: int = 0
    accepted_tcb_statuses: frozenset[str] | None = None
    allow_debug: bool | None = None


@dataclass(frozen=True)
class TdxReference:
    mrtd: frozenset[str]
    registers: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    """rtmr0..rtmr3 and mrconfigid, where the policy names allowed values."""
    accepted_tcb_statuses: frozenset[str] | None = None
    allow_debug: bool | None = None


Reference = SnpReference | SgxReference | TdxReference


@dataclass(frozen=True)
class PlatformEvidenceRules:
    snp_min_tcb: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(SNP_TCB_PARTS, 0))
    )
    sgx_accepted: frozenset[str] = frozenset(DEFAULT_ACCEPTED)
    tdx_accepted: frozenset[str] = frozenset(DEFAULT_ACCEPTED)


def reference_problems(path: str, evidence: object) -> list[tuple[str, str]]:
    """Cross-key checks of a service's ``evidence`` (key path, message)."""
    problems: list[tuple[str, str]] = []
    if not isinstance(evidence, dict):
        return problems
    sgx = evidence.get("sgx")
    if isinstance(sgx, dict):
        if not sgx.get("mrenclave") and sgx.get("mrsigner") is None:
            problems.append((f"{path}.sgx", "needs mrenclave, or mrsigner (with product_id)"))
        if sgx.get("mrsigner") is not None and sgx.get("product_id") is None:
            problems.append(
                (
                    f"{path}.sgx.product_id",
                    "required with mrsigner (any enclave of that signer would do otherwise)",
                )
            )
    return problems


def build_references(raw: dict[str, Any] | None) -> Mapping[str, Reference]:
    if not raw:
        return MappingProxyType({})
    refs: dict[str, Reference] = {}
    snp, sgx, tdx = raw.get("sev-snp"), raw.get("sgx"), raw.get("tdx")
    if snp is not None:
        refs["sev-snp"] = SnpReference(
            measurements=frozenset(snp["measurements"]),
            host_data=snp["host_data"],
            id_key_digest=snp["id_key_digest"],
            min_guest_svn=snp["min_guest_svn"],
            min_tcb=MappingProxyType(dict(snp["min_tcb"])) if snp["min_tcb"] is not None else None,
            allow_debug=snp["allow_debug"],
        )
    if sgx is not None:
        refs["sgx"] = SgxReference(
            mrenclave=frozenset(sgx["mrenclave"]) if sgx["mrenclave"] else None,
            mrsigner=sgx["mrsigner"],
            product_id=sgx["product_id"],
            min_svn=sgx["min_svn"],
            accepted_tcb_statuses=_statuses(sgx["accepted_tcb_statuses"]),
            allow_debug=sgx["allow_debug"],
        )
    if tdx is not None:
        registers = {
            name: frozenset(tdx[name])
            for name in ("rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid")
            if tdx[name]
        }
        refs["tdx"] = TdxReference(
            mrtd=frozenset(tdx["mrtd"]),
            registers=MappingProxyType(registers),
            accepted_tcb_statuses=_statuses(tdx["accepted_tcb_statuses"]),
            allow_debug=tdx["allow_debug"],
        )
    return MappingProxyType(refs)


def build_platform_rules(platforms: dict[str, Any]) -> PlatformEvidenceRules:
    return PlatformEvidenceRules(
        snp_min_tcb=MappingProxyType(dict(platforms["sev-snp"]["min_tcb"])),
        sgx_accepted=frozenset(platforms["sgx"]["accepted_tcb_statuses"]),
        tdx_accepted=frozenset(platforms["tdx"]["accepted_tcb_statuses"]),
    )


def _statuses(value: list[str] | None) -> frozenset[str] | None:
    return frozenset(value) if value else None
