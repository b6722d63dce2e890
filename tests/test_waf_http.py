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


H = b"Host: a\r\n"
REFUSED = {
    "long-header": (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", "NS-920110"),
    "long-target": (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", "NS-920110"),
    "many-headers": (b"GET / HTTP/1.1\r\n" + H + b"X: y\r\n" * 101 + b"\r\n", "NS-920110"),
    "big-body": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1100000\r\n\r\n", "NS-920120"),
    "big-chunked": (
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"10000\r\n"
        + b"a" * 0x10000
        + b"\r\n" * 1
        + (b"10000\r\n" + b"a" * 0x10000 + b"\r\n") * 16,
        "NS-920120",
    ),
    "upgrade": (
        b"GET / HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        "NS-920130",
    ),
    "connect": (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "NS-920130"),
    "te-and-cl": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "NS-920140",
    ),
    "duplicate-cl": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "NS-920140",
    ),
    "conflicting-cl": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "NS-920140",
    ),
    "cl-list": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", "NS-920140"),
    "te-not-chunked": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nabc",
        "NS-920140",
    ),
    "te-chunked-twice": (
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "NS-920140",
    ),
    "te-in-http10": (
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "NS-920140",
    ),
    "obs-fold": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n c\r\n\r\n", "NS-920140"),
    "bare-lf": (b"GET / HTTP/1.1\nHost: a\n\n", "NS-920140"),
    "bare-lf-in-head": (b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", "NS-920140"),
    "bare-lf-chunk": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        "NS-920140",
    ),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", "NS-920150"),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "NS-920150"),
    "absolute-form-other-host": (
        b"GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "NS-920150",
    ),
    "expect-other": (
        b"POST / HTTP/1.1\r\n" + H + b"Expect: 200-ok\r\nContent-Length: 1\r\n\r\na",
        "NS-920160",
    ),
    "tls": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "NS-920100"),
    "no-colon": (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", "NS-920100"),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "NS-920100"),
}


@pytest.mark.parametrize(("data", "rule_id"), REFUSED.values(), ids=REFUSED.keys())
def test_malformed_smuggling_shaped_or_oversized_requests_are_refused_with_a_protocol_rule(
    data: bytes, rule_id: str
) -> None:
    reqs, err = parse([data])
    assert reqs == [] and err == rule_id


def test_refusals_carry_the_status_to_answer_with() -> None:
    statuses = {}
    for name, (data, _rule) in REFUSED.items():
        try:
            RequestParser().feed(data)
        except ParseError as err:
            statuses[name] = err.status
    assert statuses["long-header"] == 431 and statuses["big-body"] == 413
    assert statuses["duplicate-cl"] == 400 and statuses["expect-other"] == 417


def test_trailers_are_dropped_never_promoted_to_headers() -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Admin: yes\r\n\r\n"
    )
    (req,), err = parse([data])
    assert err == "" and req.body == b"abc" and req.trailers_dropped == 1
    assert req.header("x-admin") is None and b"X-Admin" not in req.to_bytes()
    (plain,), _ = parse([data.replace(b"X-Admin: yes\r\n", b"")])
    assert plain.trailers_dropped == 0


def test_an_absolute_form_target_with_the_hosts_own_name_is_accepted() -> None:
    (req,), err = parse([b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n"])
    assert err == "" and req.target == "http://a/x"
    _, err = parse([b"GET http://a:8080/x HTTP/1.1\r\nHost: a\r\n\r\n"])
    assert err == "NS-920150"


def test_expect_continue_shows_the_head_before_the_body_arrives() -> None:
    parser = RequestParser()
    parser.feed(
        b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    )
    assert parser.head is not None and parser.head.expect_continue and not parser.requests
    parser.feed(b"abc")
    assert parser.head is None and parser.requests[0].body == b"abc"
    assert b"Expect" not in parser.requests[0].to_bytes()
    plain = RequestParser()
    plain.feed(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    assert plain.head is not None and not plain.head.expect_continue


def test_a_content_length_over_the_limit_is_refused_before_the_body_arrives() -> None:
    parser = RequestParser(Limits(max_body=10))
    with pytest.raises(ParseError) as err:
        parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    assert err.value.status == 413
    ok = RequestParser(Limits(max_body=10))
    ok.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    assert ok.head is not None


def test_the_same_requests_are_accepted_within_the_limits() -> None:
    reqs, err = parse([b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 10_000 + b"\r\n\r\n"])
    assert err == "" and len(reqs) == 1
    reqs, err = parse(
        [b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 60000\r\n\r\n" + b"a" * 60000]
    )
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
    assert err in ("", *{rule for _, rule in REFUSED.values()})
