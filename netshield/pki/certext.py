"""netshield's private X.509 extensions: attestation claims (mesh leaves) and platform claims.

Responsibility: the two claim types, their DER encoding, and reading them back from certificates.
Guarantees: a claims value is always well-formed (checked on construction); encoding is DER, so
every value has exactly one encoding; decoding accepts exactly that encoding and raises only
`ValueError` on anything else (non-minimal lengths or integers, unknown tags, trailing bytes).

ASN.1 (both extensions are non-critical):

    -- netshield attestation claims, in every mesh leaf the CAS issues
    AttestationClaims ::= SEQUENCE {
        measurement    OCTET STRING (SIZE (32 | 48)), -- SHA-256 workload measurement, or the
                                                    -- SEV-SNP / TDX 48-byte one
        policyVersion  INTEGER (0..2^63-1),        -- policy version the CAS appraised against
        epoch          INTEGER (0..2^63-1),        -- the policy's certificate epoch
        platformId     UTF8String (SIZE (0..255)) } -- the attested platform ("" if unknown)

    -- netshield platform claims, in every simulated platform certificate: everything the CAS
    -- decides on about a platform is certified here by the vendor, never taken from the quote
    PlatformClaims ::= SEQUENCE {
        platformId     UTF8String (SIZE (1..255)),
        tcbLevel       INTEGER (0..2^63-1),
        debug          BOOLEAN OPTIONAL }  -- absent only in certificates made before it existed:
                                           -- such a platform's debug flag is not certified
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

# Private OIDs under the UUID arc 2.25 (ITU-T X.667: "2.25." + a UUID read as a 128-bit integer).
# All were generated with uuid.uuid4() for netshield, so no one else allocates them; they are
# part of the certificate format and never change.
ATTESTATION_CLAIMS_OID = x509.ObjectIdentifier("2.25.233428180257033172604291649643794022069")
PLATFORM_CLAIMS_OID = x509.ObjectIdentifier("2.25.158773762538349970503426693388393751399")
# The extended key usage of the CAS's checkpoint signing certificate (`pki.checkpoint`).
CHECKPOINT_SIGNING_OID = x509.ObjectIdentifier("2.25.241795272192112030007925945126746490143")

MAX_CLAIM_INT = 2**63 - 1
MAX_PLATFORM_ID_CHARS = 255
_MEASUREMENT = re.compile(r"[0-9a-f]{64}|[0-9a-f]{96}")

# ---------------------------------------------------------------------------------------------
# A minimal DER codec: one SEQUENCE of UTF8String / OCTET STRING / INTEGER / BOOLEAN.

_TAG_BOOLEAN = 0x01
_TAG_SEQUENCE = 0x30
_TAG_UTF8STRING = 0x0C
_TAG_OCTET_STRING = 0x04
_TAG_INTEGER = 0x02
_MAX_LENGTH_OCTETS = 4

DerValue = bytes | str | int | bool
"""A SEQUENCE element: bytes = OCTET STRING, str = UTF8String, int = INTEGER, bool = BOOLEAN."""


def encode_der_sequence(items: Sequence[DerValue]) -> bytes:
    """DER of a SEQUENCE of the given elements (a bool is a BOOLEAN, never an INTEGER)."""
    body = b"".join(_encode_element(item) for item in items)
    return _tlv(_TAG_SEQUENCE, body)


def decode_der_sequence(data: bytes) -> list[DerValue]:
    """The elements of a DER SEQUENCE that is all of `data`; `ValueError` on anything else."""
    tag, content, end = _read_tlv(data, 0)
    if tag != _TAG_SEQUENCE:
        raise ValueError(f"expected a DER SEQUENCE, found tag 0x{tag:02x}")
    if end != len(data):
        raise ValueError(f"{len(data) - end} trailing byte(s) after the DER SEQUENCE")
    items: list[DerValue] = []
    offset = 0
    while offset < len(content):
        tag, value, offset = _read_tlv(content, offset)
        items.append(_decode_element(tag, value))
    return items


def _encode_element(item: DerValue) -> bytes:
    if isinstance(item, bool):
        return _tlv(_TAG_BOOLEAN, b"\xff" if item else b"\x00")
    if isinstance(item, bytes):
        return _tlv(_TAG_OCTET_STRING, item)
    if isinstance(item, str):
        return _tlv(_TAG_UTF8STRING, item.encode("utf-8"))
    if isinstance(item, int):
        magnitude = item if item >= 0 else ~item
        return _tlv(
            _TAG_INTEGER, item.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True)
        )
    raise TypeError(f"cannot DER-encode {type(item).__name__}")


def _decode_element(tag: int, value: bytes) -> DerValue:
    if tag == _TAG_BOOLEAN:
        if value not in (b"\x00", b"\xff"):
            raise ValueError("DER BOOLEAN is not one octet 0x00 or 0xff")
        return value == b"\xff"
    if tag == _TAG_OCTET_STRING:
        return value
    if tag == _TAG_UTF8STRING:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("UTF8String is not valid UTF-8") from None
    if tag == _TAG_INTEGER:
        if not value:
            raise ValueError("empty DER INTEGER")
        if len(value) > 1 and (
            (value[0] == 0x00 and value[1] < 0x80) or (value[0] == 0xFF and value[1] >= 0x80)
        ):
            raise ValueError("DER INTEGER is not minimally encoded")
        return int.from_bytes(value, "big", signed=True)
    raise ValueError(f"unsupported DER tag 0x{tag:02x}")


def _tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        header = bytes([tag, length])
    else:
        octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([tag, 0x80 | len(octets)]) + octets
    return header + content


def _read_tlv(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(tag, content, offset after the element) of the element starting at `offset`."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER element header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not supported")
    first = data[offset + 1]
    offset += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise ValueError("indefinite lengths are not DER")
        if count > _MAX_LENGTH_OCTETS:
            raise ValueError("DER length too large")
        if offset + count > len(data):
            raise ValueError("truncated DER length")
        octets = data[offset : offset + count]
        if octets[0] == 0:
            raise ValueError("DER length is not minimally encoded")
        length = int.from_bytes(octets, "big")
        if length < 0x80:
            raise ValueError("DER length is not minimally encoded")
        offset += count
    end = offset + length
    if end > len(data):
        raise ValueError("truncated DER element")
    return tag, data[offset:end], end


# ---------------------------------------------------------------------------------------------
# The claims.


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    if not 0 <= value <= MAX_CLAIM_INT:
        raise ValueError(f"{name} must be between 0 and 2**63-1")


@dataclass(frozen=True, slots=True)
class AttestationClaims:
    """What the CAS attested for a mesh certificate. Invalid values raise `ValueError`."""

    measurement: str  # lower-case hex: SHA-256 (64), or SEV-SNP / TDX launch measurement (96)
    policy_version: int
    epoch: int
    platform_id: str = ""  # the attested platform; "" when unknown (sidecars then match by serial)

    def __post_init__(self) -> None:
        if not isinstance(self.measurement, str) or not _MEASUREMENT.fullmatch(self.measurement):
            raise ValueError("measurement must be 64 or 96 lower-case hex characters")
        _check_int("policy_version", self.policy_version)
        _check_int("epoch", self.epoch)
        if not isinstance(self.platform_id, str) or len(self.platform_id) > MAX_PLATFORM_ID_CHARS:
            raise ValueError(
                f"platform_id must be a string of at most {MAX_PLATFORM_ID_CHARS} characters"
            )


@dataclass(frozen=True, slots=True)
class PlatformClaims:
    """What a vendor root certifies about a (simulated) platform. `debug` is None only when
    read from a certificate that predates the debug claim (nothing about debug is certified)."""

    platform_id: str
    tcb_level: int
    debug: bool | None = False

    def __post_init__(self) -> None:
        if not isinstance(self.platform_id, str) or not self.platform_id:
            raise ValueError("platform_id must be a non-empty string")
        if len(self.platform_id) > MAX_PLATFORM_ID_CHARS:
            raise ValueError(f"platform_id must be at most {MAX_PLATFORM_ID_CHARS} characters")
        _check_int("tcb_level", self.tcb_level)
        if self.debug is not None and not isinstance(self.debug, bool):
            raise ValueError("debug must be true, false or None")


def encode_attestation_claims(claims: AttestationClaims) -> bytes:
    """The DER encoding of `claims`."""
    return encode_der_sequence(
        [bytes.fromhex(claims.measurement), claims.policy_version, claims.epoch, claims.platform_id]
    )


def decode_attestation_claims(data: bytes) -> AttestationClaims:
    """Parse the DER of an AttestationClaims; `ValueError` on anything else."""
    items = decode_der_sequence(data)
    match items:
        case [bytes() as digest, int() as policy_version, int() as epoch, str() as platform_id] if (
            len(digest) in (32, 48)
        ):
            return AttestationClaims(digest.hex(), policy_version, epoch, platform_id)
    raise ValueError("not a netshield AttestationClaims SEQUENCE")


def encode_platform_claims(claims: PlatformClaims) -> bytes:
    """The DER encoding of `claims` (the debug element left out only when it is None)."""
    items: list[DerValue] = [claims.platform_id, claims.tcb_level]
    if claims.debug is not None:
        items.append(claims.debug)
    return encode_der_sequence(items)


def decode_platform_claims(data: bytes) -> PlatformClaims:
    """Parse the DER of a PlatformClaims; `ValueError` on anything else."""
    items = decode_der_sequence(data)
    match items:
        case [str() as platform_id, int() as tcb_level] if not isinstance(tcb_level, bool):
            return PlatformClaims(platform_id, tcb_level, None)
        case [str() as platform_id, int() as tcb_level, bool() as debug] if not isinstance(
            tcb_level, bool
        ):
            return PlatformClaims(platform_id, tcb_level, debug)
    raise ValueError("not a netshield PlatformClaims SEQUENCE")


def attestation_claims_extension(claims: AttestationClaims) -> x509.UnrecognizedExtension:
    """The extension value to add (non-critical) to a mesh leaf."""
    return x509.UnrecognizedExtension(ATTESTATION_CLAIMS_OID, encode_attestation_claims(claims))


def platform_claims_extension(claims: PlatformClaims) -> x509.UnrecognizedExtension:
    """The extension value to add (non-critical) to a platform certificate."""
    return x509.UnrecognizedExtension(PLATFORM_CLAIMS_OID, encode_platform_claims(claims))


def attestation_claims_of(cert: x509.Certificate) -> AttestationClaims | None:
    """The certificate's attestation claims; None if absent, `ValueError` if malformed."""
    value = _extension_value(cert, ATTESTATION_CLAIMS_OID)
    return None if value is None else decode_attestation_claims(value)


def platform_claims_of(cert: x509.Certificate) -> PlatformClaims | None:
    """The certificate's platform claims; None if absent, `ValueError` if malformed."""
    value = _extension_value(cert, PLATFORM_CLAIMS_OID)
    return None if value is None else decode_platform_claims(value)


def _extension_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        extension = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    except x509.DuplicateExtension:
        raise ValueError(f"certificate carries extension {oid.dotted_string} twice") from None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ValueError(f"extension {oid.dotted_string} has an unexpected type")
    return value.value
