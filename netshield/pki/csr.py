"""Certificate signing requests: built by the sidecar agent, parsed by the CAS.

Responsibility: build the PKCS#10 request a sidecar sends with its quote, and parse untrusted
requests at the CAS.
Guarantees: `parse_csr` returns only a CSR that is PEM, within the size limit, fully parseable
(subject, extensions, public key), correctly self-signed, over an ECDSA P-256 key; anything else
raises `CsrError` (reason CSR_MALFORMED) with a one-line message, never another exception. The
message describes the problem without echoing the input.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from netshield.errors import CsrError
from netshield.identity import SpiffeId
from netshield.pki.ca import common_name_for
from netshield.pki.keys import is_p256

MAX_CSR_BYTES = 16384

_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def build_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> bytes:
    """A PEM CSR for `spiffe_id`: CN = its name, one URI SAN, signed by `key`."""
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name_for(spiffe_id))])
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def parse_csr(
    pem: bytes | str, *, max_bytes: int = MAX_CSR_BYTES
) -> x509.CertificateSigningRequest:
    """Parse and check an untrusted PEM CSR; `CsrError` if it is not acceptable."""
    if isinstance(pem, str):
        try:
            data = pem.encode("ascii")
        except UnicodeEncodeError:
            raise CsrError("CSR is not PEM: it contains non-ASCII characters") from None
    else:
        data = bytes(pem)
    if len(data) > max_bytes:
        raise CsrError(f"CSR is too large ({len(data)} bytes, the limit is {max_bytes})")
    if b"-----BEGIN" not in data:
        raise CsrError("CSR is not PEM (no '-----BEGIN CERTIFICATE REQUEST-----' line)")
    try:
        csr = x509.load_pem_x509_csr(data)
    except _PARSE_ERRORS:
        raise CsrError("CSR is not a valid PEM PKCS#10 certificate request") from None
    try:
        # Parse everything now, so later reads of the CSR cannot fail on bad input.
        _ = csr.subject
        _ = csr.extensions
        _ = csr.attributes
        public_key = csr.public_key()
    except _PARSE_ERRORS:
        raise CsrError("CSR content is malformed (subject, extensions or public key)") from None
    if not is_p256(public_key):
        raise CsrError("CSR key is not an ECDSA P-256 key")
    try:
        signed = csr.is_signature_valid
    except _PARSE_ERRORS:
        signed = False
    if not signed:
        raise CsrError("CSR self-signature does not verify")
    return csr
