"""The mesh as a graph: connection records, CAS revocations and the policy in, nodes and edges out.

Nodes are services (from the records' local and peer identities and from the policy), native
services from the policy, and stand-ins for what a record could not name: a peer without a
verified identity ("unidentified"), a destination known only by its address. An edge is
caller → callee with allowed and denied counts, counts by reason, and the latest decision.

Most connections are recorded twice, by the caller's sidecar (outbound) and by the callee's
(inbound); some only once (the caller's sidecar refused it before dialling, or only one side's
file is read). Each side's counts are kept apart and an edge shows, per decision and per reason,
the larger of the two, so a connection seen by both sides counts once.

Connections carried by tunnels count like any other, and an edge also says how many of them were
streams (`streams`) and how many of its tunnels closed (`tunnels`: their own records), so the
view shows the connections of a pair grouped by the tunnels that carried them.

A node is marked revoked from the CAS feed (an instance serial, or the whole service) and from
records whose peer was cut off or refused as revoked (`PEER_REVOKED`).

Guarantees: pure (no I/O, no clock); `snapshot()` does not depend on the order in which records
and revocations were added; memory is bounded by the number of distinct edges (capped at
`max_edges`; records beyond it are counted in `overflow`), never by the number of records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from netshield.identity import SpiffeId, name_problem
from netshield.policy import Policy
from netshield.record import ConnectionRecord

UNIDENTIFIED = "(unidentified)"  # not a service name, so it cannot collide with one
ADDRESS_PREFIX = "addr:"
IDENTITY_PREFIX = "id:"
REVOKED_CODE = "PEER_REVOKED"
MAX_EDGES = 10_000

Side = Literal["caller", "callee"]
RevocationKind = Literal["instance", "service", "platform"]
REVOCATION_KINDS: tuple[RevocationKind, ...] = ("instance", "service", "platform")


@dataclass(frozen=True, slots=True)
class Revocation:
    """One thing revoked: an instance (certificate serial) of a service, a service, a platform."""

    kind: RevocationKind
    target: str  # serial (lower-case hex), service name or platform id
    service: str | None  # the service it concerns (None for a platform)
    source: Literal["cas", "records"]


def revocation_from_feed(event: object) -> Revocation | None:
    """A CAS feed event (`GET /v1/feed`) as a Revocation; None for any other event or shape."""
    if not isinstance(event, dict) or event.get("type") != "revoke":
        return None
    kind, target, service = event.get("kind"), event.get("target"), event.get("service")
    if kind not in REVOCATION_KINDS or not isinstance(target, str) or not target:
        return None
    if service is not None and not isinstance(service, str):
        return None
    if kind == "service":
        service = target
    return Revocation(kind, target.lower() if kind == "instance" else target, service, "cas")


def node_of_identity(identity: str | None) -> str:
    """The node id for a SPIFFE id: the service name, or the whole id for other identities."""
    if identity is None:
        return UNIDENTIFIED
    try:
        service = SpiffeId.parse(identity).service
    except ValueError:
        service = None
    return service if service is not None else IDENTITY_PREFIX + identity


@dataclass
class _Counts:
    """What one side's sidecar recorded about one caller → callee pair."""

    allowed: int = 0
    denied: int = 0
    audited: int = 0  # allowed only because the callee's authorization mode is "audit"
    streams: int = 0  # connections carried as streams of a tunnel
    tunnels: int = 0  # tunnels that closed (their own records)
    reasons: Counter[str] = field(default_factory=Counter)
    last: tuple[str, str, str, str, str] | None = None  # ts, conn_id, decision, reason, detail
    last_denied: tuple[str, str, str, str, str] | None = None

    def add(self, rec: ConnectionRecord) -> None:
        if rec.direction == "tunnel":  # not a connection of its own: its streams are
            self.tunnels += 1
            return
        if rec.tunnel_id is not None:
            self.streams += 1
        n = rec.count  # an aggregate of a flood's denials stands for many connections
        if rec.decision == "allow":
            self.allowed += n
            if rec.mode == "audit" and rec.reason != "OK":
                self.audited += n
        else:
            self.denied += n
        if rec.reason != "OK":
            self.reasons[rec.reason] += n
        key = (rec.ts, rec.conn_id, rec.decision, rec.reason, rec.detail)
        self.merge_last(key, key if rec.decision == "deny" else None)

    def merge_last(
        self,
        last: tuple[str, str, str, str, str] | None,
        last_denied: tuple[str, str, str, str, str] | None,
    ) -> None:
        if last is not None and (self.last is None or last > self.last):
            self.last = last
        if last_denied is not None and (self.last_denied is None or last_denied > self.last_denied):
            self.last_denied = last_denied


