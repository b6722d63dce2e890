"""`netshield logs` reads WAF verdicts: --waf-rule filters connections by a rule that matched one
of their requests, and --summary counts requests per WAF rule and per action."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from netshield.logs.filters import RecordFilter
from netshield.logs.summary import Summary
from netshield.record import ConnectionRecord, WafOutcome, WafRequest
from netshield.recordlog import RecordSink
from tests.support import netshield_cmd


def rec(conn_id: str, requests: tuple[WafRequest, ...], **kw: Any) -> ConnectionRecord:
    rules = tuple(dict.fromkeys(r for q in requests for r in q.rule_ids))
    blocked = any(q.action == "block" for q in requests)
    base: dict[str, Any] = {
        "ts": "2025-01-31T11:00:00.000Z",
        "conn_id": conn_id,
        "direction": "outbound",
        "listener": "127.0.0.1:7001",
        "src": "127.0.0.1:40000",
        "dst": "127.0.0.1:8080",
        "decision": "deny" if blocked else "allow",
        "reason": "WAF_BLOCKED" if blocked else "OK",
        "detail": "native service legacy",
        "close_reason": "CLOSED",
        "waf": WafOutcome(
            "block" if blocked else "pass",
            rules,
            engine="crs",
            mode="block",
            requests=requests,
            request_count=len(requests),
        ),
    }
    return ConnectionRecord(**{**base, **kw})


def req(n: int, action: str, *rules: str) -> WafRequest:
    return WafRequest(
        f"c-{n}", "GET", "/", action, 403 if action == "block" else 200, rules, 5 * len(rules)
    )


SQLI = rec("c1", (req(1, "pass"), req(2, "block", "942100", "942190")))
XSS = rec("c2", (req(1, "block", "941100"),))
CLEAN = rec("c3", (req(1, "pass"), req(2, "pass")))


def test_the_rule_filter_matches_connections_where_that_rule_matched() -> None:
    only = RecordFilter(waf_rules=frozenset({"942100"}))
    assert [r.conn_id for r in (SQLI, XSS, CLEAN) if only.matches(r)] == ["c1"]
    either = RecordFilter(waf_rules=frozenset({"942100", "941100"}))
    assert [r.conn_id for r in (SQLI, XSS, CLEAN) if either.matches(r)] == ["c1", "c2"]


def test_the_summary_counts_requests_per_rule_and_action() -> None:
    summary = Summary()
    for record in (SQLI, XSS, CLEAN):
        summary.add(record)
    data = summary.to_dict()
    assert data["waf_rules"] == {"942100": 1, "942190": 1, "941100": 1}
    assert data["waf_actions"] == {"pass": 3, "block": 2}
    text = "\n".join(summary.lines())
    assert "WAF rules, by requests matched:" in text and "942100" in text
    empty = Summary()
    empty.add(rec("c9", (), waf=None))
    assert "WAF rules" not in "\n".join(empty.lines())


def test_records_with_waf_verdicts_round_trip_through_json() -> None:
    again = ConnectionRecord.from_dict(json.loads(json.dumps(SQLI.to_dict())))
    assert (
        again == SQLI
        and again.waf is not None
        and again.waf.requests[1].rule_ids == ("942100", "942190")
    )


def test_netshield_logs_filters_and_summarises_by_waf_rule(tmp_path: Path) -> None:
    log = tmp_path / "records.jsonl"
    sink = RecordSink(log)
    for record in (SQLI, XSS, CLEAN):
        sink.write(record)
    sink.close()
    out = subprocess.run(
        netshield_cmd("logs", str(log), "--waf-rule", "942100", "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["conn_id"] for line in out.stdout.splitlines()] == ["c1"]
    summary = subprocess.run(
        netshield_cmd("logs", str(log), "--summary"), capture_output=True, text=True, timeout=60
    )
    assert summary.returncode == 0 and "941100" in summary.stdout and "block 2" in summary.stdout
