"""`explain_record` and `check_access`: sentences that name the clause and the policy version and
what would have to change, for every reason code the data plane writes; the dry run uses the
sidecars' own decision functions and gives the same explanation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.agent.revocations import RevocationState
from netshield.explain import EXPLAINERS, PolicyView, check_access, describe, explain_record
from netshield.policy import parse_policy
from netshield.reasons import REASONS, Reason, Stage
from netshield.record import ConnectionRecord

TD = "t.test"
M = "ab" * 32
POLICY = f"""
trust_domain: {TD}
certificates: {{min_epoch: 3}}
services:
  frontend: {{measurements: ["{M}"]}}
  intruder: {{measurements: ["{M}"]}}
  legacy: {{measurements: ["{M}"]}}
  orders:
    measurements: ["{M}"]
    allowed_callers: [frontend]
    addresses: ["10.0.0.2:7002"]
  audited:
    measurements: ["{M}"]
    authorization: audit
  retired:
    measurements: ["{M}"]
    enabled: false
"""
VIEW = PolicyView(parse_policy(POLICY), 7, "the CAS at https://cas.test:8443")
NOW = datetime(2025, 1, 31, 12, tzinfo=UTC)


def sid(name: str) -> str:
    return f"spiffe://{TD}/svc/{name}"


def rec(**kw: Any) -> ConnectionRecord:
    base: dict[str, Any] = {
        "ts": "2025-01-31T11:00:00.000Z",
        "conn_id": "0k2x7c9m1a2b3c4d",
        "direction": "inbound",
        "listener": "0.0.0.0:7002",
        "src": "10.0.0.5:40000",
        "dst": "127.0.0.1:9000",
        "local_identity": sid("orders"),
        "peer_identity": sid("frontend"),
        "decision": "allow",
        "reason": "OK",
        "detail": "frontend is in services.orders.allowed_callers (policy version 7)",
        "close_reason": "CLOSED",
        "policy_version": 7,
        "peer_epoch": 3,
        "peer_serial": "1f",
    }
    return ConnectionRecord(**{**base, **kw})


def denied(caller: str = "intruder", **kw: Any) -> ConnectionRecord:
    return rec(
        peer_identity=sid(caller),
        decision="deny",
        reason="PEER_NOT_AUTHORIZED",
        detail=f"{caller} is not in services.orders.allowed_callers (policy version 7); add "
        f"`{caller}` there to allow it",
        close_reason="PEER_NOT_AUTHORIZED",
        **kw,
    )


DATA_PLANE = [r.value for r, info in REASONS.items() if info.stage is Stage.DATA_PLANE]


@pytest.mark.parametrize("code", DATA_PLANE)
def test_every_data_plane_reason_has_its_own_explainer(code: str) -> None:
    assert code in EXPLAINERS
    record = rec(decision="deny", reason=code, detail="something happened", close_reason=code)
    explanation = explain_record(record, VIEW)
    assert explanation.sentences and explanation.verdict == "denied"
    assert not explanation.sentences[0].startswith(f"{code}:")  # not the generic fallback


def test_an_aggregate_of_a_floods_denials_says_how_many_and_when() -> None:
    flood = rec(
        peer_identity=None,
        decision="deny",
        reason="HANDSHAKE_SHED",
        detail="the client had not completed the TLS handshake",
        close_reason="HANDSHAKE_SHED",
        count=1999,
        last_ts="2025-01-31T11:00:09.000Z",
    )
    text = " ".join(explain_record(flood, VIEW).lines())
    assert "stands for 1999 connections from 10.0.0.5" in text
    assert "until" not in text and "2025-01-31T11:00:09.000Z" in text
    assert "limits.max_handshakes" in text
    one = " ".join(explain_record(denied(), VIEW).lines())
    assert "stands for" not in one


def test_a_code_it_does_not_know_still_gets_a_sentence() -> None:
    explanation = explain_record(rec(decision="deny", reason="SOMETHING_NEW", detail="d"), VIEW)
    assert explanation.sentences[0].startswith("SOMETHING_NEW: d.")
    assert "newer sidecar" in explanation.sentences[0]


def test_deny_names_the_clause_the_version_and_the_change() -> None:
    explanation = explain_record(denied(), VIEW)
    assert explanation.verdict == "denied"
    assert explanation.sentences[0] == (
        "Denied: `intruder` is not in `services.orders.allowed_callers` (policy version 7)."
    )
    assert explanation.clause == "services.orders.allowed_callers"
    assert (
        explanation.change
        == "add `intruder` to `services.orders.allowed_callers`, policy version 7"
    )
    assert (
        "To change it: add `intruder` to `services.orders.allowed_callers`, policy version 7."
        in (explanation.lines())
    )
    assert "Decided by: `services.orders.allowed_callers` in the policy." in explanation.lines()


def test_allow_names_the_clause_and_how_to_revoke_it() -> None:
    explanation = explain_record(rec(), VIEW)
    assert explanation.verdict == "allowed"
    assert explanation.sentences[0] == (
        "Allowed: `frontend` is in `services.orders.allowed_callers` (policy version 7)."
    )
    assert explanation.change is not None
    assert explanation.change.startswith(
        "remove `frontend` from `services.orders.allowed_callers`, policy version 7"
    )
    assert "Both sides finished normally" in " ".join(explanation.sentences)


def test_without_a_policy_the_record_alone_is_explained_and_says_so() -> None:
    explanation = explain_record(denied())
    assert (
        explanation.change
        == "add `intruder` to `services.orders.allowed_callers`, policy version 7"
    )
    assert any("--policy FILE or --cas/--admin" in s for s in explanation.sentences)


def test_a_newer_policy_that_already_allows_it_is_reported() -> None:
    newer = PolicyView(
        parse_policy(
            POLICY.replace("allowed_callers: [frontend]", "allowed_callers: [frontend, intruder]")
        ),
        8,
        "cas",
    )
    explanation = explain_record(denied(), newer)
    text = " ".join(explanation.sentences)
    assert "Policy version 8 does list `intruder`" in text and "re-attests" in text
    assert "the CAS is at version 8 now" in text
    assert explanation.change is not None and "nothing in the policy" in explanation.change


def test_a_caller_the_policy_does_not_know_needs_a_service_entry() -> None:
    explanation = explain_record(denied("frontnd"), VIEW)
    assert "did you mean 'frontend'" in " ".join(explanation.sentences)
    assert explanation.change is not None
    assert explanation.change.startswith("add a service `frontnd` under `services`")


def test_audit_mode_says_it_would_have_been_denied() -> None:
    record = rec(
        local_identity=sid("audited"),
        peer_identity=sid("intruder"),
        mode="audit",
        reason="PEER_NOT_AUTHORIZED",
        detail="audit mode, allowed: intruder is not in services.audited.allowed_callers",
    )
    explanation = explain_record(record, VIEW)
    assert explanation.verdict == "allowed (audit mode)"
    assert "under `enforce` it would be denied" in explanation.sentences[0]
    assert explanation.change is not None and "authorization: enforce" in explanation.change


def test_outbound_denial_before_dialling_names_the_destination() -> None:
    record = rec(
        direction="outbound",
        src="127.0.0.1:5000",
        dst="orders",
        local_identity=sid("legacy"),
        peer_identity=None,
        decision="deny",
        reason="PEER_NOT_AUTHORIZED",
        detail="legacy is not in services.orders.allowed_callers",
    )
    explanation = explain_record(record, VIEW)
    assert describe(record).endswith(
        "(outbound, legacy → orders) at 2025-01-31T11:00:00.000Z: deny PEER_NOT_AUTHORIZED"
    )
    assert (
        explanation.change == "add `legacy` to `services.orders.allowed_callers`, policy version 7"
    )


def test_identity_mismatch_names_the_registry_entry() -> None:
    record = rec(
        direction="outbound",
        dst="10.0.0.2:7002",
        local_identity=sid("frontend"),
        peer_identity=sid("intruder"),
        decision="deny",
        reason="PEER_IDENTITY_MISMATCH",
        detail=f"expected {sid('billing')} but the server is {sid('intruder')}",
    )
    explanation = explain_record(record, VIEW)
    assert explanation.clause == "services.billing.addresses"
    assert (
        explanation.change is not None
        and "10.0.0.2:7002 is registered for `orders`" in explanation.change
    )


def test_stale_epoch_names_min_epoch_and_its_value() -> None:
    record = rec(decision="deny", reason="POLICY_STALE", detail="d", peer_epoch=2)
    explanation = explain_record(record, VIEW)
    assert (
        "carries epoch 2, below `certificates.min_epoch` (3 in policy version 7)"
        in (explanation.sentences[0])
    )
    assert explanation.clause == "certificates.min_epoch"


def test_close_reasons_of_allowed_connections_are_explained() -> None:
    idle = explain_record(rec(close_reason="IDLE_TIMEOUT", bytes_in=5), VIEW)
    assert any("`limits.idle_timeout`" in s for s in idle.sentences)
    assert any("Until then 5 in, 0 out" in s for s in idle.sentences)
    revoked = explain_record(rec(close_reason="PEER_REVOKED"), VIEW)
    assert any("was revoked at the CAS while it was open" in s for s in revoked.sentences)
    upstream = explain_record(
        rec(close_reason="UPSTREAM_UNREACHABLE", detail="ok; 127.0.0.1:9000: Connection refused"),
        VIEW,
    )
    assert upstream.sentences[1].startswith("Authorized, but the upstream 127.0.0.1:9000")
    assert upstream.clause == "inbound.upstream" and upstream.where == "sidecar config"
    assert "Decided by: `inbound.upstream` in the sidecar config." in upstream.lines()
    drained = explain_record(rec(decision="deny", reason="DRAINED", detail="d"), VIEW)
    assert drained.sentences[0].startswith("Refused: the sidecar was shutting down")


codes = st.sampled_from(
    [r.value for r in Reason] + ["DESTINATION_NOT_IN_MESH", "WAF_BLOCKED", "X_Y"]
)
names = st.sampled_from(["frontend", "orders", "intruder", "ghost", "retired"])


@settings(max_examples=300, deadline=None)
@given(
    codes,
    st.one_of(st.none(), codes),
    st.sampled_from(["inbound", "outbound"]),
    st.sampled_from(["allow", "deny"]),
    st.sampled_from(["enforce", "audit"]),
    st.one_of(st.none(), names.map(sid), st.text(max_size=20)),
    st.one_of(st.none(), names.map(sid)),
    st.text(max_size=30),
    st.one_of(st.none(), st.integers(0, 10)),
    st.booleans(),
)
def test_explain_never_fails_whatever_the_record(
    reason: str,
    close: str | None,
    direction: str,
    decision: str,
    mode: str,
    peer: str | None,
    local: str | None,
    dst: str,
    version: int | None,
    with_view: bool,
) -> None:
    record = rec(
        reason=reason,
        close_reason=close,
        direction=direction,
        decision=decision,
        mode=mode,
        peer_identity=peer,
        local_identity=local,
        dst=dst,
        policy_version=version,
    )
    explanation = explain_record(record, VIEW if with_view else None)
    assert explanation.sentences and all(isinstance(s, str) for s in explanation.lines())
    assert describe(record)


# --- the dry run ---------------------------------------------------------------------------------


def test_dry_run_allows_a_listed_caller_with_the_same_explanation_as_a_record() -> None:
    result = check_access(VIEW, "frontend", "orders", now=NOW)
    assert result.allowed and result.reason == "OK"
    assert result.explanation == explain_record(result.record, VIEW)
    assert result.explanation.sentences[0] == (
        "Allowed: `frontend` is in `services.orders.allowed_callers` (policy version 7)."
    )
    assert result.steps[-2:] == (
        "`frontend`'s sidecar (outbound): allow",
        "`orders`'s sidecar (inbound): allow",
    )


def test_dry_run_denies_an_unlisted_caller_and_says_what_to_add() -> None:
    result = check_access(VIEW, sid("intruder"), "orders", now=NOW)
    assert not result.allowed and result.reason == "PEER_NOT_AUTHORIZED"
    assert result.explanation.change == (
        "add `intruder` to `services.orders.allowed_callers`, policy version 7"
    )


def test_dry_run_in_audit_mode_allows_but_says_it_would_deny() -> None:
    result = check_access(VIEW, "intruder", "audited", now=NOW)
    assert result.allowed and result.explanation.verdict == "allowed (audit mode)"


@pytest.mark.parametrize(
    ("caller", "callee", "code", "change"),
    [
        ("frontnd", "orders", "SERVICE_UNKNOWN", "add a service `frontnd` under `services`"),
        ("frontend", "retired", "SERVICE_DISABLED", "set `services.retired.enabled: true`"),
        ("retired", "orders", "SERVICE_DISABLED", "set `services.retired.enabled: true`"),
    ],
)
def test_dry_run_refuses_services_that_cannot_attest(
    caller: str, callee: str, code: str, change: str
) -> None:
    result = check_access(VIEW, caller, callee, now=NOW)
    assert not result.allowed and result.reason == code
    assert result.explanation.change is not None and result.explanation.change.startswith(change)


def test_dry_run_sees_revocations_from_the_feed() -> None:
    state = RevocationState(min_epoch=3)
    state.apply({"seq": 4, "type": "revoke", "kind": "service", "target": "frontend"})
    result = check_access(
        VIEW,
        "frontend",
        "orders",
        now=NOW,
        check=state.check,
        service_revoked=lambda n: state.revoked(serial=None, service=n, platform_id=None),
    )
    assert not result.allowed and result.reason == "SERVICE_REVOKED"
    only_check = check_access(VIEW, "frontend", "orders", now=NOW, check=state.check)
    assert only_check.reason == "PEER_REVOKED"  # the callee's sidecar refuses it too


def test_dry_run_refuses_identities_of_another_trust_domain() -> None:
    with pytest.raises(ValueError, match="not in the trust domain"):
        check_access(VIEW, "spiffe://other.test/svc/frontend", "orders", now=NOW)
    with pytest.raises(ValueError, match="not a service identity"):
        check_access(VIEW, f"spiffe://{TD}/admin/op", "orders", now=NOW)
