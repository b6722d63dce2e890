"""The CAS state's vocabulary: stored policies, issued certificates, revocations (pure).

Frozen values the store hands out and its backends store, the canonical text forms the rows
and the audit entries share (serials as lower-case hex, timestamps as `auditlog.rfc3339`), and
the names of the audit events the store writes itself, and the error for a state that cannot
be used. No I/O, no SQL.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from netshield.errors import NetshieldError, StateError
from netshield.reasons import Reason

SCHEMA_VERSION = 3  # 1: the tables; 2: an index that serves the feed; 3: signed checkpoints
CHECKPOINT_SCHEMA = 3  # the first version that has the checkpoint tables

RevocationKind = Literal["instance", "service", "platform"]
REVOCATION_KINDS: tuple[RevocationKind, ...] = ("instance", "service", "platform")

# Events the store writes itself; `CasStore.audit` refuses them so the rows <-> log check holds.
EV_CREATE = "state.create"
EV_ADOPT = "state.adopt_counter"
EV_POLICY = "policy.apply"
EV_ALLOW = "attest.allow"
EV_DENY = "attest.deny"
EV_REVOKE = "revoke"
EV_UPGRADE = "state.upgrade"
EV_MIGRATE = "state.migrate"
EV_ADOPT_UNSIGNED = "state.adopt_unsigned"
RESERVED_EVENTS = frozenset(
    {EV_CREATE, EV_ADOPT, EV_POLICY, EV_ALLOW, EV_DENY, EV_REVOKE, EV_UPGRADE, EV_MIGRATE}
    | {EV_ADOPT_UNSIGNED}
)
# Entries offline tools write without the CAS's checkpoint key (`netshield cas migrate`): they
# change nothing the CAS decides on, so they may follow the newest signed checkpoint.
MAINTENANCE_EVENTS = frozenset({EV_CREATE, EV_UPGRADE, EV_MIGRATE})
# The events the revocation and policy feed carries.
FEED_EVENTS = (EV_REVOKE, EV_POLICY)

UNAVAILABLE_HINT = "The CAS state cannot be opened; fix the named file or directory and retry."


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """One applied policy version. ``hash`` is ``"sha256:" + hex`` of the UTF-8 text."""

    version: int
    hash: str
    text: str
    applied_at: str
    actor: str = ""
    previous_hash: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A certificate the CAS issued (no key material: serial, fingerprint and claims)."""

    serial: int
    service: str
    platform_id: str
    measurement: str
    not_after: datetime
    policy_version: int
    epoch: int
    issued_at: str
    fingerprint: str

    @property
    def serial_hex(self) -> str:
        return serial_hex(self.serial)


@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry of the revocation feed; ``seq`` is its position (1, 2, ...)."""

    seq: int
    kind: RevocationKind
    target: str
    ts: str
    service: str | None
    platform_id: str | None
    actor: str = ""
    note: str = ""


class SerialTaken(NetshieldError):
    """A certificate with this serial was recorded already: the caller picks another serial."""


def serial_hex(serial: int) -> str:
    """The stored form of a certificate serial: lower-case hex, no prefix, no leading zeros."""
    if serial < 0:
        raise ValueError("certificate serials are non-negative")
    return format(serial, "x")


def parse_serial(text: str) -> int:
    """A serial typed by an operator: hex, optionally ``0x``-prefixed or ``:``-separated."""
    cleaned = text.strip().lower().replace(":", "")
    cleaned = cleaned.removeprefix("0x")
    if not cleaned or not re.fullmatch(r"[0-9a-f]{1,64}", cleaned):
        raise NetshieldError(
            f"{text!r} is not a certificate serial (expected hex, e.g. 5f3a9c0d12e4b7a1)",
            reason=Reason.REVOCATION_TARGET_UNKNOWN,
        )
    return int(cleaned, 16)


def policy_text_hash(text: str) -> str:
    """``"sha256:" + hex`` of the UTF-8 text (the same value as `netshield.policy.policy_hash`)."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def nonce_digest(nonce: bytes) -> str:
    """How a nonce is stored: the hex SHA-256 of its bytes (a stolen row is not a nonce)."""
    return hashlib.sha256(nonce).hexdigest()


def state_error(
    message: str, *, hint: str = UNAVAILABLE_HINT, reason: Reason = Reason.STATE_UNAVAILABLE
) -> StateError:
    """A state that cannot be used: one sentence naming the database and the fix."""
    return StateError(message, reason=reason, hint=hint)
