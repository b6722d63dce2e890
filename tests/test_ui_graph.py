"""The live view's pure parts: records in, graph out (netshield.ui.graph), the CAS feed parser,
lines read with netshield.logs' parser into the graph, and the page's JSON embedding."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.logs.reader import RawLine, ReadStats, parse_line
from netshield.policy import parse_policy
from netshield.record import ConnectionRecord
from netshield.ui.graph import UNIDENTIFIED, MeshGraph, Revocation, revocation_from_feed
from netshield.ui.page import content_security_policy, embed_json, render_page

TD = "mesh.netshield.test"
M = "a" * 64


def sid(service: str | None) -> str | None:
    return None if service is None else f"spiffe://{TD}/svc/{service}"


def rec(
    direction: str,
    local: str | None,
    peer: str | None,
    *,
    decision: str = "allow",
    reason: str = "OK",
    ts: str = "2026-01-01T00:00:00.000Z",
    conn: str = "c1",
    dst: str = "127.0.0.1:7002",
    close: str | None = "CLOSED",
    serial: str | None = None,
    mode: str = "enforce",
    detail: str = "why",
) -> ConnectionRecord:
    return ConnectionRecord(
        ts=ts,
        conn_id=conn,
        direction=direction,  # type: ignore[arg-type]
        listener="127.0.0.1:7100",
        src="127.0.0.1:50000",
        dst=dst,
        local_identity=sid(local),
        peer_identity=sid(peer),
        decision=decision,  # type: ignore[arg-type]
        reason=reason,
        detail=detail,
        close_reason=close,
        peer_serial=serial,
        mode=mode,  # type: ignore[arg-type]
    )


def graph_of(records: list[ConnectionRecord], **kw: Any) -> dict[str, Any]:
    g = MeshGraph(**kw)
    g.add_records(records)
    return g.snapshot()


def edge(snap: dict[str, Any], caller: str, callee: str) -> dict[str, Any]:
    found = [e for e in snap["edges"] if e["caller"] == caller and e["callee"] == callee]
    assert len(found) == 1, snap["edges"]
    return found[0]


def node(snap: dict[str, Any], node_id: str) -> dict[str, Any]:
    found = [n for n in snap["nodes"] if n["id"] == node_id]
    assert len(found) == 1, snap["nodes"]
    return found[0]


POLICY = f"""\
trust_domain: {TD}
services:
  frontend:
    measurements: ["{M}"]
  orders:
    measurements: ["{M}"]
    allowed_callers: [frontend]
    addresses: ["127.0.0.1:7002"]
  billing:
    measurements: ["{M}"]
    allowed_callers: [orders]
native_services:
  legacy:
    address: "127.0.0.1:8080"
