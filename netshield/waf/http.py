"""HTTP/1.1 for WAF routes, parsed with httptools (llhttp): requests from callers, responses from
the service behind the route. No hand-written HTTP parsing: llhttp frames the messages (it
already refuses duplicate or conflicting Content-Length, Transfer-Encoding with Content-Length,
obs-fold and bare LF); this module adds the checks llhttp leaves to the application.

`RequestParser.feed` takes bytes as they arrive and queues each complete request in `requests`;
when a request's head is complete but its body is not, `head` holds it (for
``Expect: 100-continue`` and an early 413). A request the route must refuse raises `ParseError`,
which names the protocol rule it broke (NS-9201xx) and the HTTP status to answer with:

==========  ======  =======================================================================
NS-920100   400     malformed HTTP/1.x (505 for another HTTP version)
NS-920110   431     request head over the route's limit (bytes or header fields)
NS-920120   413     body over the route's limit
NS-920130   400     protocol upgrade or CONNECT (WAF routes relay HTTP/1.x only)
NS-920140   400     smuggling-shaped framing: duplicate/conflicting Content-Length,
                    Transfer-Encoding with Content-Length or in HTTP/1.0, obs-fold, bare LF
NS-920150   400     Host missing (HTTP/1.1), repeated, or not the absolute-form target's host
NS-920160   417     an Expect other than 100-continue
==========  ======  =======================================================================

Trailers of a chunked body are dropped (counted in `HttpRequest.trailers_dropped`), never
promoted to headers. `ResponseParser` turns the service's bytes into response events.

Guarantees: the result (the queued requests, then possibly one ParseError) depends only on the
bytes fed, never on how they were split into chunks; `feed` raises nothing but ParseError; after
a ParseError the parser refuses everything (fail closed). Requests are forwarded re-serialised
from what was parsed (`to_bytes`), never as the raw bytes, so what the WAF saw is what is sent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

import httptools

MALFORMED = "NS-920100"
HEAD_TOO_LARGE = "NS-920110"
BODY_TOO_LARGE = "NS-920120"
UPGRADE_REFUSED = "NS-920130"
SMUGGLING = "NS-920140"
BAD_HOST = "NS-920150"
EXPECTATION = "NS-920160"

# Hop-by-hop and framing headers the route sets itself when it forwards a message.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "expect",
    }
)
_BODYLESS = ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE")
# llhttp's messages for framing that request smuggling relies on.
_SMUGGLING_ERRORS = (
    "Content-Length",
    "Transfer-Encoding",
    "whitespace after header value",
    "expected CR",
    "Expected CRLF",
    "Expected LF",
)


@dataclass(frozen=True)
class Limits:
    max_head: int = 16 * 1024  # request target plus header names and values, in bytes
    max_headers: int = 100
    max_body: int = 1024 * 1024  # the whole body is inspected, so it is bounded


class ParseError(Exception):
    """The request cannot be parsed, is over a limit, or is shaped for smuggling."""

    def __init__(self, rule_id: str, status: int, message: str) -> None:
        super().__init__(message)
        self.rule_id = rule_id
        self.status = status
        self.message = message


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str  # as sent (still percent-encoded)
    version: str  # "1.0" or "1.1"
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    keep_alive: bool = False
    expect_continue: bool = False
    trailers_dropped: int = 0

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def to_bytes(self, *, close: bool = True) -> bytes:
        """The request as forwarded: the parsed head without hop-by-hop headers, a
        Content-Length framing the (de-chunked) body and ``Connection: close`` or
        ``keep-alive``."""
        lines = [f"{self.method} {self.target} HTTP/{self.version}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in HOP_BY_HOP]
        if self.body or self.method not in _BODYLESS:
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("Connection: close" if close else "Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""


class _Stop(Exception):
    def __init__(self, error: ParseError) -> None:
        self.error = error


def _upgrade_refused() -> ParseError:
    return ParseError(
        UPGRADE_REFUSED, 400, "protocol upgrades and CONNECT are not relayed by the route"
    )


def _text(data: bytes) -> str:
    return data.decode("latin-1")


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def host_problem(version: str, target: str, hosts: list[str]) -> str | None:
    """Why the request's Host is refused (RFC 9112 §3.2), or None."""
    if len(hosts) > 1:
        return "the request has more than one Host header"
    if not hosts:
        return "an HTTP/1.1 request without a Host header" if version == "1.1" else None
    if target.startswith(("http://", "https://")):
        try:
            url = urlsplit(target)
            host = urlsplit(f"//{hosts[0]}")
            same = (url.hostname, url.port or _default_port(url.scheme)) == (
                host.hostname,
                host.port or _default_port(url.scheme),
            )
        except ValueError:
            same = False
        if not same:
            return f"the absolute-form target's host is not the Host header ({hosts[0]!r})"
    return None


