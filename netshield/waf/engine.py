"""The WAF verdict engine: `inspect(request)` says allow or block, and which rules fired.

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
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, unquote_plus

from netshield.waf.http import HttpRequest, ParseError
from netshield.waf.rules import RULES

_MAX_DECODE_ROUNDS = 8
_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Verdict:
    action: Literal["allow", "block"]
    rule_ids: tuple[str, ...] = ()
    detail: str = ""


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
    parts = _parts(request)
    for rule in RULES:
        for name, text in parts:
            if rule.pattern.search(text):
                fired.append(rule.id)
                where.append(f"{rule.id} {rule.title} in the {name}")
                break
    if not fired:
        return Verdict("allow", (), "no rule matched")
    return Verdict("block", tuple(fired), "; ".join(where))


def refusal(error: ParseError) -> Verdict:
    """The verdict for a request the parser refused."""
    return Verdict("block", (error.rule_id,), f"{error.rule_id} {error.message}")


__all__ = ["Verdict", "inspect", "normalise", "refusal"]
