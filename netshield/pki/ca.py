"""Certificate authorities: the trust domain's mesh root, the simulated vendor root, and issuance.

Responsibility: create root CAs, issue mesh leaf certificates (one SPIFFE URI SAN, short-lived,
optional attestation claims) and simulated platform certificates, load a CA from files, and read
a certificate's SPIFFE id. Pure: the time is always passed in as `now`.
Guarantees: every leaf carries exactly one URI SAN (its SPIFFE id), CA:FALSE (critical), key usage
digitalSignature, SKI/AKI, and never outlives its CA; a `CertificateAuthority`'s private key never
appears in its repr; `load_ca` refuses a key that does not match the certificate.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netshield.errors import NetshieldError
from netshield.identity import SpiffeId
from netshield.pki.certext import (
    AttestationClaims,
    PlatformClaims,
    attestation_claims_extension,
    platform_claims_extension,
)
from netshield.pki.keys import (
    generate_key,
    is_p256,
    load_certificates,
    load_private_key,
    public_key_der,
    read_pem_file,
)

CLOCK_SKEW = timedelta(seconds=60)
"""Certificates become valid this long before `now`, for peers whose clocks are a bit behind."""

DEFAULT_CA_LIFETIME = timedelta(days=3650)
MAX_COMMON_NAME = 64


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with its private key (kept out of repr)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    def bundle_pem(self) -> bytes:
        """The CA certificate as PEM: the trust bundle peers verify against."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def name(self) -> str:
        """The CA's common name, for messages."""
        return _common_name_of(self.cert)


def common_name_for(spiffe_id: SpiffeId) -> str:
    """The subject CN for an identity: the service or admin name, else the last path segment."""
    name = spiffe_id.service or spiffe_id.admin or spiffe_id.path.rsplit("/", 1)[-1]
    return name[:MAX_COMMON_NAME]


def random_serial() -> int:
    """A random positive 63-bit serial number."""
    return 1 + secrets.randbelow(2**63 - 1)


def create_root_ca(
    common_name: str, *, now: datetime, lifetime: timedelta = DEFAULT_CA_LIFETIME
) -> CertificateAuthority:
    """A new self-signed root with a fresh P-256 key: CA:TRUE pathlen 0, keyCertSign+cRLSign."""
    now = _utc(now)
    _check_lifetime(lifetime)
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


