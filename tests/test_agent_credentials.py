"""The credential holder: fails closed (None before attestation, after expiry, after discard),
swaps atomically, refuses already-expired credentials and never shows the key."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta

import pytest

from netshield.agent.credentials import CredentialHolder
from netshield.identity import SpiffeId
from netshield.pki.keys import generate_key, private_key_pem
from netshield.policyslice import PolicySlice
from netshield.reasons import Reason
from netshield.tls.contexts import TlsContexts
from netshield.tls.credentials import MeshCredentials

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TD = "test.netshield.local"


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def contexts(serial: int, not_after: datetime) -> TlsContexts:
    creds = MeshCredentials(
        chain_pem=b"",
        key=generate_key(),
        trust_bundle_pem=b"",
        spiffe_id=SpiffeId.for_service(TD, "orders"),
        serial=serial,
        not_before=T0 - timedelta(minutes=1),
        not_after=not_after,
        epoch=2,
        policy_version=1,
        policy=PolicySlice(service="orders", trust_domain=TD),
        measurement="a1" * 32,
    )
    return TlsContexts(
        server=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        client=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
        credentials=creds,
    )


def test_holder_without_credentials_is_not_ready() -> None:
    holder = CredentialHolder(clock=FakeClock())
    assert holder.current() is None
    assert holder.expired()
    state = holder.state()
    assert (state.ready, state.reason) == (False, Reason.NO_CREDENTIALS)
    assert "not attested" in state.detail


def test_installed_credentials_are_current_until_not_after() -> None:
    clock = FakeClock()
    holder = CredentialHolder(clock=clock)
    ctx = contexts(0x11, T0 + timedelta(minutes=1))
    holder.install(ctx)
    assert holder.current() is ctx
    assert holder.state().ready
    clock.now = T0 + timedelta(seconds=59)
    assert holder.current() is ctx
    # the twin: at not_after it fails closed with nobody removing anything
    clock.now = T0 + timedelta(minutes=1)
    assert holder.current() is None
    assert holder.expired()
    state = holder.state()
    assert (state.ready, state.reason) == (False, Reason.NO_CREDENTIALS)
    assert "expired" in state.detail
    assert holder.credentials is ctx.credentials  # still shown for status


def test_install_swaps_the_whole_set_and_counts_generations() -> None:
    holder = CredentialHolder(clock=FakeClock())
    first, second = contexts(1, T0 + timedelta(minutes=1)), contexts(2, T0 + timedelta(minutes=2))
    holder.install(first)
    holder.install(second)
    assert holder.current() is second
    assert holder.generation == 2


def test_install_refuses_expired_credentials_and_keeps_the_old_ones() -> None:
    holder = CredentialHolder(clock=FakeClock())
    good = contexts(1, T0 + timedelta(minutes=1))
    holder.install(good)
    with pytest.raises(ValueError, match="expired"):
        holder.install(contexts(2, T0))
    assert holder.current() is good
    assert holder.generation == 1


def test_discard_fails_closed_until_the_next_install() -> None:
    holder = CredentialHolder(clock=FakeClock())
    holder.install(contexts(1, T0 + timedelta(minutes=1)))
    holder.discard("certificate 1 revoked by the CAS")
    assert holder.current() is None
    assert "revoked" in holder.state().detail
    replacement = contexts(2, T0 + timedelta(minutes=1))
    holder.install(replacement)
    assert holder.current() is replacement


def test_holder_repr_names_the_certificate_but_not_the_key() -> None:
    holder = CredentialHolder(clock=FakeClock())
    ctx = contexts(0xBEEF, T0 + timedelta(minutes=1))
    holder.install(ctx)
    key_pem = private_key_pem(ctx.credentials.key).decode()
    body = "".join(key_pem.strip().splitlines()[1:-1])
    secret = str(ctx.credentials.key.private_numbers().private_value)
    for text in (repr(holder), str(holder), repr(ctx), repr(ctx.credentials)):
        assert body not in text and secret not in text
    assert "beef" in repr(holder)
    # the twin: the same check finds the key where it is
    assert body in key_pem.replace("\n", "")
