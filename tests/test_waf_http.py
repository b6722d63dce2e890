"""The native route's HTTP/1.1 request parser: incremental, bounded, and fail-closed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.waf import HttpRequest, Limits, ParseError, RequestParser

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: native\r\nUser-Agent: t\r\n\r\n"
POST = b"POST /form HTTP/1.1\r\nHost: native\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"POST /up HTTP/1.1\r\nHost: native\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
)


def parse(chunks: list[bytes], limits: Limits | None = None) -> tuple[list[HttpRequest], str]:
    """Requests parsed, and the rule id of the ParseError that ended it ("" if none)."""
    parser = RequestParser(limits)
    got: list[HttpRequest] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while parser.requests:
                got.append(parser.requests.popleft())
    except ParseError as err:
        got += list(parser.requests)
        return got, err.rule_id
    return got, ""


def test_a_request_is_parsed_with_target_headers_and_body() -> None:
    reqs, err = parse([GET + POST + CHUNKED])
    assert err == ""
    get, post, chunked = reqs
    assert (get.method, get.target, get.version) == ("GET", "/a?b=1", "1.1")
    assert get.header("user-agent") == "t" and get.keep_alive
    assert post.body == b"hello" and chunked.body == b"abcde"


def test_forwarded_bytes_are_the_parsed_request_with_connection_close() -> None:
    (chunked,), _ = parse([CHUNKED])
    again, err = parse([chunked.to_bytes()])
    assert err == "" and again[0].body == b"abcde" and not again[0].keep_alive
    assert b"Transfer-Encoding" not in chunked.to_bytes()
    assert chunked.to_bytes().endswith(b"Content-Length: 5\r\nConnection: close\r\n\r\nabcde")


@pytest.mark.parametrize(
    ("data", "rule_id"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", "NS-920110"),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", "NS-920110"),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", "NS-920110"),
        (b"POST / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n" + b"a" * 70000, "NS-920120"),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", "NS-920130"),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "NS-920130"),
        (b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "NS-920100"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "NS-920100"),
        (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", "NS-920100"),
    ],
    ids=[
        "long-header",
        "long-target",
        "many-headers",
        "big-body",
        "upgrade",
        "connect",
        "smuggle",
        "tls",
        "no-colon",
    ],
)
def test_malformed_or_oversized_requests_are_refused_with_a_protocol_rule(
    data: bytes, rule_id: str
) -> None:
    reqs, err = parse([data])
    assert reqs == [] and err == rule_id


def test_the_same_requests_are_accepted_within_the_limits() -> None:
    reqs, err = parse([b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 10_000 + b"\r\n\r\n"])
    assert err == "" and len(reqs) == 1
    reqs, err = parse([b"POST / HTTP/1.1\r\nContent-Length: 60000\r\n\r\n" + b"a" * 60000])
    assert err == "" and len(reqs[0].body) == 60000


def test_after_a_refusal_the_parser_refuses_everything() -> None:
    parser = RequestParser()
    with pytest.raises(ParseError):
        parser.feed(b"NOT HTTP\r\n\r\n")
    with pytest.raises(ParseError):
        parser.feed(GET)
    assert not parser.requests


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


SMALL = Limits(max_head=200, max_headers=5, max_body=100)
requests = st.lists(st.sampled_from([GET, POST, CHUNKED, b"garbage\r\n", b"\r\n"]), max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.one_of(requests.map(b"".join), st.binary(max_size=300)), st.lists(st.integers(0, 400)))
def test_any_chunking_gives_the_same_result_as_one_chunk(data: bytes, cuts: list[int]) -> None:
    whole = parse([data], SMALL)
    assert parse(split(data, cuts), SMALL) == whole
    assert parse([data[i : i + 1] for i in range(len(data))], SMALL) == whole


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_give_requests_or_a_parse_error_and_nothing_else(data: bytes) -> None:
    reqs, err = parse([data])
    assert all(isinstance(r, HttpRequest) for r in reqs)
    assert err in ("", "NS-920100", "NS-920110", "NS-920120", "NS-920130")