def issue_certificate(
    ca: CertificateAuthority,
    *,
    public_key: CertificatePublicKeyTypes,
    spiffe_id: SpiffeId,
    now: datetime,
    lifetime: timedelta,
    serial: int | None = None,
    claims: AttestationClaims | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    server_auth: bool = True,
    client_auth: bool = True,
) -> x509.Certificate:
    """Sign a mesh leaf for `spiffe_id` over `public_key` (which must be EC P-256).

    Valid from `now - CLOCK_SKEW` to `now + lifetime`, clamped to the CA's validity. Raises
    `NetshieldError` if the CA has expired, `ValueError` for a bad argument (key type, serial,
    IP address, no EKU).
    """
    if not server_auth and not client_auth:
        raise ValueError("a mesh certificate needs server_auth, client_auth or both")
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server_auth else []
    if client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    names += [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    builder = _leaf_builder(
        ca, public_key, common_name_for(spiffe_id), now=now, lifetime=lifetime, serial=serial
    )
    builder = builder.add_extension(
        x509.SubjectAlternativeName(names), critical=False
    ).add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if claims is not None:
        builder = builder.add_extension(attestation_claims_extension(claims), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def issue_signing_certificate(
    ca: CertificateAuthority,
    *,
    public_key: CertificatePublicKeyTypes,
    spiffe_id: SpiffeId,
    purpose: x509.ObjectIdentifier,
    now: datetime,
    lifetime: timedelta,
) -> x509.Certificate:
    """Sign a leaf for one purpose other than TLS: `spiffe_id` as its URI SAN and `purpose` as
    its only extended key usage, so no TLS peer accepts it as a client or server certificate.

    Validity and errors as `issue_certificate`.
    """
    builder = _leaf_builder(
        ca, public_key, common_name_for(spiffe_id), now=now, lifetime=lifetime, serial=None
    )
    return (
        builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=True)
        .sign(ca.key, hashes.SHA256())
    )


def issue_platform_certificate(
    vendor: CertificateAuthority,
    *,
    public_key: CertificatePublicKeyTypes,
    platform_id: str,
    tcb_level: int,
    debug: bool,
    now: datetime,
    lifetime: timedelta = DEFAULT_CA_LIFETIME,
) -> x509.Certificate:
    """Certify a simulated platform's quote-signing key: CN = platform id, PlatformClaims (id,
    TCB level and debug flag)."""
    claims = PlatformClaims(platform_id, tcb_level, debug)
    if len(platform_id) > MAX_COMMON_NAME:
        raise ValueError(f"platform_id must be at most {MAX_COMMON_NAME} characters")
    builder = _leaf_builder(
        vendor, public_key, platform_id, now=now, lifetime=lifetime, serial=None
    )
    builder = builder.add_extension(platform_claims_extension(claims), critical=False)
    return builder.sign(vendor.key, hashes.SHA256())


def load_ca(cert_path: Path, key_path: Path) -> CertificateAuthority:
    """Load a CA from its PEM certificate and 0600 key file; `NetshieldError` naming the file."""
    certs = load_certificates(
        read_pem_file(cert_path, "CA certificate file"), source=str(cert_path)
    )
    if len(certs) != 1:
        raise NetshieldError(
            f"CA certificate file {cert_path} holds {len(certs)} certificates; expected one",
            hint="",
        )
    cert = certs[0]
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        is_ca = False
    if not is_ca:
        raise NetshieldError(f"{cert_path} is not a CA certificate (no CA:TRUE)", hint="")
    key = load_private_key(key_path)
    if public_key_der(key) != public_key_der(cert.public_key()):
        raise NetshieldError(
            f"private key file {key_path} does not belong to the CA certificate {cert_path}",
            hint="",
        )
    return CertificateAuthority(cert, key)


def spiffe_id_of(cert: x509.Certificate | x509.CertificateSigningRequest) -> SpiffeId | None:
    """The SPIFFE id in the SAN if there is exactly one URI SAN and it parses, else None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (
        x509.ExtensionNotFound,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
        ValueError,
    ):
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        return None
    try:
        return SpiffeId.parse(uris[0])
    except ValueError:
        return None


def _leaf_builder(
    ca: CertificateAuthority,
    public_key: CertificatePublicKeyTypes,
    common_name: str,
    *,
    now: datetime,
    lifetime: timedelta,
    serial: int | None,
) -> x509.CertificateBuilder:
    now = _utc(now)
    _check_lifetime(lifetime)
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not is_p256(public_key):
        raise ValueError("the certified public key must be ECDSA P-256")
    if serial is None:
        serial = random_serial()
    elif not 0 < serial < 2**159:
        raise ValueError("serial must be a positive integer below 2**159")
    ca_not_after = ca.cert.not_valid_after_utc
    if now >= ca_not_after:
        raise NetshieldError(
            f"CA {ca.name!r} expired at {ca_not_after.isoformat()}; create a new CA", hint=""
        )
    not_before = max(now - CLOCK_SKEW, ca.cert.not_valid_before_utc)
    not_after = min(now + lifetime, ca_not_after)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(ca), critical=False)
    )


def _authority_key_identifier(ca: CertificateAuthority) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _common_name_of(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = values[0].value if values else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime (UTC)")
    return now.astimezone(UTC)


def _check_lifetime(lifetime: timedelta) -> None:
    if lifetime <= timedelta(0):
        raise ValueError("lifetime must be positive")
