"""Telling evidence apart: which type a byte string is, and its parsed form.

The CAS API and `netshield evidence verify` take evidence as bytes, in one of these forms:

- a simulated quote: the ``netshield-sim-quote/1`` JSON envelope;
- a raw SEV-SNP ATTESTATION_REPORT (1184 bytes, as ``/dev/sev-guest`` or configfs-tsm give it);
- a raw Intel DCAP quote (SGX v3, TDX v4/v5, as the quote generation library gives it);
- the evidence envelope ``{"format": "netshield-evidence/1", "type": "sev-snp" | "sgx" |
  "tdx", "evidence": <unpadded base64url of the raw report or quote>, "certificates": <PEM
  text, optional>}`` — for SEV-SNP the way to send the VCEK (or VLEK) and its ASK/ARK along.

`decode_evidence` is pure and total: a `Decoded` or a `QuoteError` (an `EvidenceError` naming
the type when it is known) with `QUOTE_MALFORMED` or `QUOTE_FORMAT_UNSUPPORTED`, never any other
exception, whatever the bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from netshield.attestation.evidence import dcap, snp
from netshield.attestation.evidence.binary import u16, u32
from netshield.attestation.evidence.chains import load_certificates
from netshield.attestation.evidence.claims import EvidenceError, EvidenceType
from netshield.attestation.quote import MAX_QUOTE_BYTES, QUOTE_FORMAT, Quote, decode_quote
from netshield.reasons import Reason

ENVELOPE_FORMAT = "netshield-evidence/1"
_ENVELOPE_KEYS = frozenset({"format", "type", "evidence", "certificates"})


@dataclass(frozen=True)
class Decoded:
    """Evidence of a known type, parsed, with the certificates it carried (not yet trusted)."""

    evidence_type: EvidenceType
    parsed: Quote | snp.SnpReport | dcap.DcapQuote
    raw: bytes
    certificates: tuple[x509.Certificate, ...] = ()


def decode_evidence(data: bytes) -> Decoded:
    raw: object = data
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise _malformed(None, "evidence is not bytes")
    data = bytes(raw)
    if len(data) > MAX_QUOTE_BYTES:
        raise _malformed(
            None, f"evidence is {len(data)} bytes, more than the limit of {MAX_QUOTE_BYTES}"
        )
    if data[:1] == b"{":
        return _decode_json(data)
    return _decode_binary(data, None)


def evidence_envelope(kind: EvidenceType, evidence: bytes, certificates_pem: bytes = b"") -> bytes:
    """The ``netshield-evidence/1`` envelope for raw `evidence` and its certificates."""
    doc: dict[str, Any] = {
        "format": ENVELOPE_FORMAT,
        "type": kind,
        "evidence": base64.urlsafe_b64encode(evidence).rstrip(b"=").decode("ascii"),
    }
    if certificates_pem:
        doc["certificates"] = certificates_pem.decode("ascii")
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _decode_binary(data: bytes, expected: EvidenceType | None) -> Decoded:
    if (
        len(data) == snp.REPORT_SIZE
        and u32(data, 0) in snp.VERSIONS
        and expected in (None, "sev-snp")
    ):
        return Decoded("sev-snp", snp.parse_report(data), data)
    if len(data) >= 8 and u16(data, 0) in (3, 4, 5) and u16(data, 2) == dcap.ATT_KEY_ECDSA_P256:
        quote = dcap.parse_quote(data)
        if expected not in (None, quote.kind):
            raise _malformed(
                expected, f"the envelope says {expected} but the evidence is a {quote.kind} quote"
            )
        return Decoded(quote.kind, quote, data)
    if expected == "sev-snp":
        return Decoded("sev-snp", snp.parse_report(data), data)
    if expected is not None:
        dcap.parse_quote(data)  # raises with the reason the bytes are not a quote
    raise _malformed(
        expected,
        f"{len(data)} bytes that are neither a netshield quote, an SEV-SNP report nor a DCAP quote",
    )


def _decode_json(data: bytes) -> Decoded:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and doc.get("format") == ENVELOPE_FORMAT:
        return _decode_envelope(doc)
    return Decoded("sim", decode_quote(data), data)


def _decode_envelope(doc: dict[str, Any]) -> Decoded:
    extra = sorted(set(doc) - _ENVELOPE_KEYS)
    if extra or not {"format", "type", "evidence"} <= set(doc):
        raise _malformed(
            None,
            f"evidence envelope must have format, type, evidence (and certificates); got {sorted(doc)[:6]}",
        )
    kind = doc["type"]
    if kind not in ("sev-snp", "sgx", "tdx"):
        raise EvidenceError(
            f"evidence type {str(kind)[:40]!r} is not one this CAS verifies (sev-snp, sgx, tdx; "
            f"simulated quotes travel as {QUOTE_FORMAT})",
            reason=Reason.QUOTE_FORMAT_UNSUPPORTED,
            evidence_type=None,
        )
    text = doc["evidence"]
    if not isinstance(text, str) or not text or len(text) % 4 == 1:
        raise _malformed(kind, "evidence envelope's evidence is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _malformed(kind, "evidence envelope's evidence is not unpadded base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise _malformed(kind, "evidence envelope's evidence is not canonical base64url")
    certs: tuple[x509.Certificate, ...] = ()
    pem = doc.get("certificates")
    if pem is not None:
        if (
            not isinstance(pem, str)
            or not pem.isascii()
            or "-----BEGIN CERTIFICATE-----" not in pem
        ):
            raise _malformed(kind, "evidence envelope's certificates are not PEM certificates")
        try:
            certs = tuple(load_certificates(pem.encode("ascii")))
        except ValueError:
            raise _malformed(
                kind, "evidence envelope's certificates are not PEM certificates"
            ) from None
    decoded = _decode_binary(raw, kind)
    return Decoded(decoded.evidence_type, decoded.parsed, raw, certs)


def _malformed(kind: EvidenceType | None, message: str) -> EvidenceError:
    return EvidenceError(message, reason=Reason.QUOTE_MALFORMED, evidence_type=kind)
