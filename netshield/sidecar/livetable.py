"""The sidecar's table of live connections: the limit, the /connections view, and closing
connections from outside (revocation, a stale epoch, the peer's certificate expiring, drain,
expired credentials)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from netshield.reasons import Reason
from netshield.tls.peer import PeerInfo

Closer = Callable[[Reason], None]
Counters = Callable[[], tuple[int, int]]


@dataclass(eq=False)
class LiveConnection:
    conn_id: str
    direction: str
    listener: str
    src: str
    dst: str
    started: str  # RFC 3339
    peer: PeerInfo | None = None
    closer: Closer | None = None
    counters: Counters | None = None
    close_reason: Reason | None = None
    tunnel_id: str | None = None  # a tunnel's own id, or the tunnel that carries this stream
    stream_id: int | None = None

    def close(self, reason: Reason) -> None:
        """Ask the connection to close with `reason` (first reason wins)."""
        if self.close_reason is None:
            self.close_reason = reason
        if self.closer is not None:
            self.closer(self.close_reason)

    def view(self) -> dict[str, Any]:
        up, down = self.counters() if self.counters else (0, 0)
        return {
            "conn_id": self.conn_id,
            "direction": self.direction,
            "listener": self.listener,
            "src": self.src,
            "dst": self.dst,
            "started": self.started,
            "peer_identity": str(self.peer.spiffe_id)
            if self.peer and self.peer.spiffe_id
            else None,
            "peer_serial": format(self.peer.serial, "x")
            if self.peer and self.peer.serial is not None
            else None,
            "bytes_in": up,
            "bytes_out": down,
            "tunnel_id": self.tunnel_id,
            "stream_id": self.stream_id,
        }


@dataclass
class ConnectionTable:
    limit: int
    _live: dict[str, LiveConnection] = field(default_factory=dict)
    _tunnels: set[str] = field(default_factory=set)  # entries that are tunnels: not counted
    _empty: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._empty.set()

    def try_add(self, conn: LiveConnection) -> bool:
        """Add a connection unless `limit` connections are open (tunnels do not count: the
        connections they carry do)."""
        if self.connections() >= self.limit:
            return False
        self._live[conn.conn_id] = conn
        self._empty.clear()
        return True

    def add_tunnel(self, conn: LiveConnection) -> None:
        """Add a tunnel (never refused: the connections it carries are what the limit counts)."""
        self._live[conn.conn_id] = conn
        self._tunnels.add(conn.conn_id)
        self._empty.clear()

    def connections(self) -> int:
        """Open connections, tunnels not counted."""
        return len(self._live) - len(self._tunnels)

    def became_tunnel(self, old: str, new: str) -> None:
        """An accepted connection turned out to be a tunnel: keyed by the tunnel id from now
        on, and no longer counted against the limit."""
        conn = self._live.pop(old, None)
        if conn is not None:
            conn.conn_id = new
            self._live[new] = conn
            self._tunnels.add(new)

    def remove(self, conn_id: str) -> None:
        self._live.pop(conn_id, None)
        self._tunnels.discard(conn_id)
        if not self._live:
            self._empty.set()

    def count(self, direction: str | None = None) -> int:
        if direction is None:
            return len(self._live)
        return sum(1 for c in self._live.values() if c.direction == direction)

    def snapshot(self) -> list[dict[str, Any]]:
        return [c.view() for c in list(self._live.values())]

    def close_where(self, predicate: Callable[[LiveConnection], bool], reason: Reason) -> int:
        chosen = [c for c in list(self._live.values()) if predicate(c)]
        for conn in chosen:
            conn.close(reason)
        return len(chosen)

    def recheck(self, check: Callable[[PeerInfo], Reason | None]) -> int:
        """Close every connection whose peer `check` now refuses (revoked, stale epoch)."""
        closed = 0
        for conn in list(self._live.values()):
            reason = check(conn.peer) if conn.peer is not None else None
            if reason is not None:
                conn.close(reason)
                closed += 1
        return closed

    def close_expired_peers(self, now: datetime) -> int:
        """Close every connection whose peer's certificate is no longer valid at `now`
        (PEER_CERT_EXPIRED): a live connection never outlives the certificate it was allowed on."""
        return self.close_where(
            lambda c: (
                c.peer is not None and c.peer.not_after is not None and now >= c.peer.not_after
            ),
            Reason.PEER_CERT_EXPIRED,
        )

    def close_all(self, reason: Reason) -> int:
        return self.close_where(lambda _c: True, reason)

    async def wait_empty(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True
