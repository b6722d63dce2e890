"""netshield's compact WAF rule set: each rule has a stable id, a class and one pattern, matched
against normalised text (see `netshield.waf.engine.normalise`: URL-decoded until stable,
lower-case, SQL comments removed, whitespace collapsed to one space).

Ids follow the OWASP Core Rule Set's numbering by attack class, prefixed ``NS-`` so they never
collide with CRS ids; an id never changes meaning. The rules:

==========  ==========================================================================
NS-920100   malformed HTTP/1.x request (the parser refused it)
NS-920110   request head over the route's limit (too long or too many header fields)
NS-920120   request body over the route's inspection limit
NS-920130   protocol upgrade or CONNECT (the route relays plain HTTP/1.x only)
NS-930100   path traversal: ``../`` or ``..\\`` as a path segment
NS-932100   command injection: a shell separator then a command (``;cat /etc/passwd``)
NS-932110   command injection: command substitution ``$(``
NS-932120   command injection: a backtick-quoted command
NS-932130   command injection: reading /etc/passwd or /etc/shadow
NS-941100   XSS: a ``<script`` tag
NS-941110   XSS: a ``javascript:`` URL
NS-941120   XSS: an event handler attribute (``onerror=``, ``onload=``, ...)
NS-942100   SQL injection: tautology (``' or 1=1``, ``or 'a'='a'``)
NS-942110   SQL injection: ``union select``
NS-942120   SQL injection: a statement terminated and commented out (``;--``, ``'--``, ``'#``)
NS-942130   SQL injection: time-based (sleep, benchmark, pg_sleep, waitfor delay)
NS-942140   SQL injection: stacked query (``; drop table``, ``; select``)
==========  ==========================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    pattern: re.Pattern[str]


def _rule(rule_id: str, title: str, pattern: str) -> Rule:
    return Rule(rule_id, title, re.compile(pattern))


_EVENTS = (
    "error|load|click|dblclick|mouseover|mouseenter|mouseout|focus|blur|input|change|submit|"
    "keydown|keyup|keypress|toggle|animationstart|transitionend|pageshow|begin"
)
_COMMANDS = "cat|head|tail|more|less|ls|wget|curl|nc|ncat|bash|sh|zsh|rm|chmod|chown|python3?|perl"
_SQL_VERBS = "select|insert|update|delete|drop|create|alter|truncate|exec|execute|shutdown|declare"

RULES: tuple[Rule, ...] = (
    _rule("NS-930100", "path traversal", r"(?:^|[/\\?=&])\.\.(?:[/\\]|$)"),
    _rule(
        "NS-932100",
        "command injection (separator)",
        rf"(?:;|\|\|?|&&)\s*(?:{_COMMANDS})\s+[\w/.~-]",
    ),
    _rule("NS-932110", "command injection (substitution)", r"\$\("),
    _rule("NS-932120", "command injection (backticks)", r"`[^`]*\w[^`]*`"),
    _rule("NS-932130", "command injection (system files)", r"/etc/(?:passwd|shadow)\b"),
    _rule("NS-941100", "XSS (script tag)", r"<\s*script\b"),
    _rule("NS-941110", "XSS (javascript: URL)", r"\bjavascript\s*:"),
    _rule("NS-941120", "XSS (event handler)", rf"[\s\"'/<;]on(?:{_EVENTS})\s*="),
    _rule(
        "NS-942100",
        "SQL injection (tautology)",
        r"\b(?:or|and)\s+(['\"]?)(\w+)\1\s*(?:=|like)\s*['\"]?\2(?!\w)",
    ),
    _rule(
        "NS-942110", "SQL injection (union select)", r"\bunion(?:\s+(?:all|distinct))?\s+select\b"
    ),
    _rule("NS-942120", "SQL injection (comment terminator)", r"(?:;|')\s*(?:--|#)"),
    _rule(
        "NS-942130",
        "SQL injection (time-based)",
        r"\b(?:sleep|benchmark|pg_sleep)\s*\(|\bwaitfor\s+delay\b",
    ),
    _rule("NS-942140", "SQL injection (stacked query)", rf";\s*(?:{_SQL_VERBS})\s+[\w*@(]"),
)

__all__ = ["RULES", "Rule"]