"""


# --- examples ------------------------------------------------------------------------------------
def test_denial_by_the_callers_own_sidecar_is_a_denied_edge_to_the_named_service() -> None:
    # what the intruder's sidecar writes when the policy slice says it may not call orders
    denied = rec(
        "outbound",
        "intruder",
        None,
        decision="deny",
        reason="PEER_NOT_AUTHORIZED",
        dst="orders",
        close="PEER_NOT_AUTHORIZED",
        detail="intruder is not in services.orders.allowed_callers",
    )
    snap = graph_of([denied])
    e = edge(snap, "intruder", "orders")
    assert (e["allowed"], e["denied"]) == (0, 1)
    assert e["last_denied"]["reason"] == "PEER_NOT_AUTHORIZED"
    assert e["reasons"] == {"PEER_NOT_AUTHORIZED": 1}
    assert snap["totals"]["denied"] == 1


def test_allowed_call_is_an_allowed_edge_with_no_denials() -> None:
    snap = graph_of([rec("outbound", "frontend", "orders")])
    e = edge(snap, "frontend", "orders")
    assert (e["allowed"], e["denied"]) == (1, 0)
    assert e["last_denied"] is None and e["reasons"] == {}
    assert snap["totals"]["denied"] == 0


def test_a_connection_recorded_by_both_sidecars_counts_once() -> None:
    out = rec("outbound", "frontend", "orders", conn="a")
    inn = rec("inbound", "orders", "frontend", conn="b")
    e = edge(graph_of([out, inn]), "frontend", "orders")
    assert e["allowed"] == 1 and e["seen_by"] == ["callee", "caller"]


def test_two_connections_recorded_by_both_sidecars_count_twice() -> None:
    records = [
        rec("outbound", "frontend", "orders", conn="a1"),
        rec("outbound", "frontend", "orders", conn="a2"),
        rec("inbound", "orders", "frontend", conn="b1"),
        rec("inbound", "orders", "frontend", conn="b2"),
    ]
    assert edge(graph_of(records), "frontend", "orders")["allowed"] == 2


def test_a_connection_cut_off_as_revoked_marks_the_peer_instance() -> None:
    cut = rec("inbound", "orders", "frontend", close="PEER_REVOKED", serial="700af1e4a469dcc5")
    snap = graph_of([cut])
    n = node(snap, "frontend")
    assert n["revoked"] == "instance" and n["revoked_instances"] == ["700af1e4a469dcc5"]
    assert n["revoked_by"] == ["records"]
    assert node(snap, "orders")["revoked"] is None
    assert snap["totals"]["revoked_nodes"] == 1
    # a refusal for the same reason marks it too
    refused = rec(
        "inbound", "orders", "frontend", decision="deny", reason="PEER_REVOKED", serial="ab12"
    )
    assert node(graph_of([refused]), "frontend")["revoked_instances"] == ["ab12"]
    # the CAS feed and the records naming the same instance are one revocation from two sources
    g = MeshGraph()
    g.add_record(cut)
    feed = {
        "type": "revoke",
        "kind": "instance",
        "target": "700af1e4a469dcc5",
        "service": "frontend",
    }
    g.add_revocation(revocation_from_feed(feed) or pytest.fail("not a revocation"))
    assert g.snapshot()["revocations"] == [
        {
            "kind": "instance",
            "target": "700af1e4a469dcc5",
            "service": "frontend",
            "sources": ["cas", "records"],
        }
    ]


def test_a_normally_closed_connection_marks_nothing_revoked() -> None:
    snap = graph_of([rec("inbound", "orders", "frontend", close="CLOSED", serial="ab12")])
    assert all(n["revoked"] is None for n in snap["nodes"])
    assert snap["revocations"] == [] and snap["totals"]["revoked_nodes"] == 0


def test_cas_feed_revocations_mark_instances_services_and_list_platforms() -> None:
    g = MeshGraph()
    events: list[object] = [
        {"seq": 3, "type": "revoke", "kind": "instance", "target": "ABC1", "service": "frontend"},
        {"seq": 4, "type": "revoke", "kind": "service", "target": "billing", "service": "billing"},
        {"seq": 5, "type": "revoke", "kind": "platform", "target": "p1", "service": None},
        {"seq": 6, "type": "policy.apply", "version": 2},
    ]
    for event in events:
        revocation = revocation_from_feed(event)
        if revocation is not None:
            g.add_revocation(revocation)
    snap = g.snapshot()
    assert node(snap, "frontend")["revoked"] == "instance"
    assert node(snap, "frontend")["revoked_instances"] == ["abc1"]
    assert node(snap, "billing")["revoked"] == "service"
    assert node(snap, "billing")["revoked_by"] == ["cas"]
    assert {"kind": "platform", "target": "p1", "service": None, "sources": ["cas"]} in snap[
        "revocations"
    ]
    assert len(snap["revocations"]) == 3
    assert revocation_from_feed(events[3]) is None


def test_policy_adds_quiet_services_and_the_calls_it_permits() -> None:
    g = MeshGraph()
    g.add_record(rec("outbound", "frontend", "orders"))
    g.add_record(rec("outbound", "stranger", "orders", conn="x"))
    g.set_policy(parse_policy(POLICY), 3)
    snap = g.snapshot()
    assert {n["id"] for n in snap["nodes"]} == {
        "billing",
        "frontend",
        "legacy",
        "orders",
        "stranger",
    }
    assert node(snap, "legacy")["kind"] == "native"
    assert node(snap, "stranger")["in_policy"] is False
    assert node(snap, "billing")["in_policy"] is True
    assert edge(snap, "frontend", "orders")["permitted"] is True
    assert edge(snap, "stranger", "orders")["permitted"] is False
    assert snap["permitted_unused"] == [{"caller": "orders", "callee": "billing"}]
    assert snap["policy_version"] == 3


def test_without_a_policy_nothing_is_called_permitted_or_out_of_policy() -> None:
    snap = graph_of([rec("outbound", "stranger", "orders")])
    assert edge(snap, "stranger", "orders")["permitted"] is None
    assert node(snap, "stranger")["in_policy"] is None
    assert snap["permitted_unused"] == []


def test_an_outbound_failure_known_only_by_address_is_named_through_the_registry() -> None:
    unreachable = rec("outbound", "frontend", None, decision="deny", reason="UPSTREAM_UNREACHABLE")
    g = MeshGraph()
    g.add_record(unreachable)
    assert edge(g.snapshot(), "frontend", "addr:127.0.0.1:7002")["denied"] == 1
    g.set_policy(parse_policy(POLICY))  # orders listens on 127.0.0.1:7002
    assert edge(g.snapshot(), "frontend", "orders")["denied"] == 1
    # ... and through addresses the records themselves showed to belong to a service
    h = MeshGraph()
    h.add_records([unreachable, rec("outbound", "frontend", "orders", conn="z")])
    assert edge(h.snapshot(), "frontend", "orders")["denied"] == 1


def test_a_peer_without_a_verified_identity_is_the_unidentified_node() -> None:
    garbage = rec(
        "inbound", "orders", None, decision="deny", reason="TLS_HANDSHAKE_FAILED", close=None
    )
    snap = graph_of([garbage])
    assert edge(snap, UNIDENTIFIED, "orders")["denied"] == 1
    assert node(snap, UNIDENTIFIED)["kind"] == "unidentified"


def test_the_last_reason_is_the_latest_record_in_any_order() -> None:
    early = rec("outbound", "frontend", "orders", ts="2026-01-01T00:00:01.000Z", conn="e")
    late = rec(
        "outbound",
        "frontend",
        "orders",
        ts="2026-01-01T00:00:09.000Z",
        conn="l",
        decision="deny",
        reason="NO_CREDENTIALS",
    )
    for order in ([early, late], [late, early]):
        e = edge(graph_of(order), "frontend", "orders")
        assert e["last"]["reason"] == "NO_CREDENTIALS" and e["last"]["conn_id"] == "l"


def test_audit_mode_would_be_denials_are_allowed_and_counted_as_audited() -> None:
    audited = rec(
        "inbound", "orders", "intruder", reason="PEER_NOT_AUTHORIZED", mode="audit", conn="q"
    )
    e = edge(graph_of([audited]), "intruder", "orders")
    assert (e["allowed"], e["denied"], e["audited"]) == (1, 0, 1)


def test_edges_beyond_the_cap_are_counted_not_kept() -> None:
    records = [rec("outbound", f"s{i}", "orders", conn=str(i)) for i in range(10)]
    snap = graph_of(records, max_edges=4)
    assert len(snap["edges"]) == 4 and snap["totals"]["overflow"] == 6
    assert snap["totals"]["records"] == 10


# --- properties ----------------------------------------------------------------------------------
SERVICES = ["frontend", "orders", "intruder", None]
records_st = st.builds(
    rec,
    direction=st.sampled_from(["inbound", "outbound"]),
    local=st.sampled_from(SERVICES),
    peer=st.sampled_from(SERVICES),
    decision=st.sampled_from(["allow", "deny"]),
    reason=st.sampled_from(["OK", "PEER_NOT_AUTHORIZED", "PEER_REVOKED", "NO_CREDENTIALS"]),
    ts=st.sampled_from([f"2026-01-01T00:00:0{i}.000Z" for i in range(4)]),
    conn=st.text("abc", min_size=1, max_size=2),
    dst=st.sampled_from(["127.0.0.1:7002", "orders", "127.0.0.1:9"]),
    close=st.sampled_from([None, "CLOSED", "PEER_REVOKED"]),
    serial=st.sampled_from([None, "ab", "cd"]),
    mode=st.sampled_from(["enforce", "audit"]),
    detail=st.text(max_size=20),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(records_st, max_size=25), st.randoms(use_true_random=False))
def test_the_graph_does_not_depend_on_record_order(
    records: list[ConnectionRecord], rnd: random.Random
) -> None:
    shuffled = list(records)
    rnd.shuffle(shuffled)
    assert graph_of(records) == graph_of(shuffled)


@settings(max_examples=200, deadline=None)
@given(st.lists(records_st, max_size=25))
def test_one_sided_records_are_all_counted_exactly_once(records: list[ConnectionRecord]) -> None:
    outbound = [r for r in records if r.direction == "outbound"]
    snap = graph_of(outbound)
    assert sum(e["allowed"] for e in snap["edges"]) == sum(r.decision == "allow" for r in outbound)
    assert sum(e["denied"] for e in snap["edges"]) == sum(r.decision == "deny" for r in outbound)
    assert snap["totals"]["records"] == len(outbound)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["frontend", "orders", "intruder"]),
            st.sampled_from(["frontend", "orders", "intruder"]),
            st.sampled_from(["allow", "deny"]),
        ),
        max_size=20,
    )
)
def test_connections_seen_by_both_sidecars_count_once_per_connection(
    conns: list[tuple[str, str, str]],
) -> None:
    records = []
    for i, (caller, callee, decision) in enumerate(conns):
        reason = "OK" if decision == "allow" else "PEER_NOT_AUTHORIZED"
        records.append(
            rec("outbound", caller, callee, decision=decision, reason=reason, conn=f"o{i}")
        )
        records.append(
            rec("inbound", callee, caller, decision=decision, reason=reason, conn=f"i{i}")
        )
    snap = graph_of(records)
    for e in snap["edges"]:
        pair = [(c, d, x) for c, d, x in conns if (c, d) == (e["caller"], e["callee"])]
        assert e["allowed"] == sum(x == "allow" for *_, x in pair)
        assert e["denied"] == sum(x == "deny" for *_, x in pair)
    assert len(snap["edges"]) == len({(c, d) for c, d, _ in conns})


@settings(max_examples=100, deadline=None)
@given(st.lists(records_st, max_size=10), st.text(max_size=40))
def test_any_graph_embeds_in_the_page_as_inert_json(
    records: list[ConnectionRecord], odd: str
) -> None:
    snap = graph_of(records)
    snap["nodes"].append({"id": odd, "label": f"</script><b>{odd}</b>&amp;"})
    embedded = embed_json(snap)
    assert json.loads(embedded) == snap
    assert not re.search(r"[<>&]", embedded)
    page = render_page(snap)
    data = page.split('<script id="graph" type="application/json">', 1)[1]
    assert data.split("</script>", 1)[0] == embedded


json_st = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
feed_event_st = st.fixed_dictionaries(
    {"type": st.sampled_from(["revoke", "policy.apply", 3])},
    optional={
        "kind": st.sampled_from(["instance", "service", "platform", "node", None]),
        "target": st.one_of(st.text(max_size=6), st.integers(), st.none()),
        "service": st.one_of(st.text(max_size=6), st.none(), st.integers()),
    },
)


@settings(max_examples=300)
@given(st.one_of(json_st, feed_event_st))
def test_the_feed_parser_takes_any_json_and_never_raises(event: object) -> None:
    result = revocation_from_feed(event)
    if result is not None:
        assert isinstance(result, Revocation) and result.source == "cas"
        assert result.kind in ("instance", "service", "platform") and result.target


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200), records_st.map(lambda r: r.to_json().encode()))))
def test_any_line_is_either_counted_in_the_graph_or_skipped(lines: list[bytes]) -> None:
    # the view reads lines with netshield.logs' reader; whatever they hold, nothing raises
    stats, g = ReadStats(), MeshGraph()
    for n, data in enumerate(lines, 1):
        entry = parse_line(RawLine(data, "records.jsonl", n), stats)
        if entry is not None:
            g.add_record(entry.record)
    snap = g.snapshot()
    assert snap["totals"]["records"] == stats.records == len(lines) - stats.skipped
    edge_total = sum(e["allowed"] + e["denied"] for e in snap["edges"])
    assert edge_total <= stats.records


def test_the_page_allows_exactly_its_own_inline_script_and_style() -> None:
    csp = content_security_policy()
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    page = render_page(MeshGraph().snapshot())
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        '"http://www.w3.org/2000/svg"', ""
    )
    assert "https://" not in page and "src=" not in page


def test_the_graph_and_the_page_do_no_io() -> None:
    from tests.test_layering import IO_MODULES, PKG, imports_of

    for module in ("graph.py", "page.py"):
        bad = {m for m in imports_of(PKG / "ui" / module) if m.split(".")[0] in IO_MODULES}
        assert not bad, f"netshield/ui/{module} imports {sorted(bad)}"
