"""Attestation nonces: what the CAS hands out, and the outcome of presenting one.

A nonce is single-use and expires within seconds. The CAS does not store the nonces it issues:
each is *self-certifying* (`NonceMinter`), so that an unauthenticated flood of nonce requests
costs the CAS no write and no memory, and any replica that holds the mesh CA can check a nonce
another replica issued. Only a nonce that is used is stored (its digest, until it expires),
which is what makes it single-use; the appraisal turns any status but VALID into a refusal with
the matching reason code.

Layout (32 bytes, the size of the random nonces before): ``expiry`` (8 bytes, Unix milliseconds,
big-endian) ‖ ``random`` (8 bytes) ‖ ``tag`` (16 bytes: HMAC-SHA256 under the minter's key of
``DOMAIN`` ‖ expiry ‖ random, truncated). Nobody without the key can make a nonce the CAS would
take (the tag is 128 bits) or predict the next one (the random part, and the key), so a quote
over a nonce cannot be prepared before the CAS issued that nonce. The expiry is readable by
anyone; it says nothing a client does not know.

Pure: the time is passed in as `now`; `mint` takes its randomness from `secrets` unless given.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

NONCE_BYTES = 32
DOMAIN = b"netshield nonce v1\x00"
_EXPIRY, _RANDOM, _TAG = 8, 8, 16


class NonceStatus(enum.StrEnum):
    VALID = "valid"
    UNKNOWN = "unknown"
    REUSED = "reused"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Checked:
    """A presented nonce: its status, and (for one the minter made) when it expires."""

    status: NonceStatus
    expires_at: datetime | None = None


@dataclass(frozen=True)
class NonceMinter:
    """Makes and checks self-certifying nonces under `key` (kept out of repr)."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ValueError("a nonce key needs at least 16 bytes")

    def mint(self, now: datetime, ttl: timedelta, *, rand: bytes | None = None) -> bytes:
        """A nonce valid until ``now + ttl``."""
        if ttl <= timedelta(0):
            raise ValueError("a nonce needs a positive lifetime")
        expiry = int((now + ttl).timestamp() * 1000).to_bytes(_EXPIRY, "big")
        body = expiry + (rand if rand is not None else secrets.token_bytes(_RANDOM))
        if len(body) != _EXPIRY + _RANDOM:
            raise ValueError("a nonce's random part is 8 bytes")
        return body + self._tag(body)

    def check(self, nonce: bytes, now: datetime) -> Checked:
        """UNKNOWN (not made with this key), EXPIRED, or VALID with its expiry. VALID only says
        the nonce is genuine and fresh: whether it was used already is the store's to say."""
        if len(nonce) != NONCE_BYTES:
            return Checked(NonceStatus.UNKNOWN)
        body, tag = nonce[: _EXPIRY + _RANDOM], nonce[_EXPIRY + _RANDOM :]
        if not hmac.compare_digest(tag, self._tag(body)):
            return Checked(NonceStatus.UNKNOWN)
        millis = int.from_bytes(body[:_EXPIRY], "big")
        try:
            expires_at = datetime.fromtimestamp(millis / 1000, UTC)
        except (OverflowError, ValueError, OSError):
            return Checked(NonceStatus.UNKNOWN)
        if now >= expires_at:
            return Checked(NonceStatus.EXPIRED, expires_at)
        return Checked(NonceStatus.VALID, expires_at)

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self.key, DOMAIN + body, hashlib.sha256).digest()[:_TAG]


__all__ = ["DOMAIN", "NONCE_BYTES", "Checked", "NonceMinter", "NonceStatus"]
