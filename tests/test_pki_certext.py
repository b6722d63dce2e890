"""Tests for netshield.pki.certext: the DER codec, the claims types and their extensions."""

from __future__ import annotations

import contextlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from netshield.identity import SpiffeId
from netshield.pki.ca import create_root_ca, issue_certificate, issue_platform_certificate
from netshield.pki.certext import (
    ATTESTATION_CLAIMS_OID,
    PLATFORM_CLAIMS_OID,
    AttestationClaims,
    DerValue,
    PlatformClaims,
    attestation_claims_of,
    decode_attestation_claims,
    decode_der_sequence,
    decode_platform_claims,
    encode_attestation_claims,
    encode_der_sequence,
    encode_platform_claims,
    platform_claims_of,
)
from netshield.pki.keys import generate_key

NOW = datetime(2030, 1, 1, tzinfo=UTC)
DIGEST = "0123456789abcdef" * 4

der_values = st.one_of(st.binary(max_size=300), st.text(max_size=100), st.integers(), st.booleans())
claim_ints = st.integers(min_value=0, max_value=2**63 - 1)
attestation_claims = st.builds(
    AttestationClaims,
    measurement=st.binary(min_size=32, max_size=32).map(bytes.hex),
    policy_version=claim_ints,
    epoch=claim_ints,
)
platform_claims = st.builds(
    PlatformClaims,
    platform_id=st.text(min_size=1, max_size=255),
    tcb_level=claim_ints,
    debug=st.none() | st.booleans(),
)


@st.composite
def mutated(draw: st.DrawFn, encoded: st.SearchStrategy[bytes]) -> bytes:
    """Valid encodings with a few bytes replaced, inserted or removed: near-miss garbage."""
    data = bytearray(draw(encoded))
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        if action == "insert" or not data or position == len(data):
            data.insert(position, draw(st.integers(0, 255)))
        elif action == "replace":
            data[position] = draw(st.integers(0, 255))
        else:
            del data[position]
    return bytes(data)


# --- the DER codec ------------------------------------------------------------------------------


def test_der_encoding_matches_known_vector() -> None:
    encoded = encode_der_sequence([b"\x01\x02", "hé", 0, 127, 128, -1, -129])
    expected = "301a 04020102 0c0368c3a9 020100 02017f 02020080 0201ff 0202ff7f"
    assert encoded == bytes.fromhex(expected)
    assert decode_der_sequence(encoded) == [b"\x01\x02", "hé", 0, 127, 128, -1, -129]


def test_der_encoding_uses_long_form_lengths_only_when_needed() -> None:
    assert encode_der_sequence([b"\x00" * 125])[:2] == bytes.fromhex("307f")
    assert encode_der_sequence([b"\x00" * 126])[:3] == bytes.fromhex("308180")
    assert encode_der_sequence([b"\x00" * 300])[:4] == bytes.fromhex("3082") + (304).to_bytes(2)


def test_der_encoding_is_read_by_openssl(tmp_path: Path) -> None:
    encoded = encode_der_sequence([b"\xaa" * 200, "platform-1", 2**70])
    path = tmp_path / "seq.der"
    path.write_bytes(encoded)
    out = subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER", "-in", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "SEQUENCE" in out
    assert "OCTET STRING" in out
    assert "UTF8STRING        :platform-1" in out
    assert "INTEGER           :400000000000000000" in out


def test_der_encoding_is_refused_by_openssl_when_truncated(tmp_path: Path) -> None:
    path = tmp_path / "seq.der"
    path.write_bytes(encode_der_sequence([b"\xaa" * 200, "platform-1"])[:-3])
    result = subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER", "-in", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 or "Error" in result.stdout + result.stderr


@given(st.lists(der_values, max_size=8))
def test_der_sequence_roundtrips(items: list[DerValue]) -> None:
    assert decode_der_sequence(encode_der_sequence(items)) == items


@given(st.binary(max_size=300))
def test_der_decoder_raises_only_value_error_on_arbitrary_bytes(data: bytes) -> None:
    try:
        items = decode_der_sequence(data)
    except ValueError:
        return
    # DER is canonical: whatever decodes re-encodes to exactly the same bytes.
    assert encode_der_sequence(items) == data


