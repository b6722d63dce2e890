"""Appraisal: does the policy allow the workload a verified quote describes?

Responsibility: the policy half of attestation (DESIGN §3.4). Given evidence the verifier has
already authenticated (simulated, SEV-SNP, SGX or TDX: one `VerifiedEvidence`), the nonce's
status and the CSR's key, decide allow or deny. One step for every evidence type; only the TCB
comparison and the reference values differ by type (`references`).

Guarantees: `appraise` is pure and total: it returns a `Decision` for every input and never
raises. Checks run in a fixed order and stop at the first failure: platform revoked, TCB (the
simulated level, the SEV-SNP TCB version, or the Intel TCB status against the statuses the
policy accepts), debug mode, nonce, report_data binding (SHA-256(CSR key ‖ nonce), padded with
zeros to the hardware's 64 bytes), service known / enabled / not revoked, evidence type
accepted by the service, reference values (measurement, signer, product id, svn; or their
hardware counterparts). `Decision.detail` is one sentence naming the offending value, the
evidence type where it is hardware, and the policy key involved, so an operator knows what to
change.
"""

from __future__ import annotations

from dataclasses import dataclass

from netshield.attestation.evidence.claims import DcapTcb, SimTcb, SnpTcb, VerifiedEvidence
from netshield.attestation.quote import report_data_for
from netshield.attestation.references import reference_problem, short
from netshield.nonces import NonceStatus
from netshield.policy import Policy
from netshield.reasons import Reason
from netshield.schema import did_you_mean


@dataclass(frozen=True)
class Decision:
    """The outcome of an appraisal: `detail` is one sentence an operator can act on."""

    allowed: bool
    reason: Reason
    detail: str
    evidence_type: str | None = None


def _name(value: str) -> str:
    """A name quoted for a sentence, truncated: it may come from the remote peer."""
    return repr(value) if len(value) <= 64 else repr(value[:63] + "…")


_NONCE_REASONS = {
    NonceStatus.UNKNOWN: (Reason.NONCE_UNKNOWN, "was never issued by this CAS; fetch a fresh one"),
    NonceStatus.REUSED: (
        Reason.NONCE_REUSED,
        "was already used (a replayed quote); fetch a fresh nonce for every attestation",
    ),
    NonceStatus.EXPIRED: (
        Reason.NONCE_EXPIRED,
        "expired before the quote arrived; attest promptly after fetching it",
    ),
}


def appraise(
    policy: Policy,
    evidence: VerifiedEvidence,
    *,
    service: str,
    nonce: bytes,
    nonce_status: NonceStatus,
    csr_public_key_der: bytes,
    revoked_platforms: frozenset[str] = frozenset(),
    revoked_services: frozenset[str] = frozenset(),
) -> Decision:
    """Allow or deny the workload `evidence` describes as `service`, in DESIGN §3.4's order."""
    kind = evidence.evidence_type

    def deny(reason: Reason, detail: str) -> Decision:
        return Decision(False, reason, detail, kind)

    platform, rules = _name(evidence.platform_id), policy.platforms
    svc = policy.services.get(service)
    ref = svc.evidence.get(kind) if svc is not None else None

    if evidence.platform_id in rules.revoked:
        return deny(Reason.PLATFORM_REVOKED, f"platform {platform} is listed in platforms.revoked")
    if evidence.platform_id in revoked_platforms:
        return deny(
            Reason.PLATFORM_REVOKED,
            f"platform {platform} was revoked at the CAS (netshield cas revoke --platform)",
        )
    tcb = _tcb_decision(policy, service, ref, evidence)
    if tcb is not None:
        return tcb
    if evidence.debug:
        ref_debug = getattr(ref, "allow_debug", None)
        if ref_debug is not None:
            allowed, key = ref_debug, f"services.{service}.evidence.{kind}.allow_debug"
        elif svc is not None and svc.allow_debug is not None:
            allowed, key = svc.allow_debug, f"services.{service}.allow_debug"
        else:
            allowed, key = rules.allow_debug, "platforms.allow_debug"
        if not allowed:
            what = "workload" if kind == "sim" else _KIND_WORKLOAD[kind]
            return deny(
                Reason.DEBUG_NOT_ALLOWED,
                f"the {what} on platform {platform} runs in debug mode but {key} is false",
            )
    if nonce_status != NonceStatus.VALID:  # fail closed on any status but VALID
        reason, what = _NONCE_REASONS.get(nonce_status, _NONCE_REASONS[NonceStatus.UNKNOWN])
        return deny(reason, f"nonce {short(nonce.hex())} {what}")
    expected = report_data_for(csr_public_key_der, nonce)
    bound = bytes.fromhex(expected) + (b"" if kind == "sim" else bytes(32))
    if evidence.report_data != bound:
        return deny(
            Reason.REPORT_DATA_MISMATCH,
            f"the {_label(kind)}report_data {short(evidence.report_data.hex())} is not "
            f"SHA-256(CSR key ‖ nonce){'' if kind == 'sim' else ' ‖ 32 zero bytes'} = "
            f"{short(expected)}: the CSR is not the one the quote was made for",
        )
    if svc is None:
        hint = did_you_mean(service, sorted(policy.services)) or "the policy has no services"
        return deny(Reason.SERVICE_UNKNOWN, f"service {_name(service)} is not in services ({hint})")
    key = f"services.{service}"
    if not svc.enabled:
        return deny(
            Reason.SERVICE_DISABLED, f"service {service!r} is disabled ({key}.enabled is false)"
        )
    if service in revoked_services:
        return deny(
            Reason.SERVICE_REVOKED,
            f"service {service!r} was revoked at the CAS (netshield cas revoke --service)",
        )
    if kind not in svc.accepted_evidence:
        accepted = ", ".join(svc.accepted_evidence) or "nothing"
        where = f"{key}.measurements" if kind == "sim" else f"{key}.evidence.{kind}"
        return deny(
            Reason.EVIDENCE_TYPE_NOT_ACCEPTED,
            f"service {service!r} accepts {accepted}, not {kind} evidence "
            f"(add reference values under {where})",
        )
    problem = reference_problem(svc, evidence, key)
    if problem is not None:
        return deny(*problem)
    return Decision(
        True,
        Reason.OK,
        f"service {service!r} on platform {platform} with {_label(kind)}measurement "
        f"{short(evidence.measurement)} meets {key}",
        kind,
    )


