"""Who called whom: the caller and callee services of a connection record.

A record is written by one sidecar about one connection, so which end is the local service
depends on its direction: inbound, the peer called us; outbound, we called the peer. Names are
service names when the identity is a service of the mesh, else the SPIFFE id, else the address
without its port (so ephemeral ports do not make every unauthenticated caller a new party), else
"?". Pure; used by filters, summaries and (later) a live picture of the mesh.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from netshield.identity import SpiffeId
from netshield.record import ConnectionRecord

UNKNOWN = "?"
_EXPECTED = re.compile(r"expected spiffe://[^/\s]+/svc/([a-z0-9][a-z0-9_\-]*)")
_NAME = re.compile(r"[a-z0-9]([a-z0-9\-_]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Parties:
    caller: str
    callee: str

    def __str__(self) -> str:
        return f"{self.caller} → {self.callee}"


def service_of(identity: str | None) -> str | None:
    """The service name of a SPIFFE service identity, else None."""
    if not identity:
        return None
    try:
        return SpiffeId.parse(identity).service
    except ValueError:
        return None


def host_of(address: str) -> str:
    """An address without its port: ``10.0.0.7:4711`` → ``10.0.0.7``, ``[::1]:80`` → ``::1``."""
    if address.startswith("unix:") or ":" not in address:
        return address
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return address
    return host.strip("[]")


def _name(identity: str | None) -> str | None:
    return service_of(identity) or identity or None


def expected_service(record: ConnectionRecord) -> str | None:
    """The service an outbound connection was meant to reach, when the record says it."""
    if record.direction != "outbound":
        return None
    if _NAME.fullmatch(record.dst):  # denied before dialling: dst is still the service's name
        return record.dst
    match = _EXPECTED.search(record.detail)
    return match.group(1) if match else None


OUTBOUND_TUNNEL = "tunnel"
"""The listener a tunnel record names when this sidecar opened the tunnel (inbound tunnels name
the inbound listener they arrived on)."""


def parties(record: ConnectionRecord) -> Parties:
    """The calling and the called party of the connection (of a tunnel: who opened it)."""
    inbound = record.direction == "inbound" or (
        record.direction == "tunnel" and record.listener != OUTBOUND_TUNNEL
    )
    if inbound:
        caller = _name(record.peer_identity) or host_of(record.src) or UNKNOWN
        callee = _name(record.local_identity) or UNKNOWN
    else:
        caller = _name(record.local_identity) or UNKNOWN
        callee = (
            expected_service(record)
            or _name(record.peer_identity)
            or host_of(record.dst)
            or UNKNOWN
        )
    return Parties(caller, callee)


__all__ = [
    "OUTBOUND_TUNNEL",
    "UNKNOWN",
    "Parties",
    "expected_service",
    "host_of",
    "parties",
    "service_of",
]