@given(mutated(st.lists(der_values, max_size=6).map(encode_der_sequence)))
def test_der_decoder_accepts_only_canonical_encodings_of_near_misses(data: bytes) -> None:
    try:
        items = decode_der_sequence(data)
    except ValueError:
        return
    assert encode_der_sequence(items) == data


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (bytes.fromhex("3003020100"), "valid (control)"),
        (bytes.fromhex("300402020001"), "non-minimal INTEGER"),
        (bytes.fromhex("30040202ff80"), "non-minimal negative"),
        (bytes.fromhex("30810300"), "non-minimal length"),
        (bytes.fromhex("30800201000000"), "indefinite length"),
        (bytes.fromhex("300302010000"), "trailing byte"),
        (bytes.fromhex("30020500"), "NULL is not supported"),
        (bytes.fromhex("31020200"), "SET, not SEQUENCE"),
        (bytes.fromhex("30020200"), "empty INTEGER"),
        (bytes.fromhex("30030c01ff"), "invalid UTF-8"),
        (bytes.fromhex("3005020100"), "length beyond the data"),
        (bytes.fromhex("3f"), "truncated header"),
    ],
)
def test_der_decoder_refuses_non_der(data: bytes, why: str) -> None:
    if why.startswith("valid"):
        assert decode_der_sequence(data) == [0]
    else:
        with pytest.raises(ValueError):
            decode_der_sequence(data)


def test_der_encoder_keeps_bool_and_int_apart() -> None:
    assert encode_der_sequence([1]) == bytes.fromhex("3003020101")
    assert encode_der_sequence([True]) == bytes.fromhex("30030101ff")  # a BOOLEAN, not INTEGER 1
    assert type(decode_der_sequence(bytes.fromhex("3003020101"))[0]) is int


# --- the claims ---------------------------------------------------------------------------------


@given(attestation_claims)
def test_attestation_claims_roundtrip(claims: AttestationClaims) -> None:
    assert decode_attestation_claims(encode_attestation_claims(claims)) == claims


@given(platform_claims)
def test_platform_claims_roundtrip(claims: PlatformClaims) -> None:
    assert decode_platform_claims(encode_platform_claims(claims)) == claims


@given(
    st.one_of(
        st.binary(max_size=200),
        mutated(attestation_claims.map(encode_attestation_claims)),
        mutated(platform_claims.map(encode_platform_claims)),
        st.lists(der_values, max_size=4).map(encode_der_sequence),
    )
)
def test_claims_decoders_raise_only_value_error_on_garbage(data: bytes) -> None:
    for decode in (decode_attestation_claims, decode_platform_claims):
        with contextlib.suppress(ValueError):
            assert isinstance(decode(data), AttestationClaims | PlatformClaims)


def test_attestation_claims_decoder_refuses_wrong_shapes() -> None:
    good = decode_attestation_claims(encode_der_sequence([b"\x00" * 32, 1, 2, "p1"]))
    assert (good.epoch, good.platform_id) == (2, "p1")
    shapes: list[list[DerValue]] = [
        [b"\x00" * 31, 1, 2, "p1"],  # short digest
        [b"\x00" * 32, 1, 2],  # missing platform id
        [b"\x00" * 32, 1, 2, 3],  # platform id as integer
        [b"\x00" * 32, 1, 2, "p1", 3],  # extra element
        [b"\x00" * 32, -1, 2, "p1"],  # negative version
        [b"\x00" * 32, 1, 2**63, "p1"],  # out of range
        ["00" * 32, 1, 2, "p1"],  # digest as text
        [b"\x00" * 32, 1, 2, "p" * 256],  # platform id too long
    ]
    for items in shapes:
        with pytest.raises(ValueError):
            decode_attestation_claims(encode_der_sequence(items))


