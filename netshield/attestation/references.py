"""Reference values: does the workload the evidence describes match the policy's approved build?

One function per evidence type, each comparing `VerifiedEvidence.values` with the service's
reference values and returning the first mismatch as (reason, sentence), or None:

- ``sim``: measurement ∈ measurements, signer, product id, svn ≥ min_svn (as before);
- ``sev-snp``: launch measurement ∈ measurements, host_data, ID key digest, guest SVN;
- ``sgx``: MRENCLAVE ∈ mrenclave, or MRSIGNER + ISVPRODID + ISVSVN ≥ min_svn (MarbleRun's
  UniqueID / SignerID + ProductID + SecurityVersion);
- ``tdx``: MRTD ∈ mrtd and every RTMR / MRCONFIGID the policy lists.

Pure; the appraisal calls it last, once the evidence type is known to be accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from netshield.attestation.evidence.claims import RefValue, VerifiedEvidence
from netshield.evidence_policy import SgxReference, SnpReference, TdxReference
from netshield.policy import ServicePolicy
from netshield.reasons import Reason

Problem = tuple[Reason, str]
Values = Mapping[str, RefValue]


def short(value: str) -> str:
    """A digest shortened for a sentence: 3f2a…9c."""
    return f"{value[:4]}…{value[-2:]}" if len(value) > 8 else value


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def reference_problem(svc: ServicePolicy, evidence: VerifiedEvidence, key: str) -> Problem | None:
    kind, values = evidence.evidence_type, evidence.values
    if kind == "sim":
        return _sim(svc, values, key)
    ref = svc.evidence.get(kind)
    where = f"{key}.evidence.{kind}"
    if isinstance(ref, SnpReference):
        return _snp(ref, values, where)
    if isinstance(ref, SgxReference):
        return _sgx(ref, values, where)
    if isinstance(ref, TdxReference):
        return _tdx(ref, values, where)
    return Reason.EVIDENCE_TYPE_NOT_ACCEPTED, f"{key} has no reference values for {kind}"


def _str(values: Values, name: str) -> str:
    value = values.get(name)
    return value if isinstance(value, str) else ""


def _int(values: Values, name: str) -> int:
    value = values.get(name)
    return value if isinstance(value, int) else -1


@dataclass(frozen=True)
class _Labels:
    """How sentences name a signed-build identity's fields (simulated platform or SGX)."""

    measurement: str
    value: str  # the name of the measurement in VerifiedEvidence.values
    measurements_key: str
    noun: str
    signer: str
    signer_key: str
    product: str
    svn: str
    build: str


_SIM = _Labels(
    "measurement",
    "measurement",
    "measurements",
    "measurement",
    "signer",
    "signer",
    "product id",
    "svn",
    "build",
)
_SGX = _Labels(
    "SGX MRENCLAVE",
    "mrenclave",
    "mrenclave",
    "enclave",
    "SGX MRSIGNER",
    "mrsigner",
    "SGX ISVPRODID",
    "SGX ISVSVN",
    "enclave",
)


def _signed_build(
    labels: _Labels,
    values: Values,
    where: str,
    *,
    allowed: frozenset[str] | None,
    signer: str | None,
    product_id: int | None,
    min_svn: int,
) -> Problem | None:
    """Measurement ∈ allowed (when listed), then signer, product id, svn ≥ min_svn: the identity
    of a build its author signed, as the simulated platform and SGX report it."""
    measurement, got_signer = _str(values, labels.value), _str(values, labels.signer_key)
    product, svn = _int(values, "product_id"), _int(values, "svn")
    if allowed is not None and measurement not in allowed:
        return (
            Reason.MEASUREMENT_NOT_ALLOWED,
            f"{labels.measurement} {short(measurement)} is not in {where}.{labels.measurements_key} "
            f"(policy allows {_plural(len(allowed), labels.noun)})",
        )
    if signer is not None and got_signer != signer:
        return (
            Reason.SIGNER_NOT_ALLOWED,
            f"{labels.signer} {short(got_signer)} is not {where}.{labels.signer_key} ({short(signer)})",
        )
    if product_id is not None and product != product_id:
        return (
            Reason.PRODUCT_NOT_ALLOWED,
            f"{labels.product} {product} is not {where}.product_id ({product_id})",
        )
    if svn < min_svn:
        return (
            Reason.SVN_TOO_LOW,
            f"{labels.svn} {svn} is below {where}.min_svn ({min_svn}); deploy the patched {labels.build}",
        )
    return None


def _sim(svc: ServicePolicy, values: Values, key: str) -> Problem | None:
    return _signed_build(
        _SIM,
        values,
        key,
        allowed=svc.measurements,
        signer=svc.signer,
        product_id=svc.product_id,
        min_svn=svc.min_svn,
    )


def _snp(ref: SnpReference, values: Values, where: str) -> Problem | None:
    measurement = _str(values, "measurement")
    if measurement not in ref.measurements:
        return (
            Reason.MEASUREMENT_NOT_ALLOWED,
            f"SEV-SNP launch measurement {short(measurement)} is not in {where}.measurements "
            f"(policy allows {_plural(len(ref.measurements), 'measurement')}); compute the "
            "approved image's measurement with sev-snp-measure",
        )
    host_data = _str(values, "host_data")
    if ref.host_data is not None and host_data != ref.host_data:
        return (
            Reason.MEASUREMENT_NOT_ALLOWED,
            f"SEV-SNP host_data {short(host_data)} is not {where}.host_data ({short(ref.host_data)})",
        )
    id_key = _str(values, "id_key_digest")
    if ref.id_key_digest is not None and id_key != ref.id_key_digest:
        return (
            Reason.SIGNER_NOT_ALLOWED,
            f"SEV-SNP ID key digest {short(id_key)} is not {where}.id_key_digest "
            f"({short(ref.id_key_digest)})",
        )
    svn = _int(values, "guest_svn")
    if svn < ref.min_guest_svn:
        return (
            Reason.SVN_TOO_LOW,
            f"SEV-SNP guest SVN {svn} is below {where}.min_guest_svn ({ref.min_guest_svn})",
        )
    return None


def _sgx(ref: SgxReference, values: Values, where: str) -> Problem | None:
    return _signed_build(
        _SGX,
        values,
        where,
        allowed=ref.mrenclave,
        signer=ref.mrsigner,
        product_id=ref.product_id,
        min_svn=ref.min_svn,
    )


def _tdx(ref: TdxReference, values: Values, where: str) -> Problem | None:
    mrtd = _str(values, "mrtd")
    if mrtd not in ref.mrtd:
        return (
            Reason.MEASUREMENT_NOT_ALLOWED,
            f"TDX MRTD {short(mrtd)} is not in {where}.mrtd "
            f"(policy allows {_plural(len(ref.mrtd), 'value')})",
        )
    for name, allowed in ref.registers.items():
        value = _str(values, name)
        if value not in allowed:
            return (
                Reason.MEASUREMENT_NOT_ALLOWED,
                f"TDX {name.upper()} {short(value)} is not in {where}.{name} "
                f"(policy allows {_plural(len(allowed), 'value')})",
            )
    return None
