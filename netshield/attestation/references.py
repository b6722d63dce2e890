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


def _sim(svc: ServicePolicy, values: Values, key: str) -> Problem | None:
    measurement, signer = _str(values, "measurement"), _str(values, "signer")
    product, svn = _int(values, "product_id"), _int(values, "svn")
    if measurement not in svc.measurements:
        return (
            Reason.MEASUREMENT_NOT_ALLOWED,
            f"measurement {short(measurement)} is not in {key}.measurements "
            f"(policy allows {_plural(len(svc.measurements), 'measurement')})",
        )
    if svc.signer is not None and signer != svc.signer:
        return (
            Reason.SIGNER_NOT_ALLOWED,
            f"signer {short(signer)} is not {key}.signer ({short(svc.signer)})",
        )
    if svc.product_id is not None and product != svc.product_id:
        return (
            Reason.PRODUCT_NOT_ALLOWED,
            f"product id {product} is not {key}.product_id ({svc.product_id})",
        )
    if svn < svc.min_svn:
        return (
            Reason.SVN_TOO_LOW,
            f"svn {svn} is below {key}.min_svn ({svc.min_svn}); deploy the patched build",
        )
    return None


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
    mrenclave, mrsigner = _str(values, "mrenclave"), _str(values, "mrsigner")
    product, svn = _int(values, "product_id"), _int(values, "svn")
    if ref.mrenclave is not None and mrenclave not in ref.mrenclave:
        return (
            Reason.MEASUREMENT_NOT_ALLOWED,
            f"SGX MRENCLAVE {short(mrenclave)} is not in {where}.mrenclave "
            f"(policy allows {_plural(len(ref.mrenclave), 'enclave')})",
        )
    if ref.mrsigner is not None and mrsigner != ref.mrsigner:
        return (
            Reason.SIGNER_NOT_ALLOWED,
            f"SGX MRSIGNER {short(mrsigner)} is not {where}.mrsigner ({short(ref.mrsigner)})",
        )
    if ref.product_id is not None and product != ref.product_id:
        return (
            Reason.PRODUCT_NOT_ALLOWED,
            f"SGX ISVPRODID {product} is not {where}.product_id ({ref.product_id})",
        )
    if svn < ref.min_svn:
        return (
            Reason.SVN_TOO_LOW,
            f"SGX ISVSVN {svn} is below {where}.min_svn ({ref.min_svn}); deploy the patched enclave",
        )
    return None


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
