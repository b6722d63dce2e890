"""The WAF verdict engine: every rule fires on its attack and lets its benign twin through."""

from __future__ import annotations

import pytest

from netshield.waf import RULES, HttpRequest, ParseError, inspect, refusal
from netshield.waf.compact import normalise


def get(
    target: str, *headers: tuple[str, str], body: bytes = b"", method: str = "GET"
) -> HttpRequest:
    return HttpRequest(method, target, "1.1", (("Host", "native"), *headers), body)


# (rule id, attack request, benign twin)
CASES = [
    ("NS-942100", get("/?id=1'%20OR%20'1'='1"), get("/?author=O'Reilly")),
    ("NS-942100", get("/?id=1+or+1=1"), get("/?q=this+or+that")),
    (
        "NS-942110",
        get("/?q=1%20UNION%20SELECT%20password%20FROM%20users"),
        get("/?q=union+station"),
    ),
    ("NS-942110", get("/?q=1%20UNION/**/ALL/**/SELECT%201"), get("/?q=select+a+union")),
    ("NS-942120", get("/?name=admin';--"), get("/?q=well--known")),
    ("NS-942130", get("/?id=1%20AND%20SLEEP(5)"), get("/?q=sleep+well")),
    ("NS-942130", get("/?id=benchmark(1000000,md5(1))"), get("/?q=benchmark+results")),
    ("NS-942140", get("/?id=1;%20DROP%20TABLE%20users"), get("/?note=drop+the+box")),
    ("NS-941100", get("/?q=%3Cscript%3Ealert(1)%3C/script%3E"), get("/?q=script+writing")),
    ("NS-941110", get("/?next=javascript:alert(1)"), get("/?q=javascript+tutorial")),
    ("NS-941120", get("/?q=%3Cimg%20src=x%20onerror=alert(1)%3E"), get("/?onerror_count=3")),
    ("NS-930100", get("/static/../../etc/hosts"), get("/static/file..txt")),
    ("NS-930100", get("/?file=..%252f..%252fetc%252fhosts"), get("/?file=notes.txt")),
    ("NS-932100", get("/?host=example.com;cat%20/tmp/x"), get("/?pets=dogs;cats")),
    ("NS-932110", get("/?host=$(id)"), get("/?price=$5")),
    ("NS-932120", get("/?host=%60whoami%60"), get("/?q=it%60s")),
    ("NS-932130", get("/?f=/etc/passwd"), get("/?f=/etc/hosts")),
]


@pytest.mark.parametrize(("rule_id", "attack", "benign"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_blocks_its_attack_and_passes_its_benign_twin(
    rule_id: str, attack: HttpRequest, benign: HttpRequest
) -> None:
    verdict = inspect(attack)
    assert verdict.action == "block" and rule_id in verdict.rule_ids, verdict
    assert rule_id in verdict.detail
    assert inspect(benign) == inspect(get("/"))
    assert inspect(benign).action == "allow"


def test_every_rule_has_a_case() -> None:
    assert {r.id for r in RULES} <= {c[0] for c in CASES}


def test_the_sql_injection_of_the_demo_is_blocked_but_oreilly_passes() -> None:
    attack = inspect(get("/?id=1' OR '1'='1"))
    assert attack.action == "block" and attack.rule_ids == ("NS-942100",)
    assert inspect(get("/books?author=O%27Reilly&sort=title")).action == "allow"


def test_headers_and_body_are_inspected_too() -> None:
    assert inspect(get("/", ("User-Agent", "' or 1=1 --"))).action == "block"
    assert inspect(get("/", ("User-Agent", "curl/8.0"), ("Cookie", "a=1; id=2"))).action == "allow"
    form = b"name=x&comment=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
    assert inspect(get("/c", body=form, method="POST")).rule_ids == ("NS-941100",)
    assert inspect(get("/c", body=b"name=x&comment=nice+post", method="POST")).action == "allow"


def test_normalising_defeats_double_encoding_case_and_comments() -> None:
    assert normalise("%2527%2520OR%25201%253D1") == "' or 1=1"
    assert normalise("UnIoN/*x*/SeLeCt") == "union select"
    assert normalise("a\t\n  b") == "a b"
    assert inspect(get("/?q=%2527%2520OR%25201%253D1")).action == "block"


def test_a_refused_parse_is_a_block_naming_the_protocol_rule() -> None:
    verdict = refusal(ParseError("NS-920100", 400, "not a valid HTTP/1.1 request"))
    assert verdict.action == "block"
    assert verdict.rule_ids == ("NS-920100",)
