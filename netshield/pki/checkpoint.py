"""Signed audit checkpoints: the CAS's signed word on its audit head (pure, no I/O).

A `Checkpoint` says: CAS state ``state_id`` had audit entry ``seq`` with hash ``head`` while
policy version ``policy_version`` was current, at ``ts``. The CAS signs one in the same
transaction as every audit entry, with a key of its own (`CheckpointSigner`: generated in
memory at start, never written anywhere) that the mesh CA certified for this purpose only: the
CAS's SPIFFE id and the single extended key usage `CHECKPOINT_SIGNING_OID`, so no TLS peer
accepts that certificate and no mesh certificate can sign a checkpoint. Whoever holds the trust
bundle can check one: the sidecars, which remember the highest checkpoint they saw and refuse
a CAS that presents an older one; `netshield cas audit --verify`, which checks that the stored
chain is the chain the CAS signed; and the CAS itself when it opens its state.

Guarantees:
- `verify_checkpoint` returns the checkpoint only if its signature verifies with a certificate
  directly issued by a CA of the bundle, carrying the checkpoint purpose and a CAS SPIFFE id
  (of the given trust domain), valid at the checkpoint's time; anything else is a
  `CheckpointError` (`CHECKPOINT_INVALID`) saying what failed.
- The signed bytes are a canonical encoding of a format tag and the five fields: a checkpoint
  cannot be mistaken for any other netshield signature (certificates, quotes, records).
- `SignedCheckpoint.from_json` accepts exactly the shape `to_json` writes, and raises
  `CheckpointError` for anything else; it never verifies (that is `verify_checkpoint`).
- A checkpoint holds no secret; the signing key never appears in a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from netshield.errors import NetshieldError
from netshield.identity import CAS_PATH, SpiffeId
from netshield.pki.ca import CertificateAuthority, issue_signing_certificate, spiffe_id_of
from netshield.pki.certext import CHECKPOINT_SIGNING_OID
from netshield.pki.keys import generate_key, load_certificates
from netshield.reasons import Reason

CHECKPOINT_FORMAT = "netshield-checkpoint/1"
SIGNER_LIFETIME = timedelta(days=30)
RENEW_BEFORE = timedelta(days=1)  # a signer this close to its expiry is replaced

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # the audit log's timestamps (`cas.auditlog.rfc3339`)
_FIELDS = ("state_id", "seq", "head", "policy_version", "ts")
_BODY_KEYS = {"format", *_FIELDS, "signature", "signer_sha256"}


class CheckpointError(NetshieldError):
    """A checkpoint that is malformed or whose signature cannot be trusted."""

    reason = Reason.CHECKPOINT_INVALID


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The statement a CAS signs: its state ``state_id`` was at audit entry ``seq`` (hash
    ``head``) under policy version ``policy_version`` at ``ts`` (the entry's timestamp)."""

    state_id: str
    seq: int
    head: str
    policy_version: int
    ts: str

    def signed_bytes(self) -> bytes:
        values = [CHECKPOINT_FORMAT, self.state_id, self.seq, self.head, self.policy_version]
        return _canonical([*values, self.ts])

    def at(self) -> datetime:
        return _parse_ts(self.ts)

    def describe(self) -> str:
        """For sentences: ``audit entry 12 (policy version 3) of state <id>``."""
        return (
            f"audit entry {self.seq} (policy version {self.policy_version}) of state "
            f"{self.state_id}"
        )


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint, its ECDSA P-256 / SHA-256 signature (DER) and the signer's certificate."""

    checkpoint: Checkpoint
    signature: bytes
    signer: x509.Certificate

    @property
    def signer_fingerprint(self) -> str:
        return hashlib.sha256(self.signer.public_bytes(serialization.Encoding.DER)).hexdigest()

    def signer_pem(self) -> str:
        return self.signer.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def body(self) -> dict[str, Any]:
        """Everything but the signer's certificate, which is named by its SHA-256."""
        c = self.checkpoint
        return {
            "format": CHECKPOINT_FORMAT,
            "state_id": c.state_id,
            "seq": c.seq,
            "head": c.head,
            "policy_version": c.policy_version,
            "ts": c.ts,
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "signer_sha256": self.signer_fingerprint,
        }

    def body_text(self) -> str:
        return _canonical(self.body()).decode("ascii")

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signer": self.signer_pem()}

    @classmethod
    def from_json(cls, doc: object) -> SignedCheckpoint:
        """The `to_json` shape back; CheckpointError naming the first thing that is wrong."""
        if not isinstance(doc, dict) or set(doc) != _BODY_KEYS | {"signer"}:
            raise CheckpointError(
                f"a signed checkpoint is a JSON object with exactly the keys "
                f"{sorted(_BODY_KEYS | {'signer'})}"
            )
        return cls.from_body(doc, doc["signer"])

    @classmethod
    def from_body(cls, body: object, signer_pem: object) -> SignedCheckpoint:
        """A stored `body` (a dict or its JSON text) with its signer's PEM certificate."""
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError:
                raise CheckpointError("a stored checkpoint is not JSON") from None
        if not isinstance(body, dict) or set(body) - {"signer"} != _BODY_KEYS:
            raise CheckpointError(f"a checkpoint has exactly the keys {sorted(_BODY_KEYS)}")
        if body["format"] != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"checkpoint format {body['format']!r} is not {CHECKPOINT_FORMAT}"
            )
        checkpoint = _checkpoint_of(body)
        try:
            signature = base64.b64decode(str(body["signature"]), validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError("checkpoint signature is not base64") from None
        if not isinstance(signer_pem, str):
            raise CheckpointError("checkpoint signer must be a PEM certificate")
        try:
            certs = load_certificates(signer_pem.encode("ascii"), source="checkpoint signer")
        except (NetshieldError, UnicodeEncodeError):
            certs = []
        if len(certs) != 1:
            raise CheckpointError("checkpoint signer must be exactly one PEM certificate")
        signed = cls(checkpoint, signature, certs[0])
        if body["signer_sha256"] != signed.signer_fingerprint:
            raise CheckpointError("checkpoint names another signer than the certificate it carries")
        return signed


def verify_checkpoint(
    signed: SignedCheckpoint,
    bundle: list[x509.Certificate],
    *,
    trust_domain: str | None = None,
) -> Checkpoint:
    """The checkpoint, if a CA of ``bundle`` certified its signer for checkpoints (of
    ``trust_domain``'s CAS, when given) and the signature verifies; else CheckpointError."""
    cert, checkpoint = signed.signer, signed.checkpoint
    issuer = next((ca for ca in bundle if ca.subject == cert.issuer), None)
    if issuer is None:
        raise CheckpointError(
            f"checkpoint of {checkpoint.describe()} is signed by a certificate no CA of the "
            "trust bundle issued"
        )
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise CheckpointError(
            f"checkpoint signer for {checkpoint.describe()} was not issued by the mesh CA"
        ) from None
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        usages = x509.ExtendedKeyUsage([])
    if list(usages) != [CHECKPOINT_SIGNING_OID]:
        raise CheckpointError(
            f"checkpoint of {checkpoint.describe()} is signed by a certificate that is not "
            "certified for checkpoints (extended key usage)"
        )
    spiffe_id = spiffe_id_of(cert)
    if (
        spiffe_id is None
        or spiffe_id.path != CAS_PATH
        or (trust_domain is not None and spiffe_id.trust_domain != trust_domain)
    ):
        expected = "a CAS" if trust_domain is None else str(SpiffeId.for_cas(trust_domain))
        raise CheckpointError(
            f"checkpoint of {checkpoint.describe()} is signed by {spiffe_id or 'no SPIFFE id'}, "
            f"not {expected}"
        )
    at = checkpoint.at()
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise CheckpointError(
            f"checkpoint of {checkpoint.describe()} is dated {checkpoint.ts}, outside its "
            "signer's validity"
        )
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CheckpointError("checkpoint signer's key is not ECDSA")
    try:
        public_key.verify(signed.signature, checkpoint.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CheckpointError(
            f"checkpoint of {checkpoint.describe()}: the signature does not verify (edited)"
        ) from None
    return checkpoint


class CheckpointSigner:
    """The CAS's checkpoint key, in memory only, and its certificate from the mesh CA.

    The certificate is minted on first use and again when a checkpoint's time comes within
    `RENEW_BEFORE` of its expiry, so a long-running CAS keeps signing. Thread-safe.
    """

    def __init__(
        self, ca: CertificateAuthority, trust_domain: str, *, lifetime: timedelta = SIGNER_LIFETIME
    ) -> None:
        self._ca = ca
        self.trust_domain = trust_domain
        self._lifetime = lifetime
        self._lock = threading.Lock()
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._cert: x509.Certificate | None = None

    def __repr__(self) -> str:
        return f"CheckpointSigner({str(SpiffeId.for_cas(self.trust_domain))!r})"

    @property
    def bundle(self) -> list[x509.Certificate]:
        """The trust bundle its checkpoints verify against."""
        return [self._ca.cert]

    def sign(self, checkpoint: Checkpoint) -> SignedCheckpoint:
        at = checkpoint.at()
        with self._lock:
            cert, key = self._cert, self._key
            if (
                cert is None
                or key is None
                or at < cert.not_valid_before_utc
                or at + RENEW_BEFORE > cert.not_valid_after_utc
            ):
                key = generate_key()
                cert = issue_signing_certificate(
                    self._ca,
                    public_key=key.public_key(),
                    spiffe_id=SpiffeId.for_cas(self.trust_domain),
                    purpose=CHECKPOINT_SIGNING_OID,
                    now=at,
                    lifetime=self._lifetime,
                )
                self._cert, self._key = cert, key
        signature = key.sign(checkpoint.signed_bytes(), ec.ECDSA(hashes.SHA256()))
        return SignedCheckpoint(checkpoint, signature, cert)

    def verify(self, signed: SignedCheckpoint) -> Checkpoint:
        return verify_checkpoint(signed, self.bundle, trust_domain=self.trust_domain)


def _checkpoint_of(body: dict[str, Any]) -> Checkpoint:
    state_id, seq, head = body["state_id"], body["seq"], body["head"]
    version, ts = body["policy_version"], body["ts"]
    if not isinstance(state_id, str) or not 0 < len(state_id) <= 64 or not state_id.isprintable():
        raise CheckpointError("checkpoint state_id must be 1-64 printable characters")
    for name, value, low in (("seq", seq, 1), ("policy_version", version, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise CheckpointError(f"checkpoint {name} must be an integer >= {low}")
    if not isinstance(head, str) or not _HEX64.fullmatch(head):
        raise CheckpointError("checkpoint head must be 64 lower-case hex characters")
    if not isinstance(ts, str):
        raise CheckpointError("checkpoint ts must be RFC 3339 text")
    _parse_ts(ts)
    return Checkpoint(state_id, seq, head, version, ts)


def _parse_ts(text: str) -> datetime:
    try:
        return datetime.strptime(text, _TS_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise CheckpointError(f"checkpoint ts {text!r} is not RFC 3339 UTC text") from None


def _canonical(value: object) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")
