"""What the CAS has revoked and the minimum certificate epoch: the sidecar's view of the feed.

Responsibility: fold the CAS feed's events (`revoke`, `policy.apply`) and its policy head
(`min_epoch`) into a value that answers one question per connection: may this peer's certificate
still be trusted? Pure: no I/O, no clock.
Guarantees: `check` returns `PEER_REVOKED` when the peer's serial, service or platform is
revoked, `POLICY_STALE` when its certificate was attested under an epoch below `min_epoch` (or
carries no attestation claims at all: it cannot prove its epoch), and None otherwise. Revocations
only accumulate; `apply` either records a well-formed event or raises `ValueError` and changes
nothing; event types it does not know are ignored (newer CAS versions may add some).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from netshield.reasons import Reason
from netshield.tls.peer import PeerInfo

REVOKE = "revoke"
POLICY_APPLY = "policy.apply"
_SERIAL = re.compile(r"[0-9a-f]{1,64}")


def parse_serial(text: str) -> int:
    """A serial as the feed names it (hex, optional `0x` or `:` separators); ValueError if not."""
    cleaned = text.strip().lower().replace(":", "").removeprefix("0x")
    if not _SERIAL.fullmatch(cleaned):
        raise ValueError(f"{text!r} is not a certificate serial (expected hex)")
    return int(cleaned, 16)


def _nonempty_str(event: Mapping[str, Any], key: str) -> str:
    value = event.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{event.get('type')} event: {key!r} must be a non-empty string")
    return value


class RevocationState:
    """Revoked serials, services and platforms, the minimum epoch and the latest policy seen."""

    def __init__(self, *, min_epoch: int = 0) -> None:
        self._serials: set[int] = set()
        self._services: set[str] = set()
        self._platforms: set[str] = set()
        self._min_epoch = min_epoch
        self.policy_version: int | None = None
        self.policy_hash: str | None = None
        self.position = 0  # the highest feed `seq` applied

    def __repr__(self) -> str:
        return (
            f"RevocationState(serials={len(self._serials)}, services={sorted(self._services)}, "
            f"platforms={sorted(self._platforms)}, min_epoch={self._min_epoch}, "
            f"policy_version={self.policy_version}, position={self.position})"
        )

    # --- updates -----------------------------------------------------------------------------
    def apply(self, event: Mapping[str, Any]) -> None:
        """Record one feed event; ValueError (and no change) if it is malformed."""
        kind = event.get("type")
        seq = event.get("seq", 0)
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError(f"feed event has a bad seq {seq!r}")
        if kind == REVOKE:
            self._apply_revoke(event)
        elif kind == POLICY_APPLY:
            version = event.get("version")
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise ValueError(f"policy.apply event has a bad version {version!r}")
            digest = event.get("hash")
            if self.policy_version is None or version >= self.policy_version:
                self.policy_version = version
                self.policy_hash = digest if isinstance(digest, str) else None
        self.position = max(self.position, seq)

    def _apply_revoke(self, event: Mapping[str, Any]) -> None:
        what = event.get("kind")
        target = _nonempty_str(event, "target")
        if what == "instance":
            self._serials.add(parse_serial(target))
        elif what == "service":
            self._services.add(target)
        elif what == "platform":
            self._platforms.add(target)
        else:
            raise ValueError(f"revoke event has an unknown kind {what!r}")

    def set_min_epoch(self, min_epoch: int) -> None:
        """Take the CAS's current minimum epoch (the feed's policy head is authoritative)."""
        if isinstance(min_epoch, bool) or not isinstance(min_epoch, int) or min_epoch < 0:
            raise ValueError(f"min_epoch must be a non-negative integer, got {min_epoch!r}")
        self._min_epoch = min_epoch

    @property
    def min_epoch(self) -> int:
        return self._min_epoch

    # --- questions ---------------------------------------------------------------------------
    def revoked(self, *, serial: int | None, service: str | None, platform_id: str | None) -> bool:
        """Whether a certificate with these facts is revoked (by serial, service or platform)."""
        return (
            (serial is not None and serial in self._serials)
            or (bool(service) and service in self._services)
            or (bool(platform_id) and platform_id in self._platforms)
        )

    def check(self, peer: PeerInfo) -> Reason | None:
        """Why the peer's certificate must be refused now, or None if revocation allows it."""
        if self.revoked(serial=peer.serial, service=peer.service, platform_id=peer.platform_id):
            return Reason.PEER_REVOKED
        epoch = peer.epoch
        if epoch is None or epoch < self._min_epoch:
            return Reason.POLICY_STALE
        return None
