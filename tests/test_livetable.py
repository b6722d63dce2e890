"""The live connection table closes connections from outside: here, when a peer's certificate
expires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from netshield.reasons import Reason
from netshield.sidecar.livetable import ConnectionTable, LiveConnection
from netshield.tls.peer import PeerInfo

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def conn(conn_id: str, not_after: datetime | None) -> LiveConnection:
    peer = PeerInfo(None, 1, not_after, None, "TLSv1.3", "", False)
    return LiveConnection(conn_id, "inbound", "l", "s", "d", "t", peer=peer)


def test_connections_close_when_their_peers_certificate_expires_and_others_stay() -> None:
    table = ConnectionTable(limit=10)
    closed: list[tuple[str, Reason]] = []
    for c in (conn("expired", NOW), conn("valid", NOW + timedelta(seconds=1)), conn("plain", None)):
        c.closer = lambda reason, cid=c.conn_id: closed.append((cid, reason))
        assert table.try_add(c)
    assert table.close_expired_peers(NOW - timedelta(seconds=1)) == 0
    assert table.close_expired_peers(NOW) == 1
    assert closed == [("expired", Reason.PEER_CERT_EXPIRED)]
