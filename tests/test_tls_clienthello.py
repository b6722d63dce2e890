"""The ClientHello sniffer: a PSK offer is seen in real ClientHellos (with a ticket) and not
without one, whatever the chunking; odd input never raises and never says True."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.tls.clienthello import MAX_FIRST_RECORD, offers_psk
from netshield.tls.contexts import build_contexts
from netshield.tls.endpoint import TlsEndpoint
from tests.test_tls_pki import Pki
from tests.test_tls_resumption import connect


@pytest.fixture(scope="module")
def hellos() -> tuple[bytes, bytes]:
    """(a ClientHello offering a ticket, one without), from the mesh's own client context."""
    pki = Pki()
    orders = build_contexts(pki.creds("orders"), resumption=True)
    frontend = build_contexts(pki.creds("frontend"), resumption=True)
    _s, c = connect(orders, frontend)
    assert c.new_session is not None
    fresh = TlsEndpoint(frontend.client, server_side=False)
    fresh.start()
    resuming = TlsEndpoint(frontend.client, server_side=False, session=c.new_session)
    resuming.start()
    return resuming.outgoing(), fresh.outgoing()


def test_a_clienthello_with_a_ticket_offers_a_psk(hellos: tuple[bytes, bytes]) -> None:
    with_ticket, without = hellos
    assert offers_psk(with_ticket) is True
    assert offers_psk(without) is False


def test_an_incomplete_first_record_is_undecided_until_it_is_complete(
    hellos: tuple[bytes, bytes],
) -> None:
    with_ticket, without = hellos
    for hello, answer in ((with_ticket, True), (without, False)):
        assert {offers_psk(hello[:n]) for n in range(1, len(hello))} == {None}
        assert offers_psk(hello) is answer
        assert offers_psk(hello + b"\x17\x03\x03") is answer  # bytes after the record


def test_other_first_bytes_are_no_psk_offer() -> None:
    assert offers_psk(b"GET / HTTP/1.1\r\n\r\n") is False
    assert offers_psk(b"\x15\x03\x03\x00\x02\x02\x28") is False  # an alert record
    assert offers_psk(b"\x16\x03\x01\xff\xff") is False  # longer than any record may be
    body = b"\x02" + (40).to_bytes(3, "big") + bytes(40)  # a ServerHello, not a ClientHello
    assert offers_psk(b"\x16\x03\x03" + len(body).to_bytes(2, "big") + body) is False
    assert offers_psk(b"") is None


@given(st.binary(max_size=600))
def test_random_first_bytes_never_raise_and_never_claim_a_psk_without_a_clienthello(
    data: bytes,
) -> None:
    answer = offers_psk(data)
    assert answer in (True, False, None)
    if answer:
        assert data[0] == 0x16 and data[5] == 0x01


def test_a_record_of_the_largest_size_is_waited_for() -> None:
    header = b"\x16\x03\x01" + (MAX_FIRST_RECORD - 5).to_bytes(2, "big")
    assert offers_psk(header + bytes(100)) is None


def test_the_resuming_hello_fed_one_byte_at_a_time_resumes(
    hellos: tuple[bytes, bytes],
) -> None:
    """The server endpoint waits for the whole ClientHello before it decides; feeding it byte
    by byte changes nothing (it answers once the record is complete)."""
    with_ticket, _ = hellos
    pki = Pki()
    orders = build_contexts(pki.creds("orders"), resumption=True)
    server = TlsEndpoint(orders.server, server_side=True)
    for i in range(len(with_ticket) - 1):
        assert server.receive(with_ticket[i : i + 1]) == []
        assert server.outgoing() == b""
    server.receive(with_ticket[-1:])
    assert server.outgoing()  # a ServerHello (a full one: the ticket is another server's)
