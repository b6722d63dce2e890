"""The sans-IO TLS endpoint: two endpoints wired through their MemoryBIOs, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netshield.reasons import Reason
from netshield.tls.contexts import client_context, server_context
from netshield.tls.endpoint import (
    HandshakeComplete,
    PeerClosedWrite,
    Plaintext,
    TlsEndpoint,
    TlsEvent,
    TlsFailed,
    TlsStateError,
)
from tests.test_tls_pki import Pki, pump_pair


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def ctxs(pki: Pki) -> tuple[object, object]:
    return server_context(pki.creds("orders")), client_context(pki.creds("frontend"))


def connected(ctxs: tuple[object, object]) -> tuple[TlsEndpoint, TlsEndpoint]:
    server_ctx, client_ctx = ctxs
    server = TlsEndpoint(server_ctx, server_side=True)  # type: ignore[arg-type]
    client = TlsEndpoint(client_ctx, server_side=False)  # type: ignore[arg-type]
    seen_client, seen_server = pump_pair(client, server)
    assert [type(e) for e in seen_client] == [HandshakeComplete]
    assert [type(e) for e in seen_server] == [HandshakeComplete]
    return server, client


def plaintext(events: list[TlsEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Plaintext))


def test_plaintext_flows_both_ways_after_the_handshake(ctxs: tuple[object, object]) -> None:
    server, client = connected(ctxs)
    assert server.handshake_done and client.handshake_done
    client.send(b"hello")
    assert plaintext(server.receive(client.outgoing())) == b"hello"
    server.send(memoryview(b"world"))
    assert plaintext(client.receive(server.outgoing())) == b"world"


def test_large_plaintext_is_coalesced_and_exact(ctxs: tuple[object, object]) -> None:
    server, client = connected(ctxs)
    payload = bytes(range(256)) * 4096  # 1 MiB: several scratch buffers full
    client.send(payload)
    events = server.receive(client.outgoing())
    assert plaintext(events) == payload
    assert len(events) == 4  # 256 KiB per Plaintext event, not one per 16 KiB record


def test_half_close_lets_the_other_direction_continue(ctxs: tuple[object, object]) -> None:
    server, client = connected(ctxs)
    client.send(b"request")
    client.close_write()
    events = server.receive(client.outgoing())
    assert [type(e) for e in events] == [Plaintext, PeerClosedWrite]
    with pytest.raises(TlsStateError):
        client.send(b"more")
    server.send(b"answer after the client's close_notify")
    assert plaintext(client.receive(server.outgoing())) == b"answer after the client's close_notify"
    server.close_write()
    assert [type(e) for e in client.receive(server.outgoing())] == [PeerClosedWrite]
    assert client.receive(b"ignored after close") == []


def test_transport_eof_after_the_handshake_is_a_half_close(ctxs: tuple[object, object]) -> None:
    server, client = connected(ctxs)
    assert [type(e) for e in server.receive(b"")] == [PeerClosedWrite]
    server.send(b"still writable")
    assert plaintext(client.receive(server.outgoing())) == b"still writable"


def test_transport_eof_during_the_handshake_is_a_failure(ctxs: tuple[object, object]) -> None:
    server_ctx, _ = ctxs
    server = TlsEndpoint(server_ctx, server_side=True)  # type: ignore[arg-type]
    events = server.receive(b"")
    assert len(events) == 1 and isinstance(events[0], TlsFailed)
    assert events[0].failure.reason is Reason.TLS_HANDSHAKE_FAILED
    assert "closed the connection during the handshake" in events[0].failure.detail
    assert server.receive(b"more") == []  # the failure is reported once


def test_sending_before_the_handshake_is_local_misuse(ctxs: tuple[object, object]) -> None:
    _, client_ctx = ctxs
    client = TlsEndpoint(client_ctx, server_side=False)  # type: ignore[arg-type]
    client.start()
    with pytest.raises(TlsStateError):
        client.send(b"too early")
    with pytest.raises(TlsStateError):
        client.close_write()


def test_a_refused_handshake_leaves_the_alert_in_outgoing(pki: Pki) -> None:
    server = TlsEndpoint(server_context(pki.creds("orders")), server_side=True)
    client = TlsEndpoint(client_context(pki.creds("intruder", ca=pki.foreign)), server_side=False)
    seen_client, seen_server = pump_pair(client, server)
    # TLS 1.3: the client finished its handshake before the server checked its certificate;
    # it learns about the refusal from the alert, on its next read.
    assert isinstance(seen_client[0], HandshakeComplete)
    failed = seen_client[-1]
    assert isinstance(failed, TlsFailed) and "alert unknown ca" in failed.failure.detail
    assert isinstance(seen_server[-1], TlsFailed)
    assert seen_server[-1].failure.reason is Reason.PEER_CERT_UNTRUSTED


def test_the_alert_bytes_are_produced_exactly_once(pki: Pki) -> None:
    server = TlsEndpoint(server_context(pki.creds("orders")), server_side=True)
    client = TlsEndpoint(client_context(pki.creds("intruder", ca=pki.foreign)), server_side=False)
    client.start()
    server.receive(client.outgoing())
    client.receive(server.outgoing())
    server.receive(client.outgoing())
    alert = server.outgoing()
    assert alert and alert[0] == 0x17  # an encrypted record (TLS 1.3 hides the alert type)
    assert server.outgoing() == b""


CHUNKING = st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=60)


def feed_chunked(endpoint: TlsEndpoint, data: bytes, sizes: list[int]) -> list[TlsEvent]:
    events: list[TlsEvent] = []
    offset, i = 0, 0
    while offset < len(data):
        size = sizes[i % len(sizes)]
        events += endpoint.receive(data[offset : offset + size])
        offset += size
        i += 1
    return events


def merged(events: list[TlsEvent]) -> list[object]:
    """Events with adjacent Plaintext merged: the chunking-independent view."""
    out: list[object] = []
    for event in events:
        if isinstance(event, Plaintext) and out and isinstance(out[-1], bytes):
            out[-1] += event.data
        else:
            out.append(event.data if isinstance(event, Plaintext) else type(event))
    return out


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hello_sizes=CHUNKING,
    data_sizes=CHUNKING,
    payload=st.binary(min_size=0, max_size=40_000),
    close=st.booleans(),
)
def test_chunking_of_the_ciphertext_never_changes_the_events(
    ctxs: tuple[object, object],
    hello_sizes: list[int],
    data_sizes: list[int],
    payload: bytes,
    close: bool,
) -> None:
    server_ctx, client_ctx = ctxs
    server = TlsEndpoint(server_ctx, server_side=True)  # type: ignore[arg-type]
    client = TlsEndpoint(client_ctx, server_side=False)  # type: ignore[arg-type]
    client.start()
    server_events = feed_chunked(server, client.outgoing(), hello_sizes)
    client_events = feed_chunked(client, server.outgoing(), data_sizes)
    server_events += feed_chunked(server, client.outgoing(), hello_sizes)
    for part in (payload[: len(payload) // 2], payload[len(payload) // 2 :]):
        if part:
            client.send(part)
    if close:
        client.close_write()
    server_events += feed_chunked(server, client.outgoing(), data_sizes)
    expected: list[object] = [HandshakeComplete]
    if payload:
        expected.append(payload)
    if close:
        expected.append(PeerClosedWrite)
    assert merged(server_events) == expected
    assert merged(client_events) == [HandshakeComplete]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.binary(min_size=1, max_size=2000), sizes=CHUNKING)
def test_garbage_fails_the_handshake_once_whatever_the_chunking(
    ctxs: tuple[object, object], junk: bytes, sizes: list[int]
) -> None:
    server_ctx, _ = ctxs
    server = TlsEndpoint(server_ctx, server_side=True)  # type: ignore[arg-type]
    events = feed_chunked(server, junk, sizes) + server.receive(b"")
    assert len(events) == 1 and isinstance(events[0], TlsFailed)
    assert events[0].failure.reason is Reason.TLS_HANDSHAKE_FAILED