@dataclass(frozen=True, slots=True)
class _Key:
    """An edge before the callee is resolved: outbound records may name only an address."""

    caller: str
    callee: str  # a node id, or ADDRESS_PREFIX + dst still to be resolved


class MeshGraph:
    """Accumulates records and revocations; `snapshot()` is the graph as JSON-able data."""

    def __init__(self, *, max_edges: int = MAX_EDGES) -> None:
        self.max_edges = max_edges
        self._sides: dict[_Key, dict[Side, _Counts]] = {}
        self._identities: set[str] = set()  # node ids seen in records
        self._learned_addresses: dict[str, set[str]] = {}  # dst address -> services seen there
        self._revocations: set[Revocation] = set()
        self._policy: Policy | None = None
        self._policy_version: int | None = None
        self.records = 0
        self.overflow = 0

    # --- input -----------------------------------------------------------------------------------
    def add_record(self, rec: ConnectionRecord) -> None:
        """Count one connection record."""
        self.records += 1
        local, peer = node_of_identity(rec.local_identity), node_of_identity(rec.peer_identity)
        side: Side
        if rec.direction == "inbound" or (rec.direction == "tunnel" and rec.listener != "tunnel"):
            key, side = _Key(caller=peer, callee=local), "callee"
        else:
            key, side = _Key(caller=local, callee=self._outbound_callee(rec, peer)), "caller"
        sides = self._sides.get(key)
        if sides is None:
            if len(self._sides) >= self.max_edges:
                self.overflow += 1
                return
            sides = self._sides[key] = {}
        sides.setdefault(side, _Counts()).add(rec)
        for node in (key.caller, key.callee):
            self._identities.add(node)
        revoked = REVOKED_CODE in (rec.close_reason, rec.reason if rec.decision == "deny" else None)
        if revoked and rec.peer_identity is not None:
            target = rec.peer_serial or "unknown serial"
            self._revocations.add(Revocation("instance", target, peer, "records"))

    def _outbound_callee(self, rec: ConnectionRecord, peer: str) -> str:
        if peer != UNIDENTIFIED:
            if rec.dst:
                self._learned_addresses.setdefault(rec.dst, set()).add(peer)
            return peer
        if name_problem(rec.dst) is None:  # refused before dialling: dst names the service
            return rec.dst
        return ADDRESS_PREFIX + rec.dst

    def add_records(self, records: Iterable[ConnectionRecord]) -> None:
        for rec in records:
            self.add_record(rec)

    def add_revocation(self, revocation: Revocation) -> None:
        self._revocations.add(revocation)

    def set_policy(self, policy: Policy | None, version: int | None = None) -> None:
        """The current policy (None: not known); adds its services and permitted calls."""
        self._policy, self._policy_version = policy, version

    # --- output ----------------------------------------------------------------------------------
    def _address_map(self) -> dict[str, str]:
        """dst address -> service, from the policy's registry and from the records (unambiguous
        addresses only)."""
        seen: dict[str, set[str]] = {a: set(s) for a, s in self._learned_addresses.items()}
        if self._policy is not None:
            for svc in self._policy.services.values():
                for address in svc.addresses:
                    seen.setdefault(address, set()).add(svc.name)
            for native in self._policy.native_services.values():
                seen.setdefault(native.address, set()).add(native.name)
        return {address: next(iter(names)) for address, names in seen.items() if len(names) == 1}

    def snapshot(self) -> dict[str, Any]:
        """Nodes, edges and revocations, sorted, as JSON-able data."""
        addresses = self._address_map()

        def resolve(node: str) -> str:
            if node.startswith(ADDRESS_PREFIX):
                return addresses.get(node[len(ADDRESS_PREFIX) :], node)
            return node

        merged: dict[tuple[str, str], dict[Side, list[_Counts]]] = {}
        for key, sides in self._sides.items():
            pair = (resolve(key.caller), resolve(key.callee))
            slot = merged.setdefault(pair, {})
            for side, counts in sides.items():
                slot.setdefault(side, []).append(counts)

        permitted = self._permitted()
        edges = [
            _edge(caller, callee, sides, permitted)
            for (caller, callee), sides in sorted(merged.items())
        ]
        used = {(e["caller"], e["callee"]) for e in edges}
        unused = sorted(permitted - used) if permitted is not None else []
        node_ids = {resolve(n) for n in self._identities}
        node_ids.update(c for pair in unused for c in pair)
        if self._policy is not None:
            node_ids.update(self._policy.services)
            node_ids.update(self._policy.native_services)
        revocations = sorted(self._revocations, key=_revocation_order)
        for rev in revocations:
            if rev.service is not None:
                node_ids.add(rev.service)
        nodes = [self._node(n, revocations) for n in sorted(node_ids)]
        return {
            "nodes": nodes,
            "edges": edges,
            "permitted_unused": [{"caller": c, "callee": d} for c, d in unused],
            "revocations": _merged_revocations(revocations),
            "policy_version": self._policy_version,
            "totals": {
                "records": self.records,
                "allowed": sum(e["allowed"] for e in edges),
                "denied": sum(e["denied"] for e in edges),
                "revoked_nodes": sum(1 for n in nodes if n["revoked"]),
                "overflow": self.overflow,
            },
        }

    def _permitted(self) -> set[tuple[str, str]] | None:
        if self._policy is None:
            return None
        return {
            (caller, svc.name)
            for svc in self._policy.services.values()
            if svc.enabled
            for caller in svc.allowed_callers
            if caller in self._policy.services
        }

    def _node(self, node_id: str, revocations: list[Revocation]) -> dict[str, Any]:
        policy = self._policy
        if node_id == UNIDENTIFIED:
            kind, label = "unidentified", "unidentified peer"
        elif node_id.startswith(ADDRESS_PREFIX):
            kind, label = "address", node_id[len(ADDRESS_PREFIX) :]
        elif node_id.startswith(IDENTITY_PREFIX):
            kind, label = "identity", node_id[len(IDENTITY_PREFIX) :]
        elif policy is not None and node_id in policy.native_services:
            kind, label = "native", node_id
        else:
            kind, label = "service", node_id
        mine = [r for r in revocations if r.service == node_id]
        whole = any(r.kind == "service" for r in mine)
        instances = sorted({r.target for r in mine if r.kind == "instance"})
        in_policy = None
        if policy is not None:
            in_policy = node_id in policy.services or node_id in policy.native_services
        return {
            "id": node_id,
            "label": label,
            "kind": kind,
            "in_policy": in_policy,
            "enabled": policy.services[node_id].enabled
            if policy is not None and node_id in policy.services
            else None,
            "revoked": "service" if whole else ("instance" if instances else None),
            "revoked_instances": instances,
            "revoked_by": sorted({r.source for r in mine}),
        }