def test_platform_claims_decoder_refuses_wrong_shapes() -> None:
    # a certificate from before the debug claim: nothing about debug is certified
    assert decode_platform_claims(encode_der_sequence(["p1", 3])) == PlatformClaims("p1", 3, None)
    assert decode_platform_claims(encode_der_sequence(["p1", 3, True])) == PlatformClaims(
        "p1", 3, True
    )
    shapes: list[list[DerValue]] = [
        ["", 3],
        [b"p1", 3],
        ["p1"],
        ["p1", -3],
        ["p1", 3, 4],  # debug must be a BOOLEAN, not an INTEGER
        ["p1", True, False],  # and the TCB level an INTEGER, not a BOOLEAN
        ["p1", 3, False, False],
    ]
    for items in shapes:
        with pytest.raises(ValueError):
            decode_platform_claims(encode_der_sequence(items))


def test_claims_refuse_invalid_values_on_construction() -> None:
    AttestationClaims(DIGEST, 0, 0)
    with pytest.raises(ValueError):
        AttestationClaims(DIGEST.upper(), 0, 0)
    with pytest.raises(ValueError):
        AttestationClaims(DIGEST[:-1], 0, 0)
    with pytest.raises(ValueError):
        AttestationClaims(DIGEST, True, 0)
    with pytest.raises(ValueError):
        AttestationClaims(DIGEST, 0, -1)
    PlatformClaims("p", 0)
    with pytest.raises(ValueError):
        PlatformClaims("", 0)
    with pytest.raises(ValueError):
        PlatformClaims("p" * 256, 0)


def test_private_oids_are_distinct_uuid_arcs() -> None:
    for oid in (ATTESTATION_CLAIMS_OID, PLATFORM_CLAIMS_OID):
        arc, _, number = oid.dotted_string.partition(".25.")
        assert arc == "2"
        assert 0 < int(number) < 2**128
    assert ATTESTATION_CLAIMS_OID != PLATFORM_CLAIMS_OID


# --- in certificates ----------------------------------------------------------------------------


def _leaf(claims: AttestationClaims | None) -> x509.Certificate:
    ca = create_root_ca("mesh", now=NOW)
    return issue_certificate(
        ca,
        public_key=generate_key().public_key(),
        spiffe_id=SpiffeId.for_service("example.org", "orders"),
        now=NOW,
        lifetime=timedelta(minutes=10),
        claims=claims,
    )


def test_attestation_claims_are_read_back_from_a_leaf() -> None:
    claims = AttestationClaims(DIGEST, 7, 3)
    cert = _leaf(claims)
    assert attestation_claims_of(cert) == claims
    assert not cert.extensions.get_extension_for_oid(ATTESTATION_CLAIMS_OID).critical
    assert platform_claims_of(cert) is None


def test_leaf_without_claims_has_none() -> None:
    assert attestation_claims_of(_leaf(None)) is None


def test_platform_claims_are_read_back_from_a_platform_cert() -> None:
    vendor = create_root_ca("vendor", now=NOW)
    cert = issue_platform_certificate(
        vendor,
        public_key=generate_key().public_key(),
        platform_id="p-1",
        tcb_level=4,
        debug=False,
        now=NOW,
    )
    assert platform_claims_of(cert) == PlatformClaims("p-1", 4, False)
    assert attestation_claims_of(cert) is None


def test_malformed_claims_extension_raises_value_error() -> None:
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
    )
    good = builder.add_extension(
        x509.UnrecognizedExtension(PLATFORM_CLAIMS_OID, encode_der_sequence(["p", 1])),
        critical=False,
    ).sign(key, hashes.SHA256())
    assert platform_claims_of(good) == PlatformClaims("p", 1, None)
    bad = builder.add_extension(
        x509.UnrecognizedExtension(PLATFORM_CLAIMS_OID, b"\x30\x03\x02\x01"), critical=False
    ).sign(key, hashes.SHA256())
    assert bad.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ValueError):
        platform_claims_of(bad)


def test_der_boolean_is_one_octet_00_or_ff() -> None:
    assert encode_der_sequence([True, False]) == b"\x30\x06\x01\x01\xff\x01\x01\x00"
    assert decode_der_sequence(b"\x30\x06\x01\x01\xff\x01\x01\x00") == [True, False]
    for bad in (b"\x30\x03\x01\x01\x01", b"\x30\x04\x01\x02\xff\xff", b"\x30\x02\x01\x00"):
        with pytest.raises(ValueError):
            decode_der_sequence(bad)
