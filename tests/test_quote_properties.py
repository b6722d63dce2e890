"""Property tests for the quote codec: it roundtrips, and nothing decodes into anything but a
Quote or a QuoteError."""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.attestation.quote import (
    QUOTE_FORMAT,
    Quote,
    QuoteBody,
    decode_quote,
    encode_body,
    encode_quote,
)
from netshield.errors import QuoteError
from netshield.reasons import Reason

_hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
_u32 = st.integers(0, 2**32 - 1)
_platform_ids = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn", "Zs")),
    min_size=1,
    max_size=30,
) | st.text(alphabet="abc-_ 0123", min_size=1, max_size=30).filter(str.isprintable)
bodies = st.builds(
    QuoteBody,
    format=st.just(QUOTE_FORMAT),
    measurement=_hex64,
    signer=_hex64,
    product_id=_u32,
    svn=_u32,
    platform_id=_platform_ids.filter(str.isprintable),
    tcb_level=_u32,
    debug=st.booleans(),
    report_data=_hex64,
)
_pems = st.text(alphabet=st.characters(max_codepoint=127), min_size=1, max_size=200)
quotes = st.builds(
    lambda body, sig, pem: Quote(body, encode_body(body), sig, pem.encode("ascii")),
    bodies,
    st.binary(min_size=1, max_size=80),
    _pems,
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)
_envelope_keys = st.sampled_from(["format", "body", "signature", "platform_cert"]) | st.text(
    max_size=8
)
_body_keys = st.sampled_from(
    [
        "format",
        "measurement",
        "signer",
        "product_id",
        "svn",
        "platform_id",
        "tcb_level",
        "debug",
        "report_data",
    ]
) | st.text(max_size=8)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decodes_or_refuses(data: bytes) -> Quote | None:
    try:
        return decode_quote(data)
    except QuoteError as err:
        assert err.reason in (Reason.QUOTE_MALFORMED, Reason.QUOTE_FORMAT_UNSUPPORTED)
        assert "\n" not in str(err)
        return None


@settings(max_examples=100)
@given(quotes)
def test_encode_then_decode_quote_roundtrips(quote):
    data = encode_quote(quote)
    assert decode_quote(data) == quote
    assert encode_quote(decode_quote(data)) == data


@settings(max_examples=150)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_decode_to_a_quote_or_a_quote_error(data):
    _decodes_or_refuses(data)


@settings(max_examples=150)
@given(st.dictionaries(_envelope_keys, _json | st.just(QUOTE_FORMAT), max_size=6))
def test_arbitrary_json_envelopes_decode_to_a_quote_or_a_quote_error(env):
    _decodes_or_refuses(json.dumps(env).encode())


@settings(max_examples=150)
@given(
    body=st.dictionaries(_body_keys, _json | _hex64 | _u32 | st.just(QUOTE_FORMAT), max_size=10),
    sig=st.binary(max_size=10),
    pem=_json,
)
def test_arbitrary_json_bodies_decode_to_a_quote_or_a_quote_error(body, sig, pem):
    body_bytes = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    env = {
        "format": QUOTE_FORMAT,
        "body": _b64(body_bytes),
        "signature": _b64(sig),
        "platform_cert": pem,
    }
    _decodes_or_refuses(json.dumps(env).encode())


@settings(max_examples=100)
@given(quote=quotes, data=st.data())
def test_a_valid_quote_with_one_field_replaced_decodes_or_is_refused(quote, data):
    env = json.loads(encode_quote(quote))
    key = data.draw(st.sampled_from(sorted(env)))
    env[key] = data.draw(_json)
    _decodes_or_refuses(json.dumps(env).encode())


@settings(max_examples=100)
@given(quote=quotes, data=st.data())
def test_a_valid_quote_with_one_byte_changed_decodes_or_is_refused(quote, data):
    encoded = encode_quote(quote)
    index = data.draw(st.integers(0, len(encoded) - 1))
    value = data.draw(st.integers(0, 255))
    _decodes_or_refuses(encoded[:index] + bytes([value]) + encoded[index + 1 :])


@settings(max_examples=100)
@given(quote=quotes, data=st.data())
def test_a_changed_body_byte_never_decodes_to_the_same_body(quote, data):
    # The signature covers body_bytes; a decoded body must determine its bytes exactly.
    index = data.draw(st.integers(0, len(quote.body_bytes) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != quote.body_bytes[index]))
    body_bytes = quote.body_bytes[:index] + bytes([value]) + quote.body_bytes[index + 1 :]
    env = json.loads(encode_quote(quote))
    env["body"] = _b64(body_bytes)
    decoded = _decodes_or_refuses(json.dumps(env).encode())
    assert decoded is None or decoded.body != quote.body
