"""TLS 1.3 session tickets an outbound sidecar keeps, so that its next connection to the same
peer resumes instead of repeating the full handshake (two ECDSA signatures and a chain check).

Responsibility: hold at most one ticket per (peer identity, peer address) for one generation of
the sidecar's own credentials (a `TicketStore` lives in its `TlsContexts`: a credential swap
starts an empty store), and hand a ticket out only while it is safe to resume with it.
Guarantees:
- A ticket is stored only for the identity it was issued under: the peer of that connection was
  authorized as exactly `identity` (a ticket is never offered to a connection expecting another
  identity, whatever the address).
- `get` hands out nothing when the peer certificate the session carries has expired, the ticket's
  lifetime is over, or `usable(peer)` says no (revoked, stale epoch); such a ticket is dropped.
- `purge` drops every ticket whose peer is no longer usable (after a revocation or an epoch
  bump); `clear` drops all (this sidecar's own certificate was revoked).
- Bounded: past `limit` entries the oldest is dropped. Pure: time comes in as `now`.
A resumed connection is authorized like a full one by its caller; this store only avoids
offering tickets that would be refused anyway.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from netshield.tls.peer import PeerInfo

DEFAULT_LIMIT = 4096
"""Tickets kept per store (one per destination identity and address)."""


@dataclass(frozen=True, slots=True)
class Ticket:
    session: ssl.SSLSession
    peer: PeerInfo  # the authorized peer of the connection that received the ticket


class TicketStore:
    """Tickets by (peer identity, address) for one set of client credentials."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._tickets: dict[tuple[str, str], Ticket] = {}

    def __len__(self) -> int:
        return len(self._tickets)

    def __repr__(self) -> str:
        return f"TicketStore({len(self._tickets)} tickets)"

    def get(
        self, identity: str, address: str, *, now: datetime, usable: Callable[[PeerInfo], bool]
    ) -> ssl.SSLSession | None:
        """The session to resume a connection to `identity` at `address` with, or None."""
        key = (identity, address)
        ticket = self._tickets.get(key)
        if ticket is None:
            return None
        if not _fresh(ticket, now) or not usable(ticket.peer):
            del self._tickets[key]
            return None
        return ticket.session

    def put(self, identity: str, address: str, session: ssl.SSLSession, peer: PeerInfo) -> bool:
        """Keep `session` for `identity` at `address`; False (nothing kept) unless it carries a
        TLS 1.3 ticket and `peer` is exactly `identity`."""
        if (
            not session.has_ticket
            or peer.spiffe_id is None
            or str(peer.spiffe_id) != identity
            or peer.tls_version != "TLSv1.3"
        ):
            return False
        key = (identity, address)
        self._tickets.pop(key, None)
        while len(self._tickets) >= self._limit:
            del self._tickets[next(iter(self._tickets))]
        self._tickets[key] = Ticket(session, peer)
        return True

    def forget(self, identity: str, address: str) -> None:
        """Drop the ticket for `identity` at `address` (a resumed connection was refused)."""
        self._tickets.pop((identity, address), None)

    def purge(self, unusable: Callable[[PeerInfo], bool]) -> int:
        """Drop the tickets whose peer is `unusable` now; returns how many."""
        gone = [key for key, ticket in self._tickets.items() if unusable(ticket.peer)]
        for key in gone:
            del self._tickets[key]
        return len(gone)

    def clear(self) -> None:
        self._tickets.clear()


def _fresh(ticket: Ticket, now: datetime) -> bool:
    not_after = ticket.peer.not_after
    if not_after is not None and now >= not_after:
        return False
    session = ticket.session
    return now.timestamp() < session.time + session.ticket_lifetime_hint
