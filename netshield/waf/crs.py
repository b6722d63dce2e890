"""The OWASP Core Rule Set on ModSecurity v3: the rule text a route loads, and its verdicts.

`crs_rules_dir` finds the CRS rules under a configured path and `crs_version` reads their
version; `crs_config` writes the whole ModSecurity configuration a route runs (engine
directives, the body processors by content type, the CRS set-up for the route's paranoia level
and thresholds, the CRS rules, netshield's content exclusions and the route's own exclusions).
The same text is what the benchmark's nginx + ModSecurity reference loads, so both run exactly
the same rules. `verdict_of` turns ModSecurity's log lines and intervention into a `Verdict`
(pure). `CrsEngine` is the `Engine` that ties them to `netshield.waf.modsecurity`.

Anomaly scores follow CRS: each matching rule adds its severity's points (critical 5, error 4,
warning 3, notice 2); a request is blocked when its inbound score reaches the threshold (CRS
rule 949110), a response when its outbound score does (959100). Every rule that matched is
listed, with where it matched (the ModSecurity variable, e.g. ``ARGS:id``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from netshield.waf.http import HttpRequest, HttpResponse
from netshield.waf.modsecurity import Intervention, ModSecurity, ModSecurityUnavailable, Outcome
from netshield.waf.settings import Exclusion, WafSettings
from netshield.waf.verdict import Match, Verdict

_VERSION = re.compile(rb"ver:'OWASP_CRS/(\d+\.\d+\.\d+)'")
_FIELD = re.compile(r'\[(id|msg|data|severity) "((?:[^"\\]|\\.)*)"\]')
_VARIABLE = re.compile(r"against variable `([^']+)'")
_WITHIN = re.compile(r"found within ([A-Z_]+(?::[^:\s]+)?)")
_TOTAL = re.compile(r"Total Score: (\d+)")
_POINTS = {"0": 5, "1": 5, "2": 5, "3": 4, "4": 3, "5": 2}
# Evaluation and correlation rules: they report the score, they are not a detection.
_EVALUATION = frozenset({"949110", "949111", "959100", "959101", "980130", "980140"})


class CrsUnavailable(Exception):
    """The configured CRS rules cannot be found or loaded; the message says why and what to do."""


def crs_rules_dir(path: Path) -> Path:
    """The directory holding the CRS ``*.conf`` rule files: `path` itself or `path`/rules."""
    for candidate in (path / "rules", path):
        if (candidate / "REQUEST-901-INITIALIZATION.conf").is_file():
            return candidate
    raise CrsUnavailable(
        f"no OWASP Core Rule Set under {path} (expected {path}/rules/"
        "REQUEST-901-INITIALIZATION.conf): apt-get install modsecurity-crs, or set waf.rules"
    )


def crs_version(rules_dir: Path) -> str:
    """The CRS version the rules carry, e.g. ``3.3.4``."""
    found = _VERSION.search((rules_dir / "REQUEST-901-INITIALIZATION.conf").read_bytes())
    return found.group(1).decode() if found else "unknown"


# netshield's content exclusions (documented in the README's WAF section): in the fields where
# posts carry prose and code snippets (form fields and JSON keys named in free_text_fields),
# the rules that match shell, PHP and SQL *syntax* are off; every other rule (XSS, SQL injection
# by libinjection, traversal, RFI, Java/Log4Shell, ...) still inspects them.
CONTENT_EXCLUDED_RULES = (932100, 932105, 932110, 932115, 932150, 933210, 942360)
CRS_CONTENT_TYPES = (
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/related",
    "text/xml",
    "application/xml",
    "application/soap+xml",
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
)


def _content_exclusions(fields: Iterable[str]) -> list[str]:
    names = [f for f in fields if f]
    if not names:
        return []
    target = "|".join(f"!ARGS:{f}|!ARGS:json.{f}" for f in names)
    lines = [f'SecRuleUpdateTargetById {rule} "{target}"' for rule in CONTENT_EXCLUDED_RULES]
    # GraphQL over HTTP: the query document (JSON key "query" of a POST to .../graphql) is code.
    ctl = ",".join(
        f"ctl:ruleRemoveTargetById={rule};ARGS:json.query" for rule in CONTENT_EXCLUDED_RULES
    )
    lines.append(
        f'SecRule REQUEST_FILENAME "@endsWith /graphql" "id:9990001,phase:1,pass,nolog,{ctl}"'
    )
    return lines


# netshield's supplementary rules (ids 9990100-9990199), evaluated with the CRS rules before
# CRS's blocking evaluation: detections CRS 3.3 lacks at paranoia level 1.
SUPPLEMENTARY_RULES = (
    # Log4Shell-style lookups anywhere (CRS 3.3.4 only sees some of them in arguments).
    "SecRule REQUEST_URI|REQUEST_HEADERS|ARGS|ARGS_NAMES|REQUEST_COOKIES|REQUEST_BODY "
    '"@rx \\$\\{\\s*(?:jndi\\s*:|\\$\\{\\s*(?:lower|upper|::-|env:|date:|sys:|java:|base64:))" '
    '"id:9990100,phase:2,block,capture,t:none,t:urlDecodeUni,t:lowercase,log,'
    "msg:'Log4Shell-style JNDI lookup',logdata:'Matched Data: %{TX.0} found within "
    "%{MATCHED_VAR_NAME}',severity:'CRITICAL',tag:'attack-rce',tag:'netshield',"
    "setvar:'tx.rce_score=+%{tx.critical_anomaly_score}',"
    "setvar:'tx.anomaly_score_pl1=+%{tx.critical_anomaly_score}'\"",
)


def _exclusion_lines(exclusions: Iterable[Exclusion]) -> list[str]:
    lines = []
    for exclusion in exclusions:
        if exclusion.target is None:
            lines.append(f"SecRuleRemoveById {exclusion.rule}")
        else:
            lines.append(f'SecRuleUpdateTargetById {exclusion.rule} "!{exclusion.target}"')
    return lines


def crs_config(settings: WafSettings, rules_dir: Path) -> str:
    """The ModSecurity configuration of a CRS route (see the module docstring)."""
    response = "On" if settings.inspect_responses else "Off"
    body = settings.max_body
    files = sorted(p for p in rules_dir.glob("*.conf"))
    types = " ".join(f"|{t}|" for t in (*CRS_CONTENT_TYPES, *settings.extra_content_types))
    lines = [
        "SecRuleEngine On",
        "SecRequestBodyAccess On",
        f"SecRequestBodyLimit {body}",
        f"SecRequestBodyNoFilesLimit {body}",
        "SecRequestBodyLimitAction Reject",
        "SecRequestBodyJsonDepthLimit 512",
        "SecArgumentsLimit 1000",
        "SecPcreMatchLimit 100000",
        "SecPcreMatchLimitRecursion 100000",
        f"SecResponseBodyAccess {response}",
        "SecResponseBodyMimeType text/plain text/html text/xml application/json",
        f"SecResponseBodyLimit {settings.max_response_body}",
        "SecResponseBodyLimitAction ProcessPartial",
        "SecAuditEngine Off",
        "SecArgumentSeparator &",
        "SecCookieFormat 0",
        'SecDefaultAction "phase:1,log,auditlog,pass"',
        'SecDefaultAction "phase:2,log,auditlog,pass"',
        # Body processors by content type (as ModSecurity's recommended configuration).
        'SecRule REQUEST_HEADERS:Content-Type "^(?:application(?:/soap\\+|/)|text/)xml" '
        '"id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"',
        'SecRule REQUEST_HEADERS:Content-Type "^application/(?:[a-z.+-]+\\+)?json" '
        '"id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"',
        'SecRule REQBODY_ERROR "!@eq 0" "id:200002,phase:2,t:none,log,deny,status:400,'
        "msg:'Failed to parse request body',logdata:'%{reqbody_error_msg}',severity:2\"",
        'SecRule MULTIPART_STRICT_ERROR "!@eq 0" "id:200003,phase:2,t:none,log,deny,status:400,'
        "msg:'Multipart request body failed strict validation',severity:2\"",
        'SecRule MULTIPART_UNMATCHED_BOUNDARY "@eq 1" "id:200004,phase:2,t:none,log,deny,'
        "msg:'Multipart parser detected a possible unmatched boundary',severity:2\"",
        # CRS set-up: paranoia level and anomaly thresholds of this route.
        f'SecAction "id:900000,phase:1,nolog,pass,t:none,'
        f'setvar:tx.paranoia_level={settings.paranoia}"',
        f'SecAction "id:900110,phase:1,nolog,pass,t:none,'
        f"setvar:tx.inbound_anomaly_score_threshold={settings.inbound_threshold},"
        f'setvar:tx.outbound_anomaly_score_threshold={settings.outbound_threshold}"',
        f'SecAction "id:900200,phase:1,nolog,pass,t:none,'
        f"setvar:'tx.allowed_methods={' '.join(settings.allowed_methods)}'\"",
        f'SecAction "id:900220,phase:1,nolog,pass,t:none,'
        f"setvar:'tx.allowed_request_content_type={types}'\"",
        'SecAction "id:900990,phase:1,nolog,pass,t:none,setvar:tx.crs_setup_version=334"',
    ]
    for path in files:
        if path.name.startswith("REQUEST-949"):
            lines += SUPPLEMENTARY_RULES
        lines.append(f"Include {path}")
    if settings.content_exclusions:
        lines += _content_exclusions(settings.free_text_fields)
    lines += _exclusion_lines(settings.exclusions)
    return "\n".join(lines) + "\n"


def _unescape(text: str) -> str:
    return text.replace('\\"', '"').replace("\\\\", "\\")


def _match_of(line: str) -> Match | None:
    fields: dict[str, str] = {}
    for key, value in _FIELD.findall(line):
        fields.setdefault(key, _unescape(value))
    rule_id = fields.get("id")
    if not rule_id:
        return None
    variable = _VARIABLE.search(line) or _WITHIN.search(fields.get("data", ""))
    return Match(
        rule_id=rule_id,
        message=fields.get("msg", ""),
        where=variable.group(1) if variable else "",
        severity=fields.get("severity"),
    )


def _score(matches: Iterable[Match]) -> int:
    return sum(_POINTS.get(m.severity or "", 0) for m in matches if m.rule_id not in _EVALUATION)


def verdict_of(messages: Iterable[str], intervention: Intervention | None) -> Verdict:
    """The verdict for one phase group: the rules that matched (evaluation rules left out of
    `rule_ids`), the anomaly score, and block if ModSecurity intervened."""
    matches = [m for m in (_match_of(line) for line in messages) if m is not None]
    blocking = _match_of(intervention.log) if intervention and intervention.log else None
    detections = [m for m in matches if m.rule_id not in _EVALUATION]
    if (
        blocking is not None
        and blocking.rule_id not in _EVALUATION
        and all(m.rule_id != blocking.rule_id for m in detections)
    ):
        detections.append(blocking)
    total = _TOTAL.search(intervention.log) if intervention and intervention.log else None
    score = int(total.group(1)) if total else _score(detections)
    rule_ids = tuple(dict.fromkeys(m.rule_id for m in detections))
    where = "; ".join(
        f"{m.rule_id} {m.message}" + (f" in {m.where}" if m.where else "") for m in detections
    )
    if intervention is None:
        detail = where or "no rule matched"
        return Verdict("allow", rule_ids, detail, score, tuple(detections))
    reason = blocking.message if blocking is not None else "ModSecurity intervened"
    detail = f"{reason}: {where}" if where else reason
    status = intervention.status if intervention.status in (400, 413) else 403
    return Verdict("block", rule_ids, detail, score, tuple(detections), status)


def _split(messages: list[str]) -> tuple[list[str], list[str]]:
    """Request-phase and response-phase messages (CRS response rules are 950000-959999)."""
    request: list[str] = []
    response: list[str] = []
    for line in messages:
        rule = next((v for k, v in _FIELD.findall(line) if k == "id"), "")
        (response if rule.startswith("95") else request).append(line)
    return request, response


@dataclass(frozen=True)
class Exchange:
    """The connection a request came on: the caller's and the route's addresses."""

    client: tuple[str, int] = ("127.0.0.1", 0)
    server: tuple[str, int] = ("127.0.0.1", 0)


class CrsEngine:
    """ModSecurity v3 running the OWASP CRS with a route's settings."""

    name = "crs"

    def __init__(self, settings: WafSettings, modsecurity: ModSecurity | None = None) -> None:
        rules_dir = crs_rules_dir(settings.rules)
        self.settings = settings
        self.crs_version = crs_version(rules_dir)
        self.config_text = crs_config(settings, rules_dir)
        try:
            self._msc = modsecurity or ModSecurity(self.config_text)
        except ModSecurityUnavailable as err:
            raise CrsUnavailable(f"{err} (rules in {rules_dir})") from err
        self.description = (
            f"{self._msc.version} with OWASP CRS {self.crs_version} from {rules_dir} "
            f"({settings.describe()})"
        )

    def _run(
        self, request: HttpRequest, exchange: Exchange, response: HttpResponse | None
    ) -> Outcome:
        return self._msc.transaction(
            client=exchange.client,
            server=exchange.server,
            method=request.method,
            uri=request.target,
            version=request.version,
            headers=request.headers,
            body=request.body,
            response=(response.status, response.headers, response.body) if response else None,
        )

    def inspect_request(self, request: HttpRequest, exchange: Exchange) -> Verdict:
        outcome = self._run(request, exchange, None)
        return verdict_of(outcome.messages, outcome.request)

    def inspect_exchange(
        self, request: HttpRequest, response: HttpResponse, exchange: Exchange
    ) -> tuple[Verdict, Verdict]:
        outcome = self._run(request, exchange, response)
        asked, answered = _split(outcome.messages)
        return verdict_of(asked, outcome.request), verdict_of(answered, outcome.response)

    def close(self) -> None:
        self._msc.close()


__all__ = [
    "CONTENT_EXCLUDED_RULES",
    "SUPPLEMENTARY_RULES",
    "CrsEngine",
    "CrsUnavailable",
    "Exchange",
    "crs_config",
    "crs_rules_dir",
    "crs_version",
    "verdict_of",
]
