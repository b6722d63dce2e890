"""The web application firewall of native routes (DESIGN §4): an incremental HTTP/1.1 request
parser (`netshield.waf.http`) and a sans-IO verdict engine with netshield's compact rule set
(`netshield.waf.engine`, `netshield.waf.rules`).

Guarantee: nothing here does I/O; the same bytes always give the same requests and the same
verdicts, however they are split into chunks.
"""

from netshield.waf.engine import Verdict, inspect, refusal
from netshield.waf.http import HttpRequest, Limits, ParseError, RequestParser
from netshield.waf.rules import RULES, Rule

__all__ = [
    "RULES",
    "HttpRequest",
    "Limits",
    "ParseError",
    "RequestParser",
    "Rule",
    "Verdict",
    "inspect",
    "refusal",
]