def _merged_revocations(revocations: list[Revocation]) -> list[dict[str, Any]]:
    """One entry per revoked thing, naming every source that reported it."""
    merged: dict[tuple[str, str, str | None], set[str]] = {}
    for r in revocations:
        merged.setdefault((r.kind, r.target, r.service), set()).add(r.source)
    return [
        {"kind": kind, "target": target, "service": service, "sources": sorted(sources)}
        for (kind, target, service), sources in merged.items()
    ]


def _revocation_order(r: Revocation) -> tuple[str, str, str, str]:
    return (r.kind, r.service or "", r.target, r.source)


def _edge(
    caller: str,
    callee: str,
    sides: Mapping[Side, list[_Counts]],
    permitted: set[tuple[str, str]] | None,
) -> dict[str, Any]:
    """One edge: per decision and reason, the larger of what the two sides recorded."""
    totals: dict[Side, _Counts] = {}
    for side, parts in sides.items():
        total = _Counts()
        for part in parts:
            total.allowed += part.allowed
            total.denied += part.denied
            total.audited += part.audited
            total.streams += part.streams
            total.tunnels += part.tunnels
            total.reasons.update(part.reasons)
            total.merge_last(part.last, part.last_denied)
        totals[side] = total
    views = list(totals.values())
    reasons: Counter[str] = Counter()
    for view in views:
        reasons |= view.reasons  # per reason, the larger count
    last = max((v.last for v in views if v.last is not None), default=None)
    last_denied = max((v.last_denied for v in views if v.last_denied is not None), default=None)
    return {
        "caller": caller,
        "callee": callee,
        "allowed": max(v.allowed for v in views),
        "denied": max(v.denied for v in views),
        "audited": max(v.audited for v in views),
        "streams": max(v.streams for v in views),
        "tunnels": max(v.tunnels for v in views),
        "reasons": dict(sorted(reasons.items())),
        "last": _last(last),
        "last_denied": _last(last_denied),
        "seen_by": sorted(totals),
        "permitted": None if permitted is None else (caller, callee) in permitted,
    }


def _last(last: tuple[str, str, str, str, str] | None) -> dict[str, str] | None:
    if last is None:
        return None
    ts, conn_id, decision, reason, detail = last
    return {"ts": ts, "conn_id": conn_id, "decision": decision, "reason": reason, "detail": detail}


__all__ = [
    "ADDRESS_PREFIX",
    "IDENTITY_PREFIX",
    "MAX_EDGES",
    "REVOCATION_KINDS",
    "UNIDENTIFIED",
    "MeshGraph",
    "Revocation",
    "node_of_identity",
    "revocation_from_feed",
]
