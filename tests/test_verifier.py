"""The simulated quote verifier: each refusal reason next to its passing twin, with real keys and
certificates from the PKI."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.attestation.platform import Platform, create_platform
from netshield.attestation.quote import (
    QUOTE_FORMAT,
    Quote,
    decode_quote,
    encode_body,
    encode_quote,
)
from netshield.attestation.verifier import QuoteVerifier, SimulatedQuoteVerifier, VerifiedQuote
from netshield.errors import QuoteError
from netshield.pki.ca import create_root_ca, issue_platform_certificate
from netshield.pki.certext import PLATFORM_CLAIMS_OID, encode_der_sequence
from netshield.pki.keys import generate_key
from netshield.reasons import Reason

NOW = datetime(2025, 1, 1, tzinfo=UTC)
MEASUREMENT = hashlib.sha256(b"orders v1").hexdigest()
SIGNER = hashlib.sha256(b"signer").hexdigest()
REPORT_DATA = hashlib.sha256(b"key || nonce").hexdigest()


@pytest.fixture(scope="module")
def vendor():
    return create_root_ca("netshield simulated vendor", now=NOW)


@pytest.fixture(scope="module")
def other_vendor():
    # Same name as the trusted vendor: only the signature tells them apart.
    return create_root_ca("netshield simulated vendor", now=NOW)


@pytest.fixture(scope="module")
def platform(vendor):
    return create_platform(vendor, platform_id="host-a", tcb_level=3, debug=False, now=NOW)


@pytest.fixture(scope="module")
def verifier(vendor):
    return SimulatedQuoteVerifier([vendor.cert])


def make_quote(platform: Platform, measurement: str = MEASUREMENT) -> bytes:
    return platform.quote(
        measurement=measurement, signer=SIGNER, product_id=1, svn=2, report_data=REPORT_DATA
    )


def refused(verifier: SimulatedQuoteVerifier, data: bytes, reason: Reason, now=NOW) -> QuoteError:
    with pytest.raises(QuoteError) as info:
        verifier.verify(data, now=now)
    assert info.value.reason is reason, str(info.value)
    assert "\n" not in str(info.value)
    return info.value


def test_verifier_accepts_a_quote_from_a_certified_platform(verifier, platform):
    result = verifier.verify(make_quote(platform), now=NOW)
    assert isinstance(result, VerifiedQuote)
    assert (result.platform_id, result.tcb_level) == ("host-a", 3)
    assert result.body.measurement == MEASUREMENT
    assert result.body.report_data == REPORT_DATA
    assert result.platform_cert == platform.cert


def test_simulated_verifier_is_a_quote_verifier_for_the_simulated_format(verifier):
    seam: QuoteVerifier = verifier
    assert seam.formats == frozenset({QUOTE_FORMAT})


def test_verifier_needs_at_least_one_vendor_root():
    with pytest.raises(ValueError, match="vendor root"):
        SimulatedQuoteVerifier([])


def test_verifier_refuses_a_naive_now(verifier, platform):
    assert verifier.verify(make_quote(platform), now=NOW)
    with pytest.raises(ValueError, match="timezone"):
        verifier.verify(make_quote(platform), now=NOW.replace(tzinfo=None))


# --- QUOTE_MALFORMED / QUOTE_FORMAT_UNSUPPORTED ----------------------------------------------


def test_verifier_refuses_a_malformed_quote(verifier, platform):
    data = make_quote(platform)
    assert verifier.verify(data, now=NOW)
    refused(verifier, data[:-1], Reason.QUOTE_MALFORMED)


def test_verifier_refuses_a_quote_of_another_format(verifier, platform):
    data = make_quote(platform)
    assert verifier.verify(data, now=NOW)
    other = data.replace(QUOTE_FORMAT.encode(), b"netshield-sim-quote/9", 1)
    refused(verifier, other, Reason.QUOTE_FORMAT_UNSUPPORTED)


# --- PLATFORM_CERT_UNTRUSTED -----------------------------------------------------------------


def test_verifier_refuses_quote_signed_by_platform_of_another_vendor_root(
    vendor, other_vendor, verifier
):
    stranger = create_platform(
        other_vendor, platform_id="host-a", tcb_level=3, debug=False, now=NOW
    )
    err = refused(verifier, make_quote(stranger), Reason.PLATFORM_CERT_UNTRUSTED)
    assert "vendor root" in str(err)
    both = SimulatedQuoteVerifier([vendor.cert, other_vendor.cert])
    assert both.verify(make_quote(stranger), now=NOW).platform_id == "host-a"


def _short_lived_platform(vendor) -> Platform:
    key = generate_key()
    cert = issue_platform_certificate(
        vendor,
        public_key=key.public_key(),
        platform_id="host-a",
        tcb_level=3,
        debug=False,
        now=NOW,
        lifetime=timedelta(days=1),
    )
    return Platform("host-a", 3, False, cert, key)


def test_verifier_refuses_an_expired_platform_certificate(vendor, verifier):
    data = make_quote(_short_lived_platform(vendor))
    assert verifier.verify(data, now=NOW + timedelta(hours=23))
    err = refused(verifier, data, Reason.PLATFORM_CERT_UNTRUSTED, now=NOW + timedelta(days=2))
    assert "valid from" in str(err)


def test_verifier_refuses_a_platform_certificate_not_yet_valid(vendor, verifier):
    data = make_quote(_short_lived_platform(vendor))
    assert verifier.verify(data, now=NOW)
    refused(verifier, data, Reason.PLATFORM_CERT_UNTRUSTED, now=NOW - timedelta(hours=1))


def test_verifier_refuses_a_quote_whose_platform_id_differs_from_the_certificate(
    verifier, platform
):
    assert verifier.verify(make_quote(platform), now=NOW)
    impostor = dataclasses.replace(platform, platform_id="host-b")
    err = refused(verifier, make_quote(impostor), Reason.PLATFORM_CLAIM_NOT_CERTIFIED)
    assert "'host-a'" in str(err)


def test_verifier_refuses_a_quote_claiming_a_higher_tcb_level_than_certified(verifier, platform):
    assert verifier.verify(make_quote(platform), now=NOW)
    upgraded = dataclasses.replace(platform, tcb_level=platform.tcb_level + 1)
    err = refused(verifier, make_quote(upgraded), Reason.PLATFORM_CLAIM_NOT_CERTIFIED)
    assert "TCB level 3" in str(err)


def test_verifier_refuses_a_debug_platform_that_signs_debug_off(vendor, verifier):
    debug = create_platform(vendor, platform_id="host-d", tcb_level=3, debug=True, now=NOW)
    assert verifier.verify(make_quote(debug), now=NOW).body.debug is True
    lying = dataclasses.replace(debug, debug=False)
    err = refused(verifier, make_quote(lying), Reason.PLATFORM_CLAIM_NOT_CERTIFIED)
    assert "signs debug off but its certificate certifies debug on" in str(err)


def test_verifier_refuses_a_platform_whose_certificate_predates_the_debug_claim(vendor, verifier):
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "host-a")])
    legacy = (  # PlatformClaims without the debug element, as certificates were made before it
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(vendor.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(
            x509.UnrecognizedExtension(PLATFORM_CLAIMS_OID, encode_der_sequence(["host-a", 3])),
            critical=False,
        )
        .sign(vendor.key, hashes.SHA256())
    )
    err = refused(
        verifier,
        make_quote(Platform("host-a", 3, False, legacy, key)),
        Reason.PLATFORM_CLAIM_NOT_CERTIFIED,
    )
    assert "does not certify the debug flag" in str(err)


def test_verifier_refuses_the_vendor_root_itself_as_a_platform(vendor, verifier, platform):
    assert verifier.verify(make_quote(platform), now=NOW)
    root_as_platform = Platform("host-a", 3, False, vendor.cert, vendor.key)
    refused(verifier, make_quote(root_as_platform), Reason.PLATFORM_CERT_UNTRUSTED)


def _with_cert_pem(data: bytes, pem: bytes) -> bytes:
    quote = decode_quote(data)
    return encode_quote(dataclasses.replace(quote, platform_cert_pem=pem))


def test_verifier_refuses_a_platform_certificate_that_is_not_pem(verifier, platform):
    data = make_quote(platform)
    assert verifier.verify(_with_cert_pem(data, decode_quote(data).platform_cert_pem), now=NOW)
    refused(verifier, _with_cert_pem(data, b"not a certificate"), Reason.PLATFORM_CERT_UNTRUSTED)


def test_verifier_refuses_a_quote_carrying_two_certificates(vendor, verifier, platform):
    data = make_quote(platform)
    pem = decode_quote(data).platform_cert_pem
    refused(
        verifier, _with_cert_pem(data, pem + vendor.bundle_pem()), Reason.PLATFORM_CERT_UNTRUSTED
    )


# --- QUOTE_SIGNATURE_INVALID -----------------------------------------------------------------


def test_verifier_refuses_a_body_edited_after_signing(verifier, platform):
    quote = decode_quote(make_quote(platform))
    assert verifier.verify(encode_quote(quote), now=NOW)
    body = dataclasses.replace(quote.body, measurement=hashlib.sha256(b"orders v2").hexdigest())
    edited = dataclasses.replace(quote, body=body, body_bytes=encode_body(body))
    refused(verifier, encode_quote(edited), Reason.QUOTE_SIGNATURE_INVALID)


def test_verifier_refuses_a_signature_from_another_key(verifier, platform):
    quote = decode_quote(make_quote(platform))
    assert verifier.verify(encode_quote(quote), now=NOW)
    forged = generate_key().sign(quote.body_bytes, ec.ECDSA(hashes.SHA256()))
    refused(
        verifier,
        encode_quote(dataclasses.replace(quote, signature=forged)),
        Reason.QUOTE_SIGNATURE_INVALID,
    )


def test_verifier_refuses_a_signature_that_is_not_der(verifier, platform):
    quote = decode_quote(make_quote(platform))
    garbage = dataclasses.replace(quote, signature=b"\x00" * 64)
    refused(verifier, encode_quote(garbage), Reason.QUOTE_SIGNATURE_INVALID)


def test_verifier_checks_the_certificate_before_the_signature(other_vendor, verifier, platform):
    # A forged signature on a quote from an untrusted platform is reported as untrusted.
    stranger = create_platform(
        other_vendor, platform_id="host-a", tcb_level=3, debug=False, now=NOW
    )
    quote = decode_quote(make_quote(stranger))
    forged = dataclasses.replace(quote, signature=b"\x00" * 64)
    refused(verifier, encode_quote(forged), Reason.PLATFORM_CERT_UNTRUSTED)


# --- properties ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_quote(platform):
    return make_quote(platform)  # once: ECDSA signatures differ run to run


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_quote_with_any_byte_changed_never_verifies_with_another_body(
    verifier, signed_quote, data
):
    original = signed_quote
    expected = decode_quote(original).body
    index = data.draw(st.integers(0, len(original) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != original[index]))
    changed = original[:index] + bytes([value]) + original[index + 1 :]
    try:
        result = verifier.verify(changed, now=NOW)
    except QuoteError:
        return
    assert result.body == expected


def test_verified_quote_platform_cert_is_the_carried_certificate(verifier, platform):
    data = make_quote(platform)
    pem = platform.cert.public_bytes(serialization.Encoding.PEM)
    assert decode_quote(data).platform_cert_pem == pem
    assert verifier.verify(data, now=NOW).platform_cert == platform.cert


def test_verifier_refuses_a_quote_rewrapped_with_another_platforms_cert(vendor, verifier, platform):
    other = create_platform(vendor, platform_id="host-a", tcb_level=3, debug=False, now=NOW)
    quote = decode_quote(make_quote(platform))
    swapped = Quote(
        quote.body,
        quote.body_bytes,
        quote.signature,
        other.cert.public_bytes(serialization.Encoding.PEM),
    )
    assert verifier.verify(make_quote(other), now=NOW)
    refused(verifier, encode_quote(swapped), Reason.QUOTE_SIGNATURE_INVALID)
