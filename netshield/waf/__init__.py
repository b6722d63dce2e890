"""The web application firewall of WAF routes (DESIGN §4, §8): one `Engine` interface
(`netshield.waf.engine`) with two implementations, ModSecurity v3 + the OWASP Core Rule Set
(`netshield.waf.crs` over `netshield.waf.modsecurity`) and netshield's compact rule set
(`netshield.waf.compact`, the fallback where CRS is not installed); the HTTP/1.1 parsing of
WAF routes (`netshield.waf.http`); verdicts (`netshield.waf.verdict`) and route settings
(`netshield.waf.settings`).

Guarantee: nothing here does network I/O; the same bytes always give the same requests and the
same verdicts, however they are split into chunks.
"""

from netshield.waf.compact import CompactEngine, inspect
from netshield.waf.engine import Engine, Exchange, WafUnavailable, load_engine
from netshield.waf.http import HttpRequest, HttpResponse, Limits, ParseError, RequestParser
from netshield.waf.rules import RULES, Rule
from netshield.waf.settings import Exclusion, WafSettings
from netshield.waf.verdict import Match, Verdict, refusal

__all__ = [
    "RULES",
    "CompactEngine",
    "Engine",
    "Exchange",
    "Exclusion",
    "HttpRequest",
    "HttpResponse",
    "Limits",
    "Match",
    "ParseError",
    "RequestParser",
    "Rule",
    "Verdict",
    "WafSettings",
    "WafUnavailable",
    "inspect",
    "load_engine",
    "refusal",
]
