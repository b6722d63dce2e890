"""Tests for netshield.pki.csr: building CSRs and parsing untrusted ones at the CAS."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netshield.errors import CsrError
from netshield.identity import SpiffeId
from netshield.pki.ca import spiffe_id_of
from netshield.pki.csr import build_csr, parse_csr
from netshield.pki.keys import generate_key, public_key_der
from netshield.reasons import Reason

ORDERS = SpiffeId.for_service("example.org", "orders")
KEY = generate_key()
CSR_PEM = build_csr(KEY, ORDERS)
CSR_DER = x509.load_pem_x509_csr(CSR_PEM).public_bytes(serialization.Encoding.DER)


def _armor(der: bytes, label: str = "CERTIFICATE REQUEST") -> bytes:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


def _csr_for(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orders")])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _refused(data: bytes | str, match: str, **kwargs: int) -> None:
    with pytest.raises(CsrError, match=match) as caught:
        parse_csr(data, **kwargs)
    assert caught.value.reason is Reason.CSR_MALFORMED
    assert "\n" not in str(caught.value)


def test_built_csr_parses_with_its_identity_and_key() -> None:
    csr = parse_csr(CSR_PEM)
    assert spiffe_id_of(csr) == ORDERS
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "orders"
    assert public_key_der(csr.public_key()) == public_key_der(KEY)
    assert parse_csr(CSR_PEM.decode()).public_bytes(serialization.Encoding.DER) == CSR_DER


def test_built_csr_is_verified_by_openssl(tmp_path: Path) -> None:
    (tmp_path / "req.pem").write_bytes(CSR_PEM)
    result = subprocess.run(
        ["openssl", "req", "-in", str(tmp_path / "req.pem"), "-noout", "-verify", "-text"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "verify OK" in result.stdout + result.stderr
    assert "URI:spiffe://example.org/svc/orders" in result.stdout


def test_parse_csr_refuses_non_pem() -> None:
    _refused(CSR_DER, "not PEM")
    _refused("grüße", "non-ASCII")


def test_parse_csr_refuses_malformed_pem() -> None:
    _refused(_armor(b"\x30\x03\x02\x01\x00"), "not a valid PEM PKCS#10")
    _refused(CSR_PEM.replace(b"-----END", b"-----XND"), "not a valid PEM PKCS#10")
    # version 75 instead of v1 (0): cryptography raises InvalidVersion, not ValueError
    bad_version = CSR_DER.replace(b"\x02\x01\x00", b"\x02\x01\x4b", 1)
    _refused(_armor(bad_version), "not a valid PEM PKCS#10")


def test_parse_csr_refuses_a_csr_larger_than_the_limit() -> None:
    assert parse_csr(CSR_PEM, max_bytes=len(CSR_PEM))
    _refused(CSR_PEM, "too large", max_bytes=len(CSR_PEM) - 1)
    _refused(CSR_PEM + b" " * 20000, "too large")


def test_parse_csr_refuses_a_bad_self_signature() -> None:
    # Same structure, one byte of the subject changed: the DER still parses, the signature fails.
    index = CSR_DER.index(b"orders")
    tampered = CSR_DER[:index] + b"x" + CSR_DER[index + 1 :]
    _refused(_armor(tampered), "self-signature does not verify")


def test_parse_csr_refuses_keys_other_than_p256() -> None:
    assert parse_csr(_csr_for(generate_key()))
    _refused(_csr_for(ec.generate_private_key(ec.SECP384R1())), "not an ECDSA P-256 key")
    _refused(_csr_for(ed25519.Ed25519PrivateKey.generate()), "not an ECDSA P-256 key")


def test_parse_csr_accepts_the_new_certificate_request_label() -> None:
    assert parse_csr(_armor(CSR_DER, "NEW CERTIFICATE REQUEST"))
    _refused(_armor(CSR_DER, "CERTIFICATE"), "not a valid PEM PKCS#10")


@st.composite
def mutated_csr(draw: st.DrawFn) -> bytes:
    """The valid CSR's DER with a few bytes replaced, re-armored: reaches the DER parser."""
    data = bytearray(CSR_DER)
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return _armor(bytes(data))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.text(max_size=500),
        st.binary(max_size=600).map(_armor),
        mutated_csr(),
    )
)
def test_parse_csr_returns_a_csr_or_raises_csr_error(data: bytes | str) -> None:
    try:
        csr = parse_csr(data)
    except CsrError as exc:
        assert exc.reason is Reason.CSR_MALFORMED
        assert "\n" not in str(exc)
        return
    assert csr.is_signature_valid
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
