"""The CAS core: turns attestation, nonce, revocation and policy requests into decisions.

This is the one place that combines the quote verifier, the policy appraisal, the state store
and the mesh CA. It holds no sockets; the HTTP layer (`api.py`) calls it with parsed requests and
`now`, and it returns values (an issued credential, a refusal with a reason code). Every
decision, allow or deny, is written to the hash-chained audit log by the store in the same
transaction as its effect.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from netshield.attestation.appraisal import Decision, appraise
from netshield.attestation.verifier import QuoteVerifier
from netshield.cas.store import CasStore, Revocation, StoredPolicy
from netshield.cas.store.model import SerialTaken
from netshield.errors import ConfigError, CsrError, NetshieldError, QuoteError
from netshield.identity import SpiffeId
from netshield.nonces import NonceMinter, NonceStatus
from netshield.pki.ca import CertificateAuthority, issue_certificate, random_serial
from netshield.pki.certext import AttestationClaims
from netshield.pki.checkpoint import SignedCheckpoint
from netshield.pki.csr import parse_csr
from netshield.pki.keys import public_key_der
from netshield.policy import Policy, parse_policy, policy_hash
from netshield.policyslice import PolicySlice, slice_for
from netshield.reasons import Reason

log = logging.getLogger("netshield.cas")

RevocationKind = Literal["instance", "service", "platform"]
SERIAL_ATTEMPTS = 5  # a serial taken already (by this CAS or a replica): sign again


@dataclass(frozen=True, slots=True)
class AttestRequest:
    service: str
    nonce: bytes
    quote: bytes
    csr_pem: bytes

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> AttestRequest:
        """Build from the API's JSON body; NetshieldError(REQUEST_MALFORMED) names the bad field."""
        expected = {"service", "nonce", "quote", "csr"}
        if set(body) != expected:
            missing = sorted(expected - set(body))
            extra = sorted(set(body) - expected)
            raise NetshieldError(
                f"attest request must have exactly the fields {sorted(expected)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else ""),
                reason=Reason.REQUEST_MALFORMED,
            )
        service, nonce_hex, quote_b64, csr = (body[k] for k in ("service", "nonce", "quote", "csr"))
        if not all(isinstance(v, str) for v in (service, nonce_hex, quote_b64, csr)):
            raise NetshieldError(
                "attest request fields must be strings", reason=Reason.REQUEST_MALFORMED
            )
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            raise NetshieldError("nonce is not hex", reason=Reason.REQUEST_MALFORMED) from None
        try:
            quote = base64.b64decode(quote_b64, validate=True)
        except (binascii.Error, ValueError):
            raise NetshieldError("quote is not base64", reason=Reason.QUOTE_MALFORMED) from None
        if not service.isascii() or len(service) > MAX_NAME:
            raise NetshieldError(
                "service is not a service name (ASCII, at most 63 characters)",
                reason=Reason.REQUEST_MALFORMED,
            )
        try:
            csr_pem = csr.encode("ascii")  # PEM is ASCII; a lone surrogate is not even UTF-8
        except UnicodeEncodeError:
            raise NetshieldError(
                "csr is not PEM: it contains non-ASCII characters", reason=Reason.CSR_MALFORMED
            ) from None
        return cls(service=service, nonce=nonce, quote=quote, csr_pem=csr_pem)


@dataclass(frozen=True, slots=True)
class Issued:
    """A successful attestation: the certificate chain and the caller's slice of policy."""

    certificate: x509.Certificate
    chain_pem: bytes
    trust_bundle_pem: bytes
    spiffe_id: SpiffeId
    policy_version: int
    epoch: int
    policy_slice: PolicySlice
    checkpoint: SignedCheckpoint | None = None  # the signed checkpoint of its audit entry

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": None if self.checkpoint is None else self.checkpoint.to_json(),
            "certificate_chain": self.chain_pem.decode(),
            "trust_bundle": self.trust_bundle_pem.decode(),
            "spiffe_id": str(self.spiffe_id),
            "serial": format(self.certificate.serial_number, "x"),
            "not_after": self.certificate.not_valid_after_utc.isoformat(),
            "policy_version": self.policy_version,
            "epoch": self.epoch,
            "policy": self.policy_slice.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Refused:
    """A refused attestation: the reason code and an operator sentence."""

    decision: Decision


@dataclass
class Feed:
    """Wakes long-polling and streaming feed readers when the audit head moves.

    `close` (at shutdown) wakes every reader at once and keeps later waits from blocking, so the
    CAS stops promptly with long-polls pending: each answers with what it has.
    """

    _moved: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    async def notify(self) -> None:
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
        if self.closed:
            self._moved.set()

    async def wait(self, timeout: float) -> None:
        """Return when the head moves, the feed closes, or `timeout` seconds pass."""
        if self.closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), timeout)

    def close(self) -> None:
        self.closed = True
        self._moved.set()


MAX_NAME = 63  # the longest service name a policy takes
NONCE_KEY_INFO = b"netshield nonce key v1"


