"""The quote codec: exact schema, canonical forms, and the two decoding reason codes."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from netshield.attestation.quote import (
    QUOTE_FORMAT,
    Quote,
    QuoteBody,
    decode_quote,
    encode_body,
    encode_quote,
    report_data_for,
)
from netshield.errors import QuoteError
from netshield.reasons import Reason

HEX_A = hashlib.sha256(b"a").hexdigest()
HEX_B = hashlib.sha256(b"b").hexdigest()
PEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def body_fields(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "format": QUOTE_FORMAT,
        "measurement": HEX_A,
        "signer": HEX_B,
        "product_id": 7,
        "svn": 3,
        "platform_id": "host-a",
        "tcb_level": 2,
        "debug": False,
        "report_data": HEX_A,
    }
    fields.update(changes)
    return fields


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def envelope(body_bytes: bytes | None = None, **changes: object) -> dict[str, object]:
    env: dict[str, object] = {
        "format": QUOTE_FORMAT,
        "body": b64(body_bytes if body_bytes is not None else canonical(body_fields())),
        "signature": b64(b"\x30\x06\x02\x01\x01\x02\x01\x01"),
        "platform_cert": PEM,
    }
    env.update(changes)
    return env


def wire(env: dict[str, object]) -> bytes:
    return json.dumps(env).encode()


def assert_refused(data: bytes, reason: Reason = Reason.QUOTE_MALFORMED) -> QuoteError:
    with pytest.raises(QuoteError) as info:
        decode_quote(data)
    assert info.value.reason is reason
    assert "\n" not in str(info.value)
    return info.value


def test_decode_quote_accepts_a_well_formed_quote():
    quote = decode_quote(wire(envelope()))
    assert quote.body == QuoteBody(**body_fields())  # type: ignore[arg-type]
    assert quote.body_bytes == canonical(body_fields())
    assert quote.signature == b"\x30\x06\x02\x01\x01\x02\x01\x01"
    assert quote.platform_cert_pem == PEM.encode()


def test_encode_body_is_canonical_json():
    body = QuoteBody(**body_fields(platform_id="hôst"))  # type: ignore[arg-type]
    assert encode_body(body) == canonical(body_fields(platform_id="hôst"))
    assert b" " not in encode_body(body)


def test_encode_quote_roundtrips_through_decode_quote():
    body = QuoteBody(**body_fields())  # type: ignore[arg-type]
    quote = Quote(body, encode_body(body), b"sig", PEM.encode())
    assert decode_quote(encode_quote(quote)) == quote


def test_decode_quote_names_another_format_as_unsupported():
    decode_quote(wire(envelope()))
    err = assert_refused(
        wire(envelope(format="netshield-sim-quote/2")), Reason.QUOTE_FORMAT_UNSUPPORTED
    )
    assert "netshield-sim-quote/2" in str(err)
    # a hardware format with its own envelope keys is named as such, not as garbage
    assert_refused(wire({"format": "sgx-dcap/3", "quote": "..."}), Reason.QUOTE_FORMAT_UNSUPPORTED)


def test_decode_quote_refuses_a_body_whose_format_differs_from_the_envelope():
    decode_quote(wire(envelope()))
    body = canonical(body_fields(format="netshield-sim-quote/2"))
    assert_refused(wire(envelope(body)), Reason.QUOTE_MALFORMED)


def test_decode_quote_refuses_input_over_the_size_limit():
    data = wire(envelope())
    assert decode_quote(data, max_bytes=len(data))
    assert_refused(data + b" " * 65536)
    with pytest.raises(QuoteError, match="limit"):
        decode_quote(data, max_bytes=len(data) - 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[]",
        b'"quote"',
        b"[" * 50000,
        b'{"format": NaN}',
        b'{"format":"netshield-sim-quote/1","format":"netshield-sim-quote/1"}',
    ],
)
def test_decode_quote_refuses_input_that_is_not_a_json_object(data):
    decode_quote(wire(envelope()))
    assert_refused(data)


@pytest.mark.parametrize(
    "changes",
    [
        {"extra": 1},
        {"format": 1},
        {"body": 5},
        {"signature": None},
        {"signature": ""},
        {"platform_cert": ["x"]},
        {"platform_cert": ""},
        {"platform_cert": "é"},
        {"body": b64(b"x") + "="},  # padded
        {"body": "a+b/"},  # not url-safe
        {"body": "abcde"},  # impossible length
        {"body": "QR"},  # non-canonical trailing bits (canonical: "QQ")
    ],
)
def test_decode_quote_refuses_envelopes_outside_the_schema(changes):
    decode_quote(wire(envelope()))
    assert_refused(wire(envelope(**changes)))


@pytest.mark.parametrize("key", ["format", "body", "signature", "platform_cert"])
def test_decode_quote_refuses_an_envelope_missing_a_key(key):
    decode_quote(wire(envelope()))
    env = envelope()
    del env[key]
    assert_refused(wire(env))


@pytest.mark.parametrize(
    "changes",
    [
        {"extra": True},
        {"measurement": HEX_A.upper()},
        {"measurement": HEX_A[:-1]},
        {"signer": 5},
        {"report_data": HEX_A + "0"},
        {"product_id": -1},
        {"svn": 2**32},
        {"tcb_level": True},
        {"tcb_level": 1.0},
        {"tcb_level": "1"},
        {"debug": 0},
        {"debug": None},
        {"platform_id": ""},
        {"platform_id": "a\nb"},
        {"platform_id": "x" * 256},
        {"platform_id": 1},
    ],
)
def test_decode_quote_refuses_bodies_outside_the_schema(changes):
    decode_quote(wire(envelope(canonical(body_fields()))))
    assert_refused(wire(envelope(canonical(body_fields(**changes)))))


def test_decode_quote_accepts_integers_at_the_edges_of_the_range():
    for value in (0, 2**32 - 1):
        body = canonical(body_fields(product_id=value, svn=value, tcb_level=value))
        assert decode_quote(wire(envelope(body))).body.svn == value


@pytest.mark.parametrize("key", ["measurement", "debug", "format"])
def test_decode_quote_refuses_a_body_missing_a_key(key):
    fields = body_fields()
    del fields[key]
    assert_refused(wire(envelope(canonical(fields))))


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(body_fields()).encode(),  # spaces
        json.dumps(body_fields(), sort_keys=True, indent=1).encode(),
        canonical(body_fields())[:-1] + b',"debug":false}',  # duplicate key
        canonical(body_fields(platform_id="hôst")).replace("ô".encode(), b"\\u00f4"),
    ],
)
def test_decode_quote_refuses_a_body_not_in_canonical_form(body):
    decode_quote(wire(envelope(canonical(body_fields(platform_id="hôst")))))
    assert_refused(wire(envelope(body)))


def test_report_data_binds_the_public_key_and_the_nonce():
    key, nonce = b"\x30\x59public-key-der", b"n" * 32
    value = report_data_for(key, nonce)
    assert value == hashlib.sha256(key + nonce).hexdigest()
    assert report_data_for(key, b"m" * 32) != value
    assert report_data_for(b"\x30\x59other-key-der", nonce) != value
