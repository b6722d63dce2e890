"""What a verified piece of attestation evidence says, whatever hardware produced it.

Every evidence verifier (`sim`, `snp`, `sgx`, `tdx`) ends in one `VerifiedEvidence`: the
evidence type, the platform it came from (as certified by the vendor chain), whether the
workload runs in debug mode, the report data it binds, the platform's TCB (a simulated level,
an SEV-SNP TCB version or an Intel TCB status), and the workload's reference values under the
names the policy uses for them (``measurement``; ``mrenclave``/``mrsigner``; ``mrtd``/``rtmr0``
…). The appraisal against policy reads only this value, so it is one step for every type.

`EvidenceError` is the `QuoteError` a verifier raises: it names the evidence type as well as the
reason code, so the audit log and `netshield explain` can say which check failed for which type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

from cryptography import x509

from netshield.errors import QuoteError
from netshield.evidence_policy import EVIDENCE_TYPES as POLICY_EVIDENCE_TYPES
from netshield.evidence_policy import SNP_TCB_PARTS as POLICY_SNP_TCB_PARTS
from netshield.evidence_policy import TCB_STATUSES as STATUS_NAMES
from netshield.reasons import Reason

EvidenceType = Literal["sim", "sev-snp", "sgx", "tdx"]
EVIDENCE_TYPES = cast(tuple[EvidenceType, ...], POLICY_EVIDENCE_TYPES)
EVIDENCE_NAMES: Mapping[EvidenceType, str] = MappingProxyType(
    {
        "sim": "simulated platform quote (netshield-sim-quote/1)",
        "sev-snp": "AMD SEV-SNP attestation report",
        "sgx": "Intel SGX DCAP quote",
        "tdx": "Intel TDX DCAP quote",
    }
)

TcbStatus = Literal[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
]
TCB_STATUSES = cast(tuple[TcbStatus, ...], STATUS_NAMES)
"""Intel's TCB statuses, best first: the order is their severity."""


class EvidenceError(QuoteError):
    """Evidence that could not be decoded or verified, with the type it was (when known)."""

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        evidence_type: EvidenceType | None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason, hint=hint)
        self.evidence_type = evidence_type


@dataclass(frozen=True, slots=True)
class SimTcb:
    """The simulated platform's TCB level (certified in its platform certificate)."""

    level: int

    def describe(self) -> str:
        return f"TCB level {self.level}"

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level}


SNP_TCB_PARTS = POLICY_SNP_TCB_PARTS


@dataclass(frozen=True, slots=True)
class SnpTcb:
    """An SEV-SNP TCB_VERSION: the security patch levels of each firmware component.

    `fmc` exists on Turin and later only (None before)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def parts(self) -> dict[str, int]:
        values = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            values["fmc"] = self.fmc
        return values

    def below(self, minimum: Mapping[str, int]) -> list[str]:
        """The components below `minimum` (missing components count as 0), as sentences."""
        mine = self.parts()
        return [
            f"{name} {mine.get(name, 0)} < {want}"
            for name, want in minimum.items()
            if mine.get(name, 0) < want
        ]

    def describe(self) -> str:
        return "TCB " + " ".join(f"{k}={v}" for k, v in self.parts().items())

    def to_json(self) -> dict[str, Any]:
        return self.parts()


@dataclass(frozen=True, slots=True)
class DcapTcb:
    """The TCB status Intel's collateral gives this platform and quoting enclave."""

    status: TcbStatus
    platform_status: TcbStatus
    qe_status: TcbStatus
    advisory_ids: tuple[str, ...] = ()
    tcb_date: str | None = None
    evaluation_number: int | None = None

    def describe(self) -> str:
        advisories = f" (advisories {', '.join(self.advisory_ids)})" if self.advisory_ids else ""
        return f"TCB status {self.status}{advisories}"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "platform_status": self.platform_status,
            "qe_status": self.qe_status,
            "advisory_ids": list(self.advisory_ids),
            "tcb_date": self.tcb_date,
            "tcb_evaluation_data_number": self.evaluation_number,
        }


Tcb = SimTcb | SnpTcb | DcapTcb
RefValue = str | int


@dataclass(frozen=True)
class VerifiedEvidence:
    """Evidence whose signature chains to a trusted vendor root, as of the `now` it was
    verified at. `report_data` is the bytes the hardware bound (32 for the simulated platform,
    64 for SEV-SNP, SGX and TDX); `measurement` is the headline measurement (the simulated
    measurement, the SNP launch measurement, MRENCLAVE or MRTD) in lower-case hex; `values`
    holds the reference values by their policy names; `claims` everything else, JSON-able."""

    evidence_type: EvidenceType
    platform_id: str
    debug: bool
    report_data: bytes
    measurement: str
    tcb: Tcb
    values: Mapping[str, RefValue] = field(default_factory=lambda: MappingProxyType({}))
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    chain: tuple[x509.Certificate, ...] = field(default=(), compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "evidence_type": self.evidence_type,
            "platform_id": self.platform_id,
            "debug": self.debug,
            "report_data": self.report_data.hex(),
            "measurement": self.measurement,
            "tcb": self.tcb.to_json(),
            "values": dict(self.values),
            "claims": dict(self.claims),
            "chain": [c.subject.rfc4514_string() for c in self.chain],
        }
