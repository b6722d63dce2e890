"""A sidecar's mesh credentials as one immutable value: chain, key, trust bundle, parsed facts.

Responsibility: hold what one successful attestation produced (certificate chain, private key,
trust bundle, typed policy slice) together with the facts parsed from the leaf certificate (SPIFFE id,
serial, validity, attestation claims), so the rest of the sidecar never re-parses certificates.
Guarantees: the private key never appears in repr/str (field repr=False); `from_attestation`
refuses a chain whose leaf does not certify `key`, has no SPIFFE id or no attestation claims,
and a malformed policy slice (`ValueError` with a readable message); `expired(now)` is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from netshield.casclient import Credentials
from netshield.identity import SpiffeId
from netshield.pki.ca import spiffe_id_of
from netshield.pki.certext import attestation_claims_of
from netshield.pki.keys import public_key_der
from netshield.policyslice import PolicySlice


@dataclass(frozen=True)
class MeshCredentials:
    """A mesh leaf chain with its key and trust bundle (the key is kept out of repr)."""

    chain_pem: bytes
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    trust_bundle_pem: bytes
    spiffe_id: SpiffeId
    serial: int
    not_before: datetime
    not_after: datetime
    epoch: int
    policy_version: int
    policy: PolicySlice
    measurement: str

    @classmethod
    def from_attestation(
        cls, creds: Credentials, key: ec.EllipticCurvePrivateKey
    ) -> MeshCredentials:
        """Build from a CAS answer and the key whose CSR it certified; parses the leaf."""
        try:
            certs = x509.load_pem_x509_certificates(creds.chain_pem)
        except ValueError:
            raise ValueError("the CAS certificate chain holds no valid PEM certificate") from None
        leaf = certs[0]
        if public_key_der(leaf.public_key()) != public_key_der(key):
            raise ValueError("the issued certificate does not certify this sidecar's key")
        spiffe_id = spiffe_id_of(leaf)
        if spiffe_id is None:
            raise ValueError("the issued certificate carries no SPIFFE id")
        claims = attestation_claims_of(leaf)
        if claims is None:
            raise ValueError("the issued certificate carries no attestation claims")
        return cls(
            chain_pem=creds.chain_pem,
            key=key,
            trust_bundle_pem=creds.trust_bundle_pem,
            spiffe_id=spiffe_id,
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            epoch=claims.epoch,
            policy_version=claims.policy_version,
            policy=PolicySlice.from_json(creds.policy),
            measurement=claims.measurement,
        )

    def expired(self, now: datetime) -> bool:
        """Whether the leaf is no longer valid at `now` (naive datetimes are taken as UTC)."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now >= self.not_after
