"""TLS 1.3 session resumption between sidecars: tickets per peer identity, never across
identities, credential swaps or revocations; no tickets where nobody resumes (sans-IO)."""

from __future__ import annotations

import ssl
from datetime import timedelta

import pytest

from netshield.tls.contexts import TlsContexts, build_contexts
from netshield.tls.endpoint import TlsEndpoint
from netshield.tls.material import cas_server_context
from netshield.tls.peer import PeerCache, PeerInfo
from netshield.tls.tickets import TicketStore
from tests.test_tls_pki import TD, Pki, pump_pair

ORDERS = f"spiffe://{TD}/svc/orders"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


ADDR = "127.0.0.1:7001"


def connect(
    server: TlsContexts | ssl.SSLContext,
    client: TlsContexts,
    session: ssl.SSLSession | None = None,
) -> tuple[TlsEndpoint, TlsEndpoint]:
    """A handshake plus one request and answer, so that post-handshake tickets arrive."""
    server_ctx = server.server if isinstance(server, TlsContexts) else server
    s = TlsEndpoint(server_ctx, server_side=True)
    c = TlsEndpoint(
        client.client, server_side=False, session=session, peers=client.peers, watch_tickets=True
    )
    pump_pair(s, c)
    assert c.handshake_done and s.handshake_done
    c.send(b"ping")
    s.receive(c.outgoing())
    s.send(b"pong")
    assert c.decrypt(s.outgoing()) == b"pong"
    return s, c


def test_second_connection_resumes_and_carries_the_same_authorized_peer(pki: Pki) -> None:
    orders = build_contexts(pki.creds("orders"), resumption=True)
    frontend = build_contexts(pki.creds("frontend"), resumption=True)
    _s1, c1 = connect(orders, frontend)
    assert c1.peer is not None and not c1.peer.resumed
    assert c1.new_session is not None and c1.new_session.has_ticket
    s2, c2 = connect(orders, frontend, session=c1.new_session)
    assert c2.peer is not None and s2.peer is not None
    assert c2.peer.resumed and s2.peer.resumed
    assert str(c2.peer.spiffe_id) == ORDERS
    assert str(s2.peer.spiffe_id) == f"spiffe://{TD}/svc/frontend"
    assert c2.peer.serial == c1.peer.serial and c2.peer.not_after == c1.peer.not_after


def test_a_resumed_connection_gets_no_new_ticket_and_the_one_it_has_resumes_again(
    pki: Pki,
) -> None:
    orders = build_contexts(pki.creds("orders"), resumption=True)
    frontend = build_contexts(pki.creds("frontend"), resumption=True)
    _s, first = connect(orders, frontend)
    ticket = first.new_session
    assert ticket is not None  # a full handshake gets one
    for _ in range(3):
        s, c = connect(orders, frontend, session=ticket)
        assert c.peer is not None and c.peer.resumed and s.peer is not None and s.peer.resumed
        assert c.new_session is None  # nothing new: the ticket it holds is good again
    assert orders.server.num_tickets == 1  # the context itself still issues one per full one


def test_a_refused_ticket_gets_no_replacement_the_next_full_handshake_does(pki: Pki) -> None:
    frontend = build_contexts(pki.creds("frontend"), resumption=True)
    _s, c1 = connect(build_contexts(pki.creds("orders"), resumption=True), frontend)
    swapped = build_contexts(pki.creds("orders"), resumption=True)
    _s, c2 = connect(swapped, frontend, session=c1.new_session)
    assert c2.peer is not None and not c2.peer.resumed and c2.new_session is None
    _s, c3 = connect(swapped, frontend)  # the caller forgot the refused ticket
    assert c3.new_session is not None
    _s, c4 = connect(swapped, frontend, session=c3.new_session)
    assert c4.peer is not None and c4.peer.resumed


def test_without_resumption_no_ticket_is_issued_and_nothing_resumes(pki: Pki) -> None:
    orders = build_contexts(pki.creds("orders"), resumption=False)
    frontend = build_contexts(pki.creds("frontend"), resumption=False)
    _s, c = connect(orders, frontend)
    assert c.new_session is None
    assert orders.server.num_tickets == 0


def test_the_cas_issues_no_tickets_its_clients_never_use(pki: Pki) -> None:
    creds = pki.creds("cas")
    ctx = cas_server_context(
        chain_pem=creds.chain_pem, key=creds.key, client_ca_pem=creds.trust_bundle_pem
    )
    _s, c = connect(ctx, build_contexts(pki.creds("frontend"), resumption=True))
    assert c.new_session is None
    # its twin: the mesh server with resumption on does issue one
    _s, c = connect(build_contexts(creds, resumption=True), build_contexts(pki.creds("frontend")))
    assert c.new_session is not None


