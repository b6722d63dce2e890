"""ModSecurity v3 (Debian's libmodsecurity3, through ctypes) with the OWASP CRS behind the Engine
interface: verdicts with rule ids, scores and where they matched; paranoia levels, thresholds
and exclusions as route settings; no silent fallback; the GIL is released while rules run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from netshield.waf import Exchange, HttpRequest, HttpResponse, WafSettings, load_engine
from netshield.waf.crs import CrsEngine, crs_config, crs_rules_dir, verdict_of
from netshield.waf.engine import Engine, WafUnavailable
from netshield.waf.modsecurity import Intervention, ModSecurity
from netshield.waf.settings import Exclusion

CRS = WafSettings(engine="crs")
EX = Exchange()
HEADERS = (("Host", "shop.example"), ("User-Agent", "Mozilla/5.0"), ("Accept", "*/*"))


def get(target: str, *headers: tuple[str, str]) -> HttpRequest:
    return HttpRequest("GET", target, "1.1", (*HEADERS, *headers))


def form(body: str) -> HttpRequest:
    data = body.encode()
    return HttpRequest(
        "POST",
        "/comment",
        "1.1",
        (
            *HEADERS,
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", str(len(data))),
        ),
        data,
    )


@pytest.fixture(scope="module")
def crs() -> Iterator[Engine]:
    engine = load_engine(CRS)
    yield engine
    engine.close()


def test_the_engine_says_which_modsecurity_and_crs_version_it_runs(crs: Engine) -> None:
    assert crs.name == "crs"
    assert "ModSecurity v3." in crs.description and "OWASP CRS 3.3.4" in crs.description
    assert "paranoia 1" in crs.description


def test_sql_injection_is_blocked_with_its_rule_score_and_variable(crs: Engine) -> None:
    verdict = crs.inspect_request(get("/?id=1%27%20OR%20%271%27=%271"), EX)
    assert verdict.action == "block" and "942100" in verdict.rule_ids
    assert verdict.anomaly_score >= 5 and verdict.status == 403
    assert any(m.rule_id == "942100" and m.where == "ARGS:id" for m in verdict.matches)
    benign = crs.inspect_request(get("/?author=O%27Brien"), EX)
    assert benign.action == "allow" and benign.rule_ids == ()


def test_json_bodies_are_parsed_so_escapes_do_not_hide_an_attack(crs: Engine) -> None:
    body = b'{"q": "1\\u0027 UNION SELECT password FROM users--"}'
    request = HttpRequest(
        "POST", "/api", "1.1", (*HEADERS, ("Content-Type", "application/json")), body
    )
    verdict = crs.inspect_request(request, EX)
    assert verdict.action == "block" and any(
        m.where.startswith("ARGS:json") for m in verdict.matches
    )
    fine = replace(request, body=b'{"q": "O\\u0027Brien"}')
    assert crs.inspect_request(fine, EX).action == "allow"


def test_paranoia_level_2_runs_rules_that_level_1_does_not(crs: Engine) -> None:
    request = get("/?q=" + "%28" * 14)  # 942430: many SQL special characters, a PL2 rule
    assert "942430" not in crs.inspect_request(request, EX).rule_ids
    pl2 = load_engine(replace(CRS, paranoia=2))
    try:
        verdict = pl2.inspect_request(request, EX)
        assert "942430" in verdict.rule_ids and verdict.anomaly_score >= 3
        attack = pl2.inspect_request(get("/?id=1%27%20OR%20%271%27=%271"), EX)
        assert attack.action == "block"
    finally:
        pl2.close()


def test_a_higher_threshold_lets_the_request_through_but_still_reports_the_rules(
    crs: Engine,
) -> None:
    lenient = load_engine(replace(CRS, inbound_threshold=1000))
    try:
        verdict = lenient.inspect_request(get("/?id=1%27%20OR%20%271%27=%271"), EX)
        assert verdict.action == "allow" and "942100" in verdict.rule_ids
        assert verdict.anomaly_score >= 5
    finally:
        lenient.close()


def test_an_exclusion_switches_a_rule_off_for_one_variable_only(crs: Engine) -> None:
    excluded = load_engine(replace(CRS, exclusions=(Exclusion(942100, "ARGS:id"),)))
    try:
        assert (
            "942100"
            not in excluded.inspect_request(get("/?id=1%27%20OR%20%271%27=%271"), EX).rule_ids
        )
        assert (
            "942100"
            in excluded.inspect_request(get("/?other=1%27%20OR%20%271%27=%271"), EX).rule_ids
        )
    finally:
        excluded.close()
    removed = load_engine(replace(CRS, exclusions=(Exclusion(942100),)))
    try:
        assert (
            "942100"
            not in removed.inspect_request(get("/?other=1%27%20OR%20%271%27=%271"), EX).rule_ids
        )
    finally:
        removed.close()


def test_content_exclusions_let_code_in_posts_through_but_keep_xss_and_sqli(crs: Engine) -> None:
    code = "body=" + "In+bash%3A+%60ls+-la+%7C+grep+conf%60"
    assert crs.inspect_request(form(code), EX).action == "allow"
    strict = load_engine(replace(CRS, content_exclusions=False))
    try:
        assert strict.inspect_request(form(code), EX).action == "block"
    finally:
        strict.close()
    assert crs.inspect_request(form("body=%3Cscript%3Ealert(1)%3C/script%3E"), EX).action == "block"
    assert crs.inspect_request(form("body=1%27%20OR%20%271%27=%271"), EX).action == "block"


def test_log4shell_lookups_in_headers_are_blocked_by_the_supplementary_rule(crs: Engine) -> None:
    verdict = crs.inspect_request(get("/", ("X-Api-Version", "${${lower:j}ndi:ldap://evil/x}")), EX)
    assert verdict.action == "block" and "9990100" in verdict.rule_ids
    assert crs.inspect_request(get("/", ("X-Api-Version", "${version}")), EX).action == "allow"


def test_response_inspection_finds_a_leaked_sql_error() -> None:
    engine = load_engine(replace(CRS, inspect_responses=True))
    leak = b"You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version"
    try:
        _, verdict = engine.inspect_exchange(
            get("/"), HttpResponse(200, (("Content-Type", "text/html"),), leak), EX
        )
        assert verdict.action == "block" and any(r.startswith("951") for r in verdict.rule_ids)
        _, fine = engine.inspect_exchange(
            get("/"), HttpResponse(200, (("Content-Type", "text/html"),), b"<p>hello</p>"), EX
        )
        assert fine.action == "allow"
    finally:
        engine.close()


def test_crs_that_cannot_load_refuses_to_start_with_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(WafUnavailable) as err:
        load_engine(replace(CRS, rules=tmp_path), route="native service legacy")
    message = str(err.value)
    assert "\n" not in message and "native service legacy" in message
    assert "apt-get install modsecurity-crs" in message
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "REQUEST-901-INITIALIZATION.conf").write_text("SecNoSuchDirective On\n")
    with pytest.raises(WafUnavailable) as broken:
        load_engine(replace(CRS, rules=tmp_path))
    assert "ModSecurity refused the rules" in str(broken.value)


def test_auto_falls_back_to_the_compact_set_only_when_crs_is_not_installed(tmp_path: Path) -> None:
    fallback = load_engine(replace(CRS, engine="auto", rules=tmp_path))
    assert fallback.name == "compact" and "CRS not used" in fallback.description
    assert load_engine(replace(CRS, engine="auto")).name == "crs"
    assert load_engine(replace(CRS, engine="compact")).name == "compact"


def test_the_generated_configuration_carries_the_route_settings() -> None:
    settings = replace(CRS, paranoia=3, inbound_threshold=7, exclusions=(Exclusion(920350),))
    text = crs_config(settings, crs_rules_dir(settings.rules))
    assert "setvar:tx.paranoia_level=3" in text and "inbound_anomaly_score_threshold=7" in text
    assert "SecRuleRemoveById 920350" in text and "SecResponseBodyAccess Off" in text
    assert text.index("9990100") < text.index("REQUEST-949")


def test_verdicts_are_built_from_modsecurity_log_lines() -> None:
    line = (
        "ModSecurity: Warning. Matched \"Operator `Rx' with parameter `x' against variable "
        '`ARGS:q\' (Value: `x\' ) [file "f"] [line "1"] [id "941100"] [msg "XSS Attack"] '
        '[data "Matched Data: x found within ARGS:q: x"] [severity "2"]'
    )
    allow = verdict_of([line], None)
    assert allow.action == "allow" and allow.rule_ids == ("941100",) and allow.anomaly_score == 5
    block = verdict_of(
        [line],
        Intervention(403, '[id "949110"] [msg "Inbound Anomaly Score Exceeded (Total Score: 8)"]'),
    )
    assert block.action == "block" and block.rule_ids == ("941100",) and block.anomaly_score == 8


def test_rule_evaluation_releases_the_gil(crs: Engine) -> None:
    """Another Python thread keeps running while ModSecurity evaluates a large body."""
    assert isinstance(crs, CrsEngine)
    body = "comment=" + "lorem+ipsum+dolor+sit+amet+" * 20_000
    done = threading.Event()
    ticks = 0

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        before = ticks
        crs.inspect_request(form(body), EX)
        during = ticks - before
    finally:
        done.set()
        counter.join()
    assert during >= 3  # a GIL held for the whole evaluation would allow none


def test_the_binding_rejects_broken_rule_text() -> None:
    with pytest.raises(Exception, match="ModSecurity refused the rules"):
        ModSecurity("SecNoSuchDirective On")
