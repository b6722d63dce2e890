"""Self-certifying nonces (pure): genuine and fresh, or UNKNOWN / EXPIRED; nobody without the key
makes one; issuing writes nothing, and every replica holding the mesh CA checks every other's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.cas.service import nonce_key
from netshield.nonces import NONCE_BYTES, NonceMinter, NonceStatus
from netshield.pki.ca import create_root_ca

T0 = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
TTL = timedelta(seconds=30)
MINTER = NonceMinter(b"k" * 32)


def test_a_minted_nonce_is_genuine_until_it_expires() -> None:
    nonce = MINTER.mint(T0, TTL)
    assert len(nonce) == NONCE_BYTES
    checked = MINTER.check(nonce, T0 + TTL - timedelta(milliseconds=1))
    assert checked.status is NonceStatus.VALID and checked.expires_at == T0 + TTL
    assert MINTER.check(nonce, T0 + TTL).status is NonceStatus.EXPIRED


def test_two_nonces_minted_at_once_differ() -> None:
    assert len({MINTER.mint(T0, TTL) for _ in range(1000)}) == 1000


@pytest.mark.parametrize("where", [0, 7, 8, 15, 16, 31])
def test_a_nonce_with_any_byte_changed_is_unknown(where: int) -> None:
    nonce = bytearray(MINTER.mint(T0, TTL))
    nonce[where] ^= 0x01  # a later expiry, another random part, or a forged tag
    assert MINTER.check(bytes(nonce), T0).status is NonceStatus.UNKNOWN


def test_a_nonce_of_another_key_or_size_is_unknown() -> None:
    other = NonceMinter(b"o" * 32).mint(T0, TTL)
    assert MINTER.check(other, T0).status is NonceStatus.UNKNOWN
    assert MINTER.check(b"", T0).status is NonceStatus.UNKNOWN
    assert MINTER.check(MINTER.mint(T0, TTL) + b"x", T0).status is NonceStatus.UNKNOWN


def test_a_short_key_and_a_non_positive_lifetime_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        NonceMinter(b"short")
    with pytest.raises(ValueError, match="positive lifetime"):
        MINTER.mint(T0, timedelta(0))


def test_the_key_is_not_in_the_repr() -> None:
    assert "kkkk" not in repr(MINTER)


def test_replicas_holding_one_mesh_ca_accept_each_others_nonces() -> None:
    ca = create_root_ca("mesh", now=T0)
    one, two = NonceMinter(nonce_key(ca)), NonceMinter(nonce_key(ca))
    assert two.check(one.mint(T0, TTL), T0).status is NonceStatus.VALID
    other = NonceMinter(nonce_key(create_root_ca("other", now=T0)))  # the twin: another CA
    assert other.check(one.mint(T0, TTL), T0).status is NonceStatus.UNKNOWN


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_no_bytes_but_minted_ones_are_genuine(data: bytes) -> None:
    assert MINTER.check(data, T0).status is NonceStatus.UNKNOWN


@given(st.datetimes(timezones=st.just(UTC)), st.integers(1, 10**6))
def test_the_expiry_travels_in_the_nonce(now: datetime, seconds: int) -> None:
    ttl = timedelta(seconds=seconds)
    try:
        nonce = MINTER.mint(now, ttl)
    except (OverflowError, ValueError):
        return  # beyond what a datetime holds
    checked = MINTER.check(nonce, now)
    assert checked.status is NonceStatus.VALID
    assert checked.expires_at is not None
    assert abs(checked.expires_at - (now + ttl)) < timedelta(milliseconds=1)
