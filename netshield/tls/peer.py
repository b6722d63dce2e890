"""What a finished TLS handshake tells about the peer: identity, certificate facts, TLS details.

Responsibility: turn an `ssl.SSLObject` after its handshake into a `PeerInfo` value, parsing the
peer's leaf certificate with `cryptography` (SPIFFE id, serial, validity, attestation claims).
`PeerCache` remembers what was parsed per certificate (by its DER bytes), so a peer's every
connection after the first costs a dictionary lookup, not a certificate parse.
Guarantees: `peer_info` never raises on odd peer certificates: a certificate without a usable
SPIFFE id or with malformed claims yields None for that field (the caller then denies), and no
certificate at all yields a PeerInfo whose certificate fields are all None.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from netshield.identity import SpiffeId
from netshield.pki.ca import spiffe_id_of
from netshield.pki.certext import AttestationClaims, attestation_claims_of


@dataclass(frozen=True)
class PeerInfo:
    """The authenticated peer of one TLS connection."""

    spiffe_id: SpiffeId | None
    serial: int | None
    not_after: datetime | None
    claims: AttestationClaims | None
    tls_version: str
    cipher: str
    resumed: bool
    not_before: datetime | None = None

    @property
    def service(self) -> str | None:
        """The peer's service name if its id is a service identity."""
        return None if self.spiffe_id is None else self.spiffe_id.service

    @property
    def epoch(self) -> int | None:
        """The certificate epoch the peer was attested under."""
        return None if self.claims is None else self.claims.epoch

    @property
    def platform_id(self) -> str | None:
        """The platform the peer was attested on ("" if the CAS did not know it)."""
        return None if self.claims is None else self.claims.platform_id


def peer_info(sslobj: ssl.SSLObject | ssl.SSLSocket) -> PeerInfo:
    """The PeerInfo of a connection whose handshake completed."""
    cipher = sslobj.cipher()
    tls_version = sslobj.version() or ""
    info = PeerInfo(
        spiffe_id=None,
        serial=None,
        not_after=None,
        claims=None,
        tls_version=tls_version,
        cipher=cipher[0] if cipher else "",
        resumed=bool(sslobj.session_reused),
    )
    der = sslobj.getpeercert(binary_form=True)
    if not der:
        return info
    return peer_info_from_der(
        der, tls_version=info.tls_version, cipher=info.cipher, resumed=info.resumed
    )


def peer_info_from_der(der: bytes, *, tls_version: str, cipher: str, resumed: bool) -> PeerInfo:
    """A PeerInfo from the peer leaf's DER (split out so it is testable without a handshake)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return PeerInfo(None, None, None, None, tls_version, cipher, resumed)
    try:
        claims = attestation_claims_of(cert)
    except ValueError:
        claims = None
    return PeerInfo(
        spiffe_id=spiffe_id_of(cert),
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        claims=claims,
        tls_version=tls_version,
        cipher=cipher,
        resumed=resumed,
        not_before=cert.not_valid_before_utc,
    )


@dataclass(frozen=True, slots=True)
class _CertFacts:
    spiffe_id: SpiffeId | None
    serial: int | None
    not_after: datetime | None
    claims: AttestationClaims | None
    not_before: datetime | None


class PeerCache:
    """Parsed peer certificates by DER, bounded (oldest dropped first); one per credential set."""

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._facts: dict[bytes, _CertFacts] = {}

    def __len__(self) -> int:
        return len(self._facts)

    def peer_info(self, sslobj: ssl.SSLObject | ssl.SSLSocket) -> PeerInfo:
        """Like `peer_info`, parsing each distinct certificate once."""
        der = sslobj.getpeercert(binary_form=True)
        cipher = sslobj.cipher()
        tls_version = sslobj.version() or ""
        resumed = bool(sslobj.session_reused)
        name = cipher[0] if cipher else ""
        if not der:
            return PeerInfo(None, None, None, None, tls_version, name, resumed)
        facts = self._facts.get(der)
        if facts is None:
            info = peer_info_from_der(der, tls_version=tls_version, cipher=name, resumed=resumed)
            if len(self._facts) >= self._limit:
                del self._facts[next(iter(self._facts))]
            self._facts[der] = _CertFacts(
                info.spiffe_id, info.serial, info.not_after, info.claims, info.not_before
            )
            return info
        return PeerInfo(
            facts.spiffe_id,
            facts.serial,
            facts.not_after,
            facts.claims,
            tls_version,
            name,
            resumed,
            facts.not_before,
        )
