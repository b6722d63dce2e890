"""Appraisal: does the policy allow the workload a verified quote describes?

Responsibility: the policy half of attestation (DESIGN §3.4). Given a quote the verifier has
already authenticated, the nonce's status and the CSR's key, decide allow or deny.

Guarantees: `appraise` is pure and total: it returns a `Decision` for every input and never
raises. Checks run in a fixed order and stop at the first failure: platform revoked, TCB level,
debug mode, nonce, report_data binding, service known / enabled / not revoked, measurement,
signer, product id, svn. `Decision.detail` is one sentence naming the offending value and the
policy key involved, so an operator knows what to change.
"""

from __future__ import annotations

from dataclasses import dataclass

from netshield.attestation.quote import report_data_for
from netshield.attestation.verifier import VerifiedQuote
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


def short(value: str) -> str:
    """A digest shortened for a sentence: 3f2a…9c."""
    return f"{value[:4]}…{value[-2:]}" if len(value) > 8 else value


def _name(value: str) -> str:
    """A name quoted for a sentence, truncated: it may come from the remote peer."""
    return repr(value) if len(value) <= 64 else repr(value[:63] + "…")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


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
    quote: VerifiedQuote,
    *,
    service: str,
    nonce: bytes,
    nonce_status: NonceStatus,
    csr_public_key_der: bytes,
    revoked_platforms: frozenset[str] = frozenset(),
    revoked_services: frozenset[str] = frozenset(),
) -> Decision:
    """Allow or deny the workload described by `quote` as `service`, in DESIGN §3.4's order."""

    def deny(reason: Reason, detail: str) -> Decision:
        return Decision(False, reason, detail)

    body, platform, rules = quote.body, _name(quote.platform_id), policy.platforms
    svc = policy.services.get(service)

    if quote.platform_id in rules.revoked:
        return deny(Reason.PLATFORM_REVOKED, f"platform {platform} is listed in platforms.revoked")
    if quote.platform_id in revoked_platforms:
        return deny(
            Reason.PLATFORM_REVOKED,
            f"platform {platform} was revoked at the CAS (netshield cas revoke --platform)",
        )
    if quote.tcb_level < rules.min_tcb:
        return deny(
            Reason.TCB_OUT_OF_DATE,
            f"platform {platform} has TCB level {quote.tcb_level}, below platforms.min_tcb "
            f"({rules.min_tcb}); update the platform firmware",
        )
    if body.debug:
        if svc is not None and svc.allow_debug is not None:
            allowed, key = svc.allow_debug, f"services.{service}.allow_debug"
        else:
            allowed, key = rules.allow_debug, "platforms.allow_debug"
        if not allowed:
            return deny(
                Reason.DEBUG_NOT_ALLOWED,
                f"the workload on platform {platform} runs in debug mode but {key} is false",
            )
    if nonce_status != NonceStatus.VALID:  # fail closed on any status but VALID
        reason, what = _NONCE_REASONS.get(nonce_status, _NONCE_REASONS[NonceStatus.UNKNOWN])
        return deny(reason, f"nonce {short(nonce.hex())} {what}")
    expected = report_data_for(csr_public_key_der, nonce)
    if body.report_data != expected:
        return deny(
            Reason.REPORT_DATA_MISMATCH,
            f"the quote's report_data {short(body.report_data)} is not SHA-256(CSR key ‖ nonce) "
            f"= {short(expected)}: the CSR is not the one the quote was made for",
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
    if body.measurement not in svc.measurements:
        return deny(
            Reason.MEASUREMENT_NOT_ALLOWED,
            f"measurement {short(body.measurement)} is not in {key}.measurements "
            f"(policy allows {_plural(len(svc.measurements), 'measurement')})",
        )
    if svc.signer is not None and body.signer != svc.signer:
        return deny(
            Reason.SIGNER_NOT_ALLOWED,
            f"signer {short(body.signer)} is not {key}.signer ({short(svc.signer)})",
        )
    if svc.product_id is not None and body.product_id != svc.product_id:
        return deny(
            Reason.PRODUCT_NOT_ALLOWED,
            f"product id {body.product_id} is not {key}.product_id ({svc.product_id})",
        )
    if body.svn < svc.min_svn:
        return deny(
            Reason.SVN_TOO_LOW,
            f"svn {body.svn} is below {key}.min_svn ({svc.min_svn}); deploy the patched build",
        )
    return Decision(
        True,
        Reason.OK,
        f"service {service!r} on platform {platform} with measurement "
        f"{short(body.measurement)} meets {key}",
    )
