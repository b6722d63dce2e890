"""Certificate chains of the CPU vendors: pinned roots, path building, validity and revocation.

The trust anchors are pinned by the SHA-256 fingerprint of the root certificate's DER: AMD's
ARK for each SEV-SNP product line and Intel's SGX Root CA (which roots SGX and TDX alike). A
root that is not pinned is refused, whatever the evidence or the collateral directory carries;
tests and labs add their own roots explicitly (`TrustAnchors.with_extra`).

`build_chain` walks from a leaf through a pool of candidate issuers to a pinned self-signed
root, checks every signature (ECDSA or RSA-PSS, as the vendors use) and every validity window
at `now`, and checks the certificate revocation lists it is given. Failures are `EvidenceError`
with `PLATFORM_CERT_UNTRUSTED`, `PLATFORM_CERT_REVOKED` or `COLLATERAL_EXPIRED`. Pure.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from netshield.attestation.evidence.claims import EvidenceError, EvidenceType
from netshield.reasons import Reason

AMD_ARK_FINGERPRINTS = frozenset(
    {
        # ARK-Milan, ARK-Genoa, ARK-Turin (AMD Key Distribution Service, vcek/v1/<product>/cert_chain)
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    }
)
INTEL_ROOT_FINGERPRINTS = frozenset(
    {
        # Intel SGX Root CA (certificates.trustedservices.intel.com/Intel_SGX_Provisioning_Certification_RootCA.pem)
        "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
    }
)
MAX_DEPTH = 5


@dataclass(frozen=True)
class TrustAnchors:
    """The root fingerprints evidence may chain to, per vendor."""

    amd: frozenset[str] = AMD_ARK_FINGERPRINTS
    intel: frozenset[str] = INTEL_ROOT_FINGERPRINTS

    def with_extra(self, roots: Iterable[x509.Certificate]) -> TrustAnchors:
        """These anchors plus `roots` (test or lab roots) for both vendors."""
        extra = frozenset(fingerprint(r) for r in roots)
        return TrustAnchors(amd=self.amd | extra, intel=self.intel | extra)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates from a PEM bundle or one DER certificate, every field parsed; ValueError if
    neither or if any certificate is damaged.

    AMD's VCEKs carry a zero serial number, which `cryptography` warns about: silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if b"-----BEGIN CERTIFICATE-----" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
        for cert in certs:  # parsed lazily: make a damaged field fail here, as ValueError
            try:
                _ = (cert.subject, cert.issuer, cert.extensions, cert.public_key())
                _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
            except (ValueError, UnsupportedAlgorithm) as err:
                raise ValueError(f"a certificate does not parse ({err})") from None
        return certs


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL in PEM or DER (or hex of DER, as some collateral bundles carry it)."""
    if b"-----BEGIN X509 CRL-----" in data:
        return x509.load_pem_x509_crl(data)
    try:
        return x509.load_der_x509_crl(data)
    except ValueError:
        return x509.load_der_x509_crl(bytes.fromhex(data.decode("ascii").strip()))


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def build_chain(
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    *,
    anchors: frozenset[str],
    now: datetime,
    kind: EvidenceType,
    what: str,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> tuple[x509.Certificate, ...]:
    """The chain leaf → … → pinned root, every link verified and valid at `now`."""
    chain = [leaf]
    current = leaf
    for _ in range(MAX_DEPTH):
        if current.issuer == current.subject and issued_by(current, current):
            if fingerprint(current) not in anchors:
                raise untrusted(
                    kind,
                    f"{what}: the chain ends in {_cn(current)}, which is not a pinned "
                    f"{'AMD' if kind == 'sev-snp' else 'Intel'} root (sha256 {fingerprint(current)[:16]}…)",
                )
            break
        issuer = next((c for c in pool if issued_by(current, c)), None)
        if issuer is None:
            raise untrusted(
                kind,
                f"{what}: no certificate for {_cn(current)}'s issuer {_name(current.issuer)} "
                "verifies it",
            )
        chain.append(issuer)
        current = issuer
    else:
        raise untrusted(kind, f"{what}: the chain is longer than {MAX_DEPTH} certificates")
    for cert in chain:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise untrusted(
                kind,
                f"{what}: {_cn(cert)} is valid from {cert.not_valid_before_utc.isoformat()} to "
                f"{cert.not_valid_after_utc.isoformat()}, not at {now.isoformat()}",
            )
    for cert, issuer in itertools.pairwise(chain):
        check_revocation(cert, issuer, crls, now=now, kind=kind, what=what)
    return tuple(chain)


def check_revocation(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Sequence[x509.CertificateRevocationList],
    *,
    now: datetime,
    kind: EvidenceType,
    what: str,
) -> None:
    """Refuse `cert` if a current CRL signed by `issuer` lists it. CRLs of that issuer that are
    not current at `now` are ignored while a current one exists; if only stale ones exist, the
    collateral has expired (a stale list is not a pass)."""
    mine = [crl for crl in crls if crl.issuer == issuer.subject and _signed_by(crl, issuer)]
    if not mine:
        return
    current = [
        crl
        for crl in mine
        if crl.last_update_utc <= now
        and (crl.next_update_utc is None or now <= crl.next_update_utc)
    ]
    if not current:
        newest = max(mine, key=lambda crl: crl.last_update_utc)
        next_update = newest.next_update_utc
        raise EvidenceError(
            f"{what}: the revocation list of {_cn(issuer)} is valid from "
            f"{newest.last_update_utc.isoformat()} to "
            f"{next_update.isoformat() if next_update else 'forever'}, not at {now.isoformat()}; "
            "fetch a current one",
            reason=Reason.COLLATERAL_EXPIRED,
            evidence_type=kind,
        )
    for crl in current:
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise EvidenceError(
                f"{what}: {_cn(cert)} (serial {cert.serial_number:x}) is revoked by "
                f"{_cn(issuer)}'s revocation list",
                reason=Reason.PLATFORM_CERT_REVOKED,
                evidence_type=kind,
            )


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def untrusted(kind: EvidenceType, message: str) -> EvidenceError:
    return EvidenceError(message, reason=Reason.PLATFORM_CERT_UNTRUSTED, evidence_type=kind)


def _cn(cert: x509.Certificate) -> str:
    return _name(cert.subject)


def _name(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = cns[0].value if cns else name.rfc4514_string()
    text = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return repr(text[:64])
