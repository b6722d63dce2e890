"""The simulated quote: its wire format (``netshield-sim-quote/1``) and a strict codec.

On the wire a quote is a UTF-8 JSON envelope::

    {"format": "netshield-sim-quote/1",
     "body": b64url(body_bytes),          # unpadded base64url of the signed body
     "signature": b64url(DER ECDSA-SHA256 signature over body_bytes),
     "platform_cert": "-----BEGIN CERTIFICATE-----..."}

and ``body_bytes`` is the canonical JSON (sorted keys, no spaces, UTF-8) of a `QuoteBody`. The
signature covers the exact body bytes, never a re-encoding. The CAS API carries the whole
envelope base64-encoded.

Guarantees of `decode_quote`:

- it returns a `Quote` or raises `QuoteError`, never anything else, for any input;
- `QUOTE_FORMAT_UNSUPPORTED` when the input is a JSON object whose ``"format"`` is a string
  other than `QUOTE_FORMAT` (so a newer or hardware format is named as such, not as garbage);
- `QUOTE_MALFORMED` for anything else that is not exactly the schema: size over the limit,
  invalid UTF-8 or JSON, duplicate or missing or extra keys, wrong types, non-canonical base64,
  a body that is not in canonical form, digests that are not 64 lower-case hex characters,
  integers outside 0..2**32-1, a body format that differs from the envelope's;
- it does not check signatures or certificates: that is the verifier's job.

Error messages are one line and never echo more than a short, escaped excerpt of the input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from netshield.errors import QuoteError
from netshield.reasons import Reason

QUOTE_FORMAT = "netshield-sim-quote/1"
MAX_QUOTE_BYTES = 65536
UINT32_MAX = 2**32 - 1
MAX_PLATFORM_ID_CHARS = 255

_HEX64 = re.compile(r"[0-9a-f]{64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ENVELOPE_KEYS = frozenset({"format", "body", "signature", "platform_cert"})
_BODY_INTS = ("product_id", "svn", "tcb_level")
_BODY_HEX = ("measurement", "signer", "report_data")
_BODY_KEYS = frozenset(
    {"format", "platform_id", "debug", *_BODY_INTS, *_BODY_HEX},
)


@dataclass(frozen=True, slots=True)
class QuoteBody:
    """What the platform vouches for. Digests are lower-case 64-hex strings."""

    format: str
    measurement: str
    signer: str
    product_id: int
    svn: int
    platform_id: str
    tcb_level: int
    debug: bool
    report_data: str


@dataclass(frozen=True, slots=True)
class Quote:
    """A decoded quote: the body, the exact bytes that were signed, the signature (DER) and the
    platform certificate (PEM) as carried; none of it verified yet."""

    body: QuoteBody
    body_bytes: bytes
    signature: bytes
    platform_cert_pem: bytes


def encode_body(body: QuoteBody) -> bytes:
    """The canonical JSON encoding of `body`: sorted keys, no spaces, UTF-8."""
    return _canonical_json(asdict(body))


def encode_quote(quote: Quote) -> bytes:
    """The JSON envelope for `quote` (canonical: sorted keys, no spaces)."""
    envelope = {
        "format": quote.body.format,
        "body": _b64url(quote.body_bytes),
        "signature": _b64url(quote.signature),
        "platform_cert": quote.platform_cert_pem.decode("ascii"),
    }
    return _canonical_json(envelope)


def decode_quote(data: bytes, *, max_bytes: int = MAX_QUOTE_BYTES) -> Quote:
    """Decode a quote envelope strictly; see the module docstring for what is refused."""
    raw: object = data  # callers are typed, but the wire is not: guard anyway
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise _malformed("quote is not bytes")
    raw = bytes(raw)
    if len(raw) > max_bytes:
        raise _malformed(f"quote is {len(raw)} bytes, more than the limit of {max_bytes}")
    envelope = _parse_json_object(raw, "quote")
    fmt = envelope.get("format")
    if isinstance(fmt, str) and fmt != QUOTE_FORMAT:
        raise QuoteError(
            f"quote format {_excerpt(fmt)} is not supported (this CAS verifies {QUOTE_FORMAT!r})",
            reason=Reason.QUOTE_FORMAT_UNSUPPORTED,
        )
    _check_keys(envelope, _ENVELOPE_KEYS, "quote")
    for key in ("format", "body", "signature", "platform_cert"):
        if not isinstance(envelope[key], str):
            raise _malformed(f"quote field {key!r} is not a string")
    body_bytes = _unb64url(envelope["body"], "body")
    signature = _unb64url(envelope["signature"], "signature")
    if not signature:
        raise _malformed("quote signature is empty")
    cert_text: str = envelope["platform_cert"]
    if not cert_text or not cert_text.isascii():
        raise _malformed("quote platform_cert is not a PEM certificate")
    body = _decode_body(body_bytes)
    return Quote(body, body_bytes, signature, cert_text.encode("ascii"))


def report_data_for(public_key_der: bytes, nonce: bytes) -> str:
    """SHA-256(public key DER ‖ nonce), lower-case hex: binds a quote to a CSR key and a nonce."""
    return hashlib.sha256(public_key_der + nonce).hexdigest()


def body_problem(body: QuoteBody) -> str | None:
    """Why `body` does not fit the quote schema, or None if it does."""
    fmt: object = body.format
    if not isinstance(fmt, str) or not fmt:
        return "format is not a non-empty string"
    for name in _BODY_HEX:
        value = getattr(body, name)
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            return f"{name} is not a sha256 digest (expected 64 lower-case hex characters)"
    for name in _BODY_INTS:
        value = getattr(body, name)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} is not an integer"
        if not 0 <= value <= UINT32_MAX:
            return f"{name} is outside 0..{UINT32_MAX}"
    debug: object = body.debug
    if not isinstance(debug, bool):
        return "debug is not a boolean"
    pid: object = body.platform_id
    if not isinstance(pid, str) or not pid or len(pid) > MAX_PLATFORM_ID_CHARS:
        return f"platform_id is not a string of 1..{MAX_PLATFORM_ID_CHARS} characters"
    if not pid.isprintable():
        return "platform_id contains control or unprintable characters"
    return None


def _decode_body(body_bytes: bytes) -> QuoteBody:
    fields = _parse_json_object(body_bytes, "quote body")
    _check_keys(fields, _BODY_KEYS, "quote body")
    body = QuoteBody(**fields)
    problem = body_problem(body)
    if problem is not None:
        raise _malformed(f"quote body: {problem}")
    if body.format != QUOTE_FORMAT:
        raise _malformed("quote body format differs from the envelope format")
    if encode_body(body) != body_bytes:
        # One body, one encoding: no duplicate keys, whitespace or escapes for a signature to hide.
        raise _malformed("quote body is not in canonical form")
    return body


def _parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _malformed(f"{what} is not valid UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise _malformed(f"{what} is not a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_keys(obj: dict[str, Any], expected: frozenset[str], what: str) -> None:
    missing = sorted(expected - obj.keys())
    if missing:
        raise _malformed(f"{what} lacks {', '.join(missing)}")
    extra = sorted(obj.keys() - expected)
    if extra:
        raise _malformed(f"{what} has unexpected key {_excerpt(extra[0])}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str, what: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise _malformed(f"quote {what} is not unpadded base64url")
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _malformed(f"quote {what} is not unpadded base64url") from exc
    if _b64url(decoded) != text:
        raise _malformed(f"quote {what} is not canonical base64url")
    return decoded


def _canonical_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def _excerpt(value: str, limit: int = 40) -> str:
    return repr(value[:limit] + ("…" if len(value) > limit else ""))


def _malformed(message: str) -> QuoteError:
    return QuoteError(message, reason=Reason.QUOTE_MALFORMED)