def nonce_key(ca: CertificateAuthority) -> bytes:
    """The key nonces are minted under: derived from the mesh CA's private key (HKDF-SHA256), so
    every replica holding the CA checks every replica's nonces, and no other secret is kept.
    Whoever holds the CA key can mint certificates, which is more than minting nonces."""
    secret = ca.key.private_numbers().private_value.to_bytes(32, "big")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=NONCE_KEY_INFO).derive(secret)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class CasService:
    """The CAS's decisions over one store, one mesh CA, one quote verifier and the current policy."""

    def __init__(
        self,
        *,
        store: CasStore,
        ca: CertificateAuthority,
        verifier: QuoteVerifier,
        nonce_ttl: timedelta = timedelta(seconds=30),
        serials: Callable[[], int] = random_serial,
    ) -> None:
        self.store = store
        self.ca = ca
        self.verifier = verifier
        self.nonce_ttl = nonce_ttl
        self.nonces = NonceMinter(nonce_key(ca))
        self.feed = Feed()
        self._serials = serials
        stored = store.current_policy()
        if stored is None:
            raise NetshieldError("the CAS state holds no policy yet", reason=Reason.POLICY_INVALID)
        self._stored = stored
        self._policy = parse_policy(stored.text, source=f"policy version {stored.version}")

    # --- reads -------------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def stored_policy(self) -> StoredPolicy:
        return self._stored

    def refresh(self) -> int:
        """Catch up with the other replicas of a shared database; the audit head's seq.

        Checks the database against this replica's witness and witnesses its head
        (StateError(STATE_ROLLED_BACK) if it went back), and takes a newer policy version that
        another replica applied. A stored policy that does not parse keeps the current one.
        """
        head, version = self.store.observe()
        stored = self.store.current_policy() if version > self._stored.version else None
        if stored is not None and stored.version > self._stored.version:
            try:
                policy = parse_policy(stored.text, source=f"policy version {stored.version}")
            except ConfigError as err:
                log.error("policy version %d not taken: %s", stored.version, err.one_line())
            else:
                self._stored, self._policy = stored, policy
                log.warning("policy version %d taken from the database", stored.version)
        return head.seq

    def trust_bundle_pem(self) -> bytes:
        return self.ca.bundle_pem()

    def feed_events(self, since: int) -> tuple[list[dict[str, Any]], int]:
        """Revocation and policy events after audit position `since`, and the audit head: the
        true one, even when it is below `since` (a rolled-back CAS must not echo what a sidecar
        saw; sidecars compare its signed checkpoints with the ones they remember)."""
        entries, head = self.store.feed_entries(since)
        events = [{"seq": e.seq, "type": e.event, "ts": e.ts, **e.data} for e in entries]
        return events, head

    def checkpoints(self, seen: int | None) -> dict[str, Any]:
        """The signed checkpoint of the audit head and, when a sidecar names the entry it saw
        last (``seen``), this CAS's checkpoint of that entry (None if it holds none): the
        sidecar checks both against what it remembers."""
        head = self.store.checkpoint()
        answer: dict[str, Any] = {"checkpoint": None if head is None else head.to_json()}
        if seen is not None:
            at_seen = self.store.checkpoint(seen) if seen > 0 else None
            answer["seen"] = None if at_seen is None else at_seen.to_json()
        return answer

    # --- nonces and attestation --------------------------------------------------------------
    def new_nonce(self, now: datetime) -> tuple[bytes, datetime]:
        """A fresh nonce and its expiry: self-certifying, so issuing one writes nothing."""
        return self.nonces.mint(now, self.nonce_ttl), now + self.nonce_ttl

    def attest(self, request: AttestRequest, now: datetime) -> Issued | Refused:
        """Check evidence + CSR in the order of DESIGN §3.4; issue a certificate or refuse.

        The nonce is checked first (genuine and unexpired: no I/O) and marked used only once the
        evidence verified, so a request without evidence from a certified platform writes
        nothing; two requests racing with one nonce get one VALID between them."""
        checked = self.nonces.check(request.nonce, now)
        try:
            verified = self.verifier.verify(request.quote, now=now)
        except QuoteError as err:
            kind = getattr(err, "evidence_type", None)
            return self._refuse(err.reason, str(err), request.service, None, None, now, kind)
        nonce_status = checked.status
        if nonce_status is NonceStatus.VALID and checked.expires_at is not None:
            nonce_status = self.store.use_nonce(
                request.nonce, expires_at=checked.expires_at, now=now
            )
        kind = verified.evidence_type
        try:
            csr = parse_csr(request.csr_pem)
        except CsrError as err:
            return self._refuse(
                err.reason,
                str(err),
                request.service,
                verified.platform_id,
                verified.measurement,
                now,
                kind,
            )
        policy = self._policy
        revoked_platforms, revoked_services = self.store.revoked()
        decision = appraise(
            policy,
            verified,
            service=request.service,
            nonce=request.nonce,
            nonce_status=nonce_status,
            csr_public_key_der=public_key_der(csr.public_key()),
            revoked_platforms=revoked_platforms,
            revoked_services=revoked_services,
        )
        if not decision.allowed:
            return self._refuse(
                decision.reason,
                decision.detail,
                request.service,
                verified.platform_id,
                verified.measurement,
                now,
                kind,
            )
        spiffe_id = SpiffeId.for_service(policy.trust_domain, request.service)
        epoch = policy.certificates.min_epoch
        version = self._stored.version
        claims = AttestationClaims(
            measurement=verified.measurement,
            policy_version=version,
            epoch=epoch,
            platform_id=verified.platform_id,
        )
        for attempt in range(1, SERIAL_ATTEMPTS + 1):
            cert = issue_certificate(
                self.ca,
                public_key=csr.public_key(),
                spiffe_id=spiffe_id,
                now=now,
                lifetime=policy.certificates.lifetime,
                claims=claims,
                serial=self._serials(),
            )
            try:
                recorded = self.store.record_issued(
                    serial=cert.serial_number,
                    service=request.service,
                    platform_id=verified.platform_id,
                    measurement=verified.measurement,
                    not_after=cert.not_valid_after_utc,
                    policy_version=version,
                    epoch=epoch,
                    now=now,
                    fingerprint=fingerprint(cert),
                    evidence_type=kind,
                )
                break
            except SerialTaken:
                log.warning("serial %x taken already (attempt %d)", cert.serial_number, attempt)
        else:
            raise NetshieldError(
                f"no unused certificate serial in {SERIAL_ATTEMPTS} attempts",
                reason=Reason.STATE_UNAVAILABLE,
            )
        log.info(
            "attest allow service=%s evidence=%s platform=%s serial=%x measurement=%s",
            request.service,
            kind,
            verified.platform_id,
            cert.serial_number,
            verified.measurement,
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.ca.bundle_pem()
        return Issued(
            certificate=cert,
            chain_pem=chain,
            trust_bundle_pem=self.ca.bundle_pem(),
            spiffe_id=spiffe_id,
            policy_version=version,
            epoch=epoch,
            policy_slice=slice_for(policy, request.service),
            checkpoint=self.store.checkpoint(recorded.seq),
        )

    def _refuse(
        self,
        reason: Reason,
        detail: str,
        service: str | None,
        platform_id: str | None,
        measurement: str | None,
        now: datetime,
        evidence_type: str | None,
    ) -> Refused:
        self.store.record_denied(
            reason=reason.value,
            detail=detail,
            service=service,
            platform_id=platform_id,
            measurement=measurement,
            now=now,
            evidence_type=evidence_type,
        )
        log.warning(
            "attest deny reason=%s service=%s evidence=%s platform=%s: %s",
            reason.value,
            service,
            evidence_type,
            platform_id,
            detail,
        )
        return Refused(Decision(False, reason, detail, evidence_type))

    # --- operator actions --------------------------------------------------------------------
    def revoke(
        self, kind: RevocationKind, target: str, *, actor: str, note: str, now: datetime
    ) -> Revocation:
        if kind == "service" and target not in self._policy.services:
            raise NetshieldError(
                f"no service {target!r} in the policy", reason=Reason.REVOCATION_TARGET_UNKNOWN
            )
        revocation = self.store.revoke(kind=kind, target=target, now=now, actor=actor, note=note)
        log.warning("revoked %s %s by %s", kind, target, actor)
        return revocation

    def apply_policy(
        self, text: str, *, previous: str | None, actor: str, now: datetime
    ) -> StoredPolicy:
        """Validate, then store and swap in a new policy version; the old one stays on any failure."""
        try:
            policy = parse_policy(text, source="new policy")
        except ConfigError as err:
            raise NetshieldError(err.one_line(), reason=Reason.POLICY_INVALID) from None
        if policy.trust_domain != self._policy.trust_domain:
            raise NetshieldError(
                f"trust_domain cannot change ({self._policy.trust_domain!r} -> {policy.trust_domain!r}); "
                "a new trust domain needs a new CAS state",
                reason=Reason.POLICY_INVALID,
            )
        stored = self.store.apply_policy(text, previous_hash=previous, now=now, actor=actor)
        self._stored, self._policy = stored, policy
        log.warning("policy version %d applied by %s (%s)", stored.version, actor, stored.hash)
        return stored


def bootstrap_policy(
    store: CasStore, text: str, *, now: datetime, actor: str = "cas serve --policy"
) -> StoredPolicy:
    """Load the initial policy into an empty state, or check that the file matches the stored one.

    A CAS that already holds a policy never takes a different one from its command line: changes
    go through `netshield cas policy apply`, which names the predecessor's hash.
    """
    parse_policy(text, source="--policy")
    current = store.current_policy()
    if current is None:
        try:
            return store.apply_policy(text, previous_hash=None, now=now, actor=actor)
        except NetshieldError as err:  # a replica sharing the database applied one first
            current = store.current_policy()
            if err.reason is not Reason.POLICY_PREDECESSOR_MISMATCH or current is None:
                raise

    if policy_hash(text) != current.hash:
        raise NetshieldError(
            f"--policy differs from the CAS's current policy (version {current.version}, {current.hash}); "
            "change a running policy with `netshield cas policy apply FILE --previous "
            f"{current.hash}`, or pass the current policy file",
            reason=Reason.POLICY_PREDECESSOR_MISMATCH,
        )
    return current
