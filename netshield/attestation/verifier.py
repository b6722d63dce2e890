"""Quote verification: did a trusted platform sign this quote body?

`QuoteVerifier` is the seam where hardware protects us: the CAS holds one verifier and never
looks inside a quote itself; whatever the evidence type, it gets a `VerifiedEvidence` back.
`netshield.attestation.evidence.verifier.EvidenceVerifier` implements it for every type; for
the simulated platform it calls `SimulatedQuoteVerifier`, which verifies
``netshield-sim-quote/1`` quotes against the simulated vendor roots and returns the
simulated platform's own `VerifiedQuote`.

`SimulatedQuoteVerifier.verify` is pure (time is passed in) and checks, in this order, stopping
at the first failure with a `QuoteError` carrying the reason:

1. decoding: `QUOTE_MALFORMED` / `QUOTE_FORMAT_UNSUPPORTED`;
2. the platform certificate parses, is an EC P-256 signing certificate directly signed by one
   of the vendor roots, it and that root are valid at `now`, and it carries `PlatformClaims`:
   else `PLATFORM_CERT_UNTRUSTED`; the body's platform id, TCB level and debug flag are the ones
   the certificate certifies: else `PLATFORM_CLAIM_NOT_CERTIFIED` (a platform cannot vouch for
   a claim its vendor did not certify);
3. the ECDSA-SHA256 signature over the exact body bytes verifies with the platform certificate's
   key: else `QUOTE_SIGNATURE_INVALID`.

It guarantees nothing more: policy (TCB minimum, debug, measurements), nonces and the binding of
report_data to a CSR are the appraisal's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from netshield.attestation.evidence.claims import VerifiedEvidence
from netshield.attestation.quote import QUOTE_FORMAT, Quote, QuoteBody, decode_quote
from netshield.errors import QuoteError
from netshield.pki.certext import platform_claims_of
from netshield.reasons import Reason


@dataclass(frozen=True)
class VerifiedQuote:
    """A quote body whose signature chains to a trusted vendor root; `platform_id`, `tcb_level`
    and the body's debug flag are the certified values (equal to the body's)."""

    body: QuoteBody
    platform_id: str
    tcb_level: int
    platform_cert: x509.Certificate


class QuoteVerifier(Protocol):
    """Verifies evidence of the formats it names; raises QuoteError with a reason on failure."""

    formats: frozenset[str]

    def verify(self, data: bytes, *, now: datetime) -> VerifiedEvidence:
        """The verified content of the wire-encoded evidence `data`, as of `now`."""
        ...


class SimulatedQuoteVerifier:
    """Verifies simulated platform quotes against the simulated vendor root certificates."""

    formats: frozenset[str] = frozenset({QUOTE_FORMAT})

    def __init__(self, vendor_roots: Sequence[x509.Certificate]) -> None:
        if not vendor_roots:
            raise ValueError("SimulatedQuoteVerifier needs at least one vendor root")
        self._roots = tuple(vendor_roots)

    def verify(self, data: bytes, *, now: datetime) -> VerifiedQuote:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        quote = decode_quote(data)
        cert, public_key = self._trusted_platform_cert(quote, now)
        try:
            public_key.verify(quote.signature, quote.body_bytes, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise QuoteError(
                f"quote from platform {quote.body.platform_id!r}: the signature does not "
                "verify with the platform key",
                reason=Reason.QUOTE_SIGNATURE_INVALID,
            ) from exc
        return VerifiedQuote(quote.body, quote.body.platform_id, quote.body.tcb_level, cert)

    def _trusted_platform_cert(
        self, quote: Quote, now: datetime
    ) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
        body = quote.body
        where = f"quote from platform {body.platform_id!r}"
        try:
            certs = x509.load_pem_x509_certificates(quote.platform_cert_pem)
        except ValueError as exc:
            raise _untrusted(f"{where}: the platform certificate is not a PEM certificate") from exc
        if len(certs) != 1:
            raise _untrusted(f"{where}: expected one platform certificate, got {len(certs)}")
        cert = certs[0]
        root = self._issuing_root(cert)
        if root is None:
            raise _untrusted(
                f"{where}: the platform certificate is not signed by a trusted vendor root"
            )
        for label, c in (("platform certificate", cert), ("vendor root", root)):
            if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
                raise _untrusted(
                    f"{where}: the {label} is valid from {c.not_valid_before_utc.isoformat()} "
                    f"to {c.not_valid_after_utc.isoformat()}, not at {now.isoformat()}"
                )
        public_key = cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise _untrusted(f"{where}: the platform key is not an EC P-256 key")
        try:
            may_sign = _may_sign(cert)
            claims = platform_claims_of(cert)
        except ValueError as exc:
            raise _untrusted(f"{where}: the platform certificate has malformed extensions") from exc
        if not may_sign:
            raise _untrusted(f"{where}: the platform certificate is not a signing certificate")
        if claims is None:
            raise _untrusted(f"{where}: the certificate carries no platform claims")
        if (claims.platform_id, claims.tcb_level) != (body.platform_id, body.tcb_level):
            raise _uncertified(
                f"{where} at TCB level {body.tcb_level}: the certificate is for platform "
                f"{claims.platform_id!r} at TCB level {claims.tcb_level}"
            )
        if claims.debug is not body.debug:
            certified = (
                "does not certify the debug flag (re-create the platform)"
                if claims.debug is None
                else f"certifies debug {'on' if claims.debug else 'off'}"
            )
            raise _uncertified(
                f"{where} signs debug {'on' if body.debug else 'off'} but its certificate "
                f"{certified}"
            )
        return cert, public_key

    def _issuing_root(self, cert: x509.Certificate) -> x509.Certificate | None:
        for root in self._roots:
            try:
                cert.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return root
        return None


def _may_sign(cert: x509.Certificate) -> bool:
    """Not a CA, and digitalSignature allowed if key usage is restricted at all."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        pass
    else:
        if constraints.ca:
            return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.digital_signature


def _untrusted(message: str) -> QuoteError:
    return QuoteError(message, reason=Reason.PLATFORM_CERT_UNTRUSTED)


def _uncertified(message: str) -> QuoteError:
    return QuoteError(message, reason=Reason.PLATFORM_CLAIM_NOT_CERTIFIED)