@dataclass
class _Building:
    url: bytearray = field(default_factory=bytearray)
    headers: list[tuple[str, str]] = field(default_factory=list)
    head_bytes: int = 0
    body: bytearray = field(default_factory=bytearray)
    head_done: bool = False
    trailers: int = 0
    begun: bool = False


class RequestParser:
    """Feed bytes, take complete requests from `requests` (oldest first)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.requests: deque[HttpRequest] = deque()
        self.head: HttpRequest | None = None  # a head whose body is still arriving
        self._parser = httptools.HttpRequestParser(self)
        self._error: ParseError | None = None
        self._cur = _Building()

    @property
    def idle(self) -> bool:
        """No request is partly received."""
        return not self._cur.begun

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        self._cur = _Building(begun=True)
        self.head = None

    def on_url(self, url: bytes) -> None:
        self._cur.url += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        cur = self._cur
        if cur.head_done:  # a trailer field of a chunked body: dropped, never a header
            cur.trailers += 1
            self._grow_head(len(name) + len(value))
            return
        cur.headers.append((_text(name), _text(value)))
        self._grow_head(len(name) + len(value))
        if len(cur.headers) > self.limits.max_headers:
            raise _Stop(
                ParseError(
                    HEAD_TOO_LARGE, 431, f"more than {self.limits.max_headers} header fields"
                )
            )

    def on_headers_complete(self) -> None:
        cur = self._cur
        cur.head_done = True
        version = self._parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise _Stop(ParseError(MALFORMED, 505, f"HTTP/{version} is not HTTP/1.x"))
        if self._parser.should_upgrade():
            raise _Stop(_upgrade_refused())
        names = [k.lower() for k, _ in cur.headers]
        if version == "1.0" and "transfer-encoding" in names:
            raise _Stop(ParseError(SMUGGLING, 400, "Transfer-Encoding in an HTTP/1.0 request"))
        target = _text(bytes(cur.url))
        problem = host_problem(version, target, [v for k, v in cur.headers if k.lower() == "host"])
        if problem:
            raise _Stop(ParseError(BAD_HOST, 400, problem))
        expect = [v.strip().lower() for k, v in cur.headers if k.lower() == "expect"]
        if any(value != "100-continue" for value in expect):
            raise _Stop(ParseError(EXPECTATION, 417, f"unsupported expectation {expect[0]!r}"))
        length = next((v for k, v in cur.headers if k.lower() == "content-length"), None)
        if length is not None and int(length) > self.limits.max_body:
            raise _Stop(self._too_large())
        self.head = self._request(version, target, body=b"", expect=bool(expect))

    def on_body(self, body: bytes) -> None:
        self._cur.body += body
        if len(self._cur.body) > self.limits.max_body:
            raise _Stop(self._too_large())

    def on_message_complete(self) -> None:
        assert self.head is not None  # on_headers_complete ran first
        self.requests.append(
            self._request(
                self.head.version,
                self.head.target,
                body=bytes(self._cur.body),
                expect=self.head.expect_continue,
            )
        )
        self.head = None
        self._cur = _Building()

    def _request(self, version: str, target: str, *, body: bytes, expect: bool) -> HttpRequest:
        return HttpRequest(
            method=_text(self._parser.get_method()),
            target=target,
            version=version,
            headers=tuple(self._cur.headers),
            body=body,
            keep_alive=bool(self._parser.should_keep_alive()),
            expect_continue=expect,
            trailers_dropped=self._cur.trailers,
        )

    def _too_large(self) -> ParseError:
        return ParseError(
            BODY_TOO_LARGE,
            413,
            f"the body is over the route's limit of {self.limits.max_body} bytes",
        )

    def _grow_head(self, n: int) -> None:
        self._cur.head_bytes += n
        if self._cur.head_bytes > self.limits.max_head:
            raise _Stop(
                ParseError(
                    HEAD_TOO_LARGE,
                    431,
                    f"the request head is over the route's limit of {self.limits.max_head} bytes",
                )
            )

    # --- feeding ---
    def feed(self, data: bytes) -> None:
        """Parse `data`; complete requests go to `requests`. Raises ParseError (also on every
        call after the first one that raised)."""
        if self._error is not None:
            raise self._error
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error = _upgrade_refused()
        except httptools.HttpParserCallbackError as err:
            stop = err.__context__
            if isinstance(stop, _Stop):
                self._error = stop.error
            else:  # pragma: no cover - our callbacks raise only _Stop
                self._error = ParseError(MALFORMED, 400, f"not a valid HTTP/1.1 request ({err})")
        except httptools.HttpParserError as err:
            text = str(err)
            smuggling = any(marker in text for marker in _SMUGGLING_ERRORS)
            self._error = ParseError(
                SMUGGLING if smuggling else MALFORMED,
                400,
                f"{'refused framing' if smuggling else 'not a valid HTTP/1.1 request'} ({text})",
            )
        if self._error is not None:
            self.head = None
            raise self._error


# --- responses from the service behind the route ------------------------------------------------


class UpstreamError(Exception):
    """The service behind the route answered with something that is not HTTP/1.x."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    version: str
    headers: tuple[tuple[str, str], ...]
    keep_alive: bool
    chunked: bool
    length: int | None  # Content-Length, if framed by it

    def to_bytes(self, *, close: bool, chunked: bool) -> bytes:
        """The head as relayed: hop-by-hop headers replaced by the route's own framing."""
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Status"
        lines = [f"HTTP/1.1 {self.status} {phrase}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in HOP_BY_HOP]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif self.length is not None:
            lines.append(f"Content-Length: {self.length}")
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ResponseParser:
    """Feed the service's bytes; `feed` returns ("head", ResponseHead), ("body", bytes) and
    ("end", None) events. Informational (1xx) responses are skipped."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._events: list[tuple[str, ResponseHead | bytes | None]] = []
        self._headers: list[tuple[str, str]] = []
        self._skip = False
        self._until_eof = False  # in a body that the service's close ends

    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((_text(name), _text(value)))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._skip = 100 <= status < 200
        if self._skip:
            return
        names = {k.lower(): v for k, v in self._headers}
        chunked = "chunked" in names.get("transfer-encoding", "").lower()
        length = names.get("content-length")
        self._until_eof = not chunked and length is None and status not in (204, 304)
        self._events.append(
            (
                "head",
                ResponseHead(
                    status=status,
                    version=self._parser.get_http_version(),
                    headers=tuple(self._headers),
                    keep_alive=bool(self._parser.should_keep_alive()),
                    chunked=chunked,
                    length=int(length) if length is not None and not chunked else None,
                ),
            )
        )

    def on_body(self, body: bytes) -> None:
        self._events.append(("body", bytes(body)))

    def on_message_complete(self) -> None:
        if not self._skip:
            self._events.append(("end", None))
        self._skip = self._until_eof = False

    def feed(self, data: bytes) -> list[tuple[str, ResponseHead | bytes | None]]:
        self._events = []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            raise UpstreamError(f"not an HTTP/1.x response ({err})") from None
        return self._events

    def feed_eof(self) -> list[tuple[str, ResponseHead | bytes | None]]:
        """The service closed: ends a close-delimited body; anything else was cut short."""
        if self._until_eof:
            self._until_eof = False
            return [("end", None)]
        return []


__all__ = [
    "BAD_HOST",
    "BODY_TOO_LARGE",
    "EXPECTATION",
    "HEAD_TOO_LARGE",
    "HOP_BY_HOP",
    "MALFORMED",
    "SMUGGLING",
    "UPGRADE_REFUSED",
    "HttpRequest",
    "HttpResponse",
    "Limits",
    "ParseError",
    "RequestParser",
    "ResponseHead",
    "ResponseParser",
    "UpstreamError",
]