_KIND_WORKLOAD = {"sev-snp": "SEV-SNP guest", "sgx": "SGX enclave", "tdx": "TDX guest"}


def _label(kind: str) -> str:
    return "" if kind == "sim" else f"{kind} "


def _tcb_decision(
    policy: Policy, service: str, ref: object, evidence: VerifiedEvidence
) -> Decision | None:
    rules, tcb, kind = policy.platforms, evidence.tcb, evidence.evidence_type
    platform = _name(evidence.platform_id)

    def deny(reason: Reason, detail: str) -> Decision:
        return Decision(False, reason, detail, kind)

    if isinstance(tcb, SimTcb):
        if tcb.level < rules.min_tcb:
            return deny(
                Reason.TCB_OUT_OF_DATE,
                f"platform {platform} has TCB level {tcb.level}, below platforms.min_tcb "
                f"({rules.min_tcb}); update the platform firmware",
            )
        return None
    if isinstance(tcb, SnpTcb):
        minimum = getattr(ref, "min_tcb", None)
        key = f"services.{service}.evidence.sev-snp.min_tcb"
        if minimum is None:
            minimum, key = rules.evidence.snp_min_tcb, "platforms.sev-snp.min_tcb"
        below = tcb.below(minimum)
        if below:
            return deny(
                Reason.TCB_OUT_OF_DATE,
                f"SEV-SNP platform {platform} has {tcb.describe()}, below {key} "
                f"({'; '.join(below)}); update the platform firmware and fetch its new VCEK",
            )
        return None
    if isinstance(tcb, DcapTcb):
        accepted = getattr(ref, "accepted_tcb_statuses", None)
        key = f"services.{service}.evidence.{kind}.accepted_tcb_statuses"
        if accepted is None:
            accepted = rules.evidence.tdx_accepted if kind == "tdx" else rules.evidence.sgx_accepted
            key = f"platforms.{kind}.accepted_tcb_statuses"
        advisories = f" (advisories: {', '.join(tcb.advisory_ids)})" if tcb.advisory_ids else ""
        if tcb.status == "Revoked":
            return deny(
                Reason.TCB_REVOKED,
                f"Intel's collateral lists the TCB of {kind} platform {platform} as Revoked"
                f"{advisories}; no policy accepts it",
            )
        if tcb.status not in accepted:
            reason = (
                Reason.TCB_OUT_OF_DATE
                if tcb.status.startswith("OutOfDate")
                else Reason.TCB_STATUS_NOT_ACCEPTED
            )
            return deny(
                reason,
                f"{kind} platform {platform} has TCB status {tcb.status}{advisories}, which "
                f"{key} ({', '.join(sorted(accepted))}) does not accept; update the platform "
                "or tolerate the status in the policy",
            )
    return None
