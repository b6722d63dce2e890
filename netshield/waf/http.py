"""An incremental HTTP/1.1 request parser (httptools/llhttp) for native routes, with limits.

`RequestParser.feed` takes bytes as they arrive and queues each complete request in `requests`;
a malformed request, an upgrade (CONNECT, Upgrade:) or one over `Limits` raises `ParseError`,
which names the protocol rule it broke (NS-9201xx) and the HTTP status to answer with.

Guarantees: the result (the queued requests, then possibly one ParseError) depends only on the
bytes fed, never on how they were split into chunks; `feed` raises nothing but ParseError; after
a ParseError the parser refuses everything (fail closed). Requests are forwarded re-serialised
from what was parsed (`to_bytes`), never as the raw bytes, so what the WAF saw is what is sent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import httptools

MALFORMED = "NS-920100"
HEAD_TOO_LARGE = "NS-920110"
BODY_TOO_LARGE = "NS-920120"
UPGRADE_REFUSED = "NS-920130"

# Hop-by-hop and framing headers the route sets itself when it forwards a request.
_DROPPED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "te"})


@dataclass(frozen=True)
class Limits:
    max_head: int = 16 * 1024  # request target plus header names and values, in bytes
    max_headers: int = 100
    max_body: int = 64 * 1024  # the whole body is inspected, so it is bounded


class ParseError(Exception):
    """The request cannot be parsed or is over a limit; `rule_id` names why."""

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

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def to_bytes(self, *, close: bool = True) -> bytes:
        """The request as forwarded: the parsed head, a Content-Length framing the (de-chunked)
        body and, by default, ``Connection: close``."""
        lines = [f"{self.method} {self.target} HTTP/{self.version}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in _DROPPED]
        if self.body or self.method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(f"Content-Length: {len(self.body)}")
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class _Stop(Exception):
    def __init__(self, error: ParseError) -> None:
        self.error = error


def _upgrade_refused() -> ParseError:
    return ParseError(
        UPGRADE_REFUSED, 400, "protocol upgrades and CONNECT are not relayed by the route"
    )


def _text(data: bytes) -> str:
    return data.decode("latin-1")


class RequestParser:
    """Feed bytes, take complete requests from `requests` (oldest first)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.requests: deque[HttpRequest] = deque()
        self._parser = httptools.HttpRequestParser(self)
        self._error: ParseError | None = None
        self._reset()

    def _reset(self) -> None:
        self._url = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._head = 0
        self._body = bytearray()

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((_text(name), _text(value)))
        self._grow_head(len(name) + len(value))
        if len(self._headers) > self.limits.max_headers:
            raise _Stop(
                ParseError(
                    HEAD_TOO_LARGE, 431, f"more than {self.limits.max_headers} header fields"
                )
            )

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self.limits.max_body:
            raise _Stop(
                ParseError(
                    BODY_TOO_LARGE,
                    413,
                    f"the body is over the route's inspection limit of {self.limits.max_body} bytes",
                )
            )

    def on_message_complete(self) -> None:
        version = self._parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise _Stop(ParseError(MALFORMED, 505, f"HTTP/{version} is not HTTP/1.x"))
        if self._parser.should_upgrade():
            raise _Stop(_upgrade_refused())
        self.requests.append(
            HttpRequest(
                method=_text(self._parser.get_method()),
                target=_text(bytes(self._url)),
                version=version,
                headers=tuple(self._headers),
                body=bytes(self._body),
                keep_alive=bool(self._parser.should_keep_alive()),
            )
        )

    def _grow_head(self, n: int) -> None:
        self._head += n
        if self._head > self.limits.max_head:
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
            self._error = ParseError(MALFORMED, 400, f"not a valid HTTP/1.1 request ({err})")
        if self._error is not None:
            raise self._error


__all__ = [
    "BODY_TOO_LARGE",
    "HEAD_TOO_LARGE",
    "MALFORMED",
    "UPGRADE_REFUSED",
    "HttpRequest",
    "Limits",
    "ParseError",
    "RequestParser",
]
