"""netshield's compact rule set as a WAF engine: the fallback for hosts without the OWASP CRS.

`inspect(request)` says allow or block, and which rules fired; `CompactEngine` wraps it in the
`netshield.waf.engine.Engine` interface.

It looks at the method, the request target (path and query), every header value and the body,
each normalised first (`normalise`): percent-decoding repeated until the text is stable (so
double-encoding does not hide an attack), lower-case, SQL comments ``/*...*/`` replaced by a
space, NUL bytes dropped and whitespace collapsed to one space.

Guarantees: pure and deterministic (no I/O, no clock); never raises for any `HttpRequest`; a
request that matches any rule in `netshield.waf.rules.RULES` is blocked with every rule id that
fired, in rule order.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

from netshield.waf.http import HttpRequest, HttpResponse
from netshield.waf.rules import RULES
from netshield.waf.settings import WafSettings
from netshield.waf.verdict import Match, Verdict

_MAX_DECODE_ROUNDS = 8
_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_SPACE = re.compile(r"\s+")


def normalise(text: str, *, plus_is_space: bool = True) -> str:
    """Decode percent-escapes until stable, then lower-case, strip comments and NULs, and
    collapse whitespace (see the module docstring)."""
    decode = unquote_plus if plus_is_space else unquote
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = decode(text, errors="replace")
        if decoded == text:
            break
        text = decoded
    text = _COMMENT.sub(" ", text.lower()).replace("\x00", "")
    return _SPACE.sub(" ", text)


def _parts(request: HttpRequest) -> list[tuple[str, str]]:
    path, _, query = request.target.partition("?")
    parts = [("method", normalise(request.method)), ("path", normalise(path, plus_is_space=False))]
    if query:
        parts.append(("query", normalise(query)))
    parts += [(f"header {name}", normalise(value)) for name, value in request.headers]
    if request.body:
        parts.append(("body", normalise(request.body.decode("utf-8", errors="replace"))))
    return parts


def inspect(request: HttpRequest) -> Verdict:
    """Allow, or block naming every rule that fired and where."""
    fired: list[str] = []
    where: list[str] = []
    matches: list[Match] = []
    parts = _parts(request)
    for rule in RULES:
        for name, text in parts:
            if rule.pattern.search(text):
                fired.append(rule.id)
                where.append(f"{rule.id} {rule.title} in the {name}")
                matches.append(Match(rule.id, rule.title, name, "2"))
                break
    if not fired:
        return Verdict("allow", (), "no rule matched")
    return Verdict("block", tuple(fired), "; ".join(where), 5 * len(fired), tuple(matches))


class CompactEngine:
    """The compact rule set behind the `Engine` interface; responses are not inspected."""

    name = "compact"

    def __init__(self, settings: WafSettings, why: str = "") -> None:
        self.settings = settings
        self.description = (
            f"netshield compact rule set ({len(RULES)} rules, {settings.describe()})"
            + (f"; {why}" if why else "")
        )

    def inspect_request(self, request: HttpRequest, exchange: object) -> Verdict:
        return inspect(request)

    def inspect_exchange(
        self, request: HttpRequest, response: HttpResponse, exchange: object
    ) -> tuple[Verdict, Verdict]:
        return inspect(request), Verdict("allow", (), "responses are not inspected")

    def close(self) -> None:
        return None


__all__ = ["CompactEngine", "inspect", "normalise"]