def test_a_ticket_from_before_the_servers_credential_swap_does_not_resume(pki: Pki) -> None:
    orders_creds = pki.creds("orders")
    frontend = build_contexts(pki.creds("frontend"), resumption=True)
    _s, c1 = connect(build_contexts(orders_creds, resumption=True), frontend)
    swapped = build_contexts(pki.creds("orders"), resumption=True)  # renewal: new contexts
    _s, c2 = connect(swapped, frontend, session=c1.new_session)
    assert c1.peer is not None and c2.peer is not None and not c2.peer.resumed
    assert c2.peer.serial != c1.peer.serial


def test_a_client_credential_swap_starts_with_no_tickets(pki: Pki) -> None:
    first = build_contexts(pki.creds("frontend"), resumption=True)
    orders = build_contexts(pki.creds("orders"), resumption=True)
    _s, c = connect(orders, first)
    assert c.peer is not None and c.new_session is not None
    assert first.tickets.put(ORDERS, ADDR, c.new_session, c.peer)
    renewed = build_contexts(pki.creds("frontend"), resumption=True)
    assert len(first.tickets) == 1 and len(renewed.tickets) == 0


def _stored(pki: Pki) -> tuple[TicketStore, PeerInfo]:
    orders = build_contexts(pki.creds("orders"), resumption=True)
    frontend = build_contexts(pki.creds("frontend"), resumption=True)
    _s, c = connect(orders, frontend)
    assert c.peer is not None and c.new_session is not None
    store = TicketStore()
    assert store.put(ORDERS, ADDR, c.new_session, c.peer)
    return store, c.peer


def test_a_ticket_is_only_offered_for_the_identity_it_was_issued_under(pki: Pki) -> None:
    store, peer = _stored(pki)
    now = pki.now
    assert store.get(ORDERS, ADDR, now=now, usable=lambda _p: True) is not None
    assert store.get(f"spiffe://{TD}/svc/billing", ADDR, now=now, usable=lambda _p: True) is None
    assert store.get(ORDERS, "127.0.0.1:7002", now=now, usable=lambda _p: True) is None
    # a session whose peer is not the identity asked for is never stored
    session = store.get(ORDERS, ADDR, now=now, usable=lambda _p: True)
    assert session is not None
    assert not TicketStore().put(f"spiffe://{TD}/svc/billing", ADDR, session, peer)


def test_a_ticket_of_a_revoked_or_expired_peer_is_dropped(pki: Pki) -> None:
    store, peer = _stored(pki)
    assert store.get(ORDERS, ADDR, now=pki.now, usable=lambda _p: False) is None
    assert len(store) == 0  # dropped, not just withheld
    store, peer = _stored(pki)
    assert peer.not_after is not None
    later = peer.not_after + timedelta(seconds=1)
    assert store.get(ORDERS, ADDR, now=later, usable=lambda _p: True) is None
    store, peer = _stored(pki)
    assert store.purge(lambda p: p.serial == peer.serial) == 1 and len(store) == 0
    store, _peer = _stored(pki)
    store.clear()
    assert store.get(ORDERS, ADDR, now=pki.now, usable=lambda _p: True) is None


def test_the_store_is_bounded(pki: Pki) -> None:
    store, peer = _stored(pki)
    session = store.get(ORDERS, ADDR, now=pki.now, usable=lambda _p: True)
    assert session is not None
    small = TicketStore(limit=2)
    for port in range(3):
        assert small.put(ORDERS, f"127.0.0.1:{port}", session, peer)
    assert len(small) == 2
    assert small.get(ORDERS, "127.0.0.1:0", now=pki.now, usable=lambda _p: True) is None
    assert small.get(ORDERS, "127.0.0.1:2", now=pki.now, usable=lambda _p: True) is not None


def test_the_peer_cache_parses_a_certificate_once_and_keeps_per_connection_facts(
    pki: Pki,
) -> None:
    orders = build_contexts(pki.creds("orders"), resumption=True)
    frontend = build_contexts(pki.creds("frontend"), resumption=True)
    cache = PeerCache()
    _s, c1 = connect(orders, frontend)
    _s, c2 = connect(orders, frontend, session=c1.new_session)
    assert len(frontend.peers) == 1  # one certificate, parsed once
    assert c1.peer is not None and c2.peer is not None
    assert (c1.peer.resumed, c2.peer.resumed) == (False, True)
    assert c1.peer.spiffe_id == c2.peer.spiffe_id and c1.peer.claims == c2.peer.claims
    assert len(cache) == 0
