"""Offering a kept session without CPython's copy: the layout self-test passes here, an offered
session resumes with the same peer, and a kept (detached) session survives its source connection
ending without a TLS close, where the shared one the getter returns does not."""

from __future__ import annotations

import contextlib
import gc
import ssl

import pytest

from netshield.tls.contexts import TlsContexts, build_contexts
from netshield.tls.endpoint import TlsEndpoint
from netshield.tls.sessions import SessionOffer, session_offer
from tests.test_tls_pki import Pki, pump_pair
from tests.test_tls_resumption import connect


@pytest.fixture(scope="module")
def mesh() -> tuple[TlsContexts, TlsContexts]:
    pki = Pki()
    return (
        build_contexts(pki.creds("orders"), resumption=True),
        build_contexts(pki.creds("frontend"), resumption=True),
    )


@pytest.fixture(scope="module")
def offer() -> SessionOffer:
    found = session_offer()
    assert found is not None, "the _ssl layout self-test failed on this interpreter"
    return found


def _ticket_from_aborted_connection(mesh: tuple[TlsContexts, TlsContexts]) -> ssl.SSLSession:
    """A ticket read from a live client connection that is then dropped without a TLS close."""
    s, c = connect(*mesh)
    session = c._ssl.session  # the getter shares the live connection's session
    assert session is not None and session.has_ticket
    del s, c
    gc.collect()
    return session


def _resumes(
    mesh: tuple[TlsContexts, TlsContexts], offer: SessionOffer, session: ssl.SSLSession
) -> bool:
    orders, frontend = mesh
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = frontend.client.wrap_bio(c_in, c_out)
    offer.offer(client, session)
    server = orders.server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(3):
        for obj, out, into in ((client, c_out, s_in), (server, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
            into.write(out.read())
    return bool(client.session_reused and server.session_reused)


def test_the_layout_self_test_holds_on_this_interpreter(offer: SessionOffer) -> None:
    assert isinstance(offer, SessionOffer)


def test_a_detached_session_resumes_after_its_connection_ended_without_a_tls_close(
    mesh: tuple[TlsContexts, TlsContexts], offer: SessionOffer
) -> None:
    shared = _ticket_from_aborted_connection(mesh)
    # the twin: the shared session itself is marked unusable by the abort
    assert not _resumes(mesh, offer, shared)
    # detaching right away (as TlsEndpoint does when the ticket arrives) keeps it usable
    s, c = connect(*mesh)
    kept = c.new_session
    assert kept is not None
    del s, c
    gc.collect()
    for _ in range(3):  # and again: each connection gets its own copy
        assert _resumes(mesh, offer, kept)


def test_an_offered_session_resumes_with_the_same_authorized_peer(
    mesh: tuple[TlsContexts, TlsContexts],
) -> None:
    orders, frontend = mesh
    _s1, c1 = connect(orders, frontend)
    assert c1.new_session is not None
    s2 = TlsEndpoint(orders.server, server_side=True)
    c2 = TlsEndpoint(
        frontend.client, server_side=False, session=c1.new_session, peers=frontend.peers
    )
    pump_pair(s2, c2)
    assert c2.peer is not None and c1.peer is not None and s2.peer is not None
    assert c2.peer.resumed and s2.peer.resumed
    assert c2.peer.spiffe_id == c1.peer.spiffe_id and c2.peer.serial == c1.peer.serial
