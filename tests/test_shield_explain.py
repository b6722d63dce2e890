"""`netshield explain` on the in-process shield's records: its rules and config keys, not a
sidecar's."""

from __future__ import annotations

from typing import Any

from netshield.explain import PolicyView, explain_record
from netshield.policy import parse_policy
from netshield.record import ConnectionRecord

POLICY = """
trust_domain: t.test
services:
  frontend: {measurements: ["%s"]}
""" % ("ab" * 32)
VIEW = PolicyView(parse_policy(POLICY), 1, "the CAS")


def record(reason: str, **kw: Any) -> ConnectionRecord:
    base: dict[str, Any] = {
        "ts": "2025-01-31T11:00:00.000Z",
        "conn_id": "0k2x7c9m1a2b3c4d",
        "direction": "outbound",
        "listener": "connect",
        "src": "in-process",
        "dst": "10.9.0.1:5432",
        "local_identity": "spiffe://t.test/svc/frontend",
        "decision": "deny",
        "reason": reason,
        "detail": "something",
        "close_reason": reason,
        "policy_version": 1,
        "proxy": "in-process",
    }
    return ConnectionRecord(**{**base, **kw})


def test_a_destination_outside_the_mesh_is_explained_by_the_shields_rules() -> None:
    explained = explain_record(record("DESTINATION_NOT_IN_MESH"), VIEW)
    text = " ".join(explained.lines())
    assert "outbound.destinations" in text and "shield config" in text
    assert "transparent capture" not in text
    sidecar = explain_record(record("DESTINATION_NOT_IN_MESH", proxy="sidecar"), VIEW)
    assert "transparent capture" in " ".join(sidecar.lines())


def test_a_socket_past_the_shield_is_explained_with_the_config_key_to_change() -> None:
    explained = explain_record(record("EXTENSION_SOCKETS"), VIEW)
    assert explained.clause == "c_extensions" and explained.where == "shield config"
    assert "pure-Python client" in (explained.change or "")
