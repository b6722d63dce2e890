"""The sidecar's current TLS contexts, swapped atomically and failing closed on expiry.

Responsibility: hold the one set of TLS contexts (server, client, and the credentials they were
built from) that new connections use, and say whether the sidecar can serve (for /readyz).
Guarantees: `current()` returns None when nothing was ever installed, after `discard`, and from
the moment the certificate's `not_after` passes (fail closed; nobody has to remove it). `install`
replaces the whole set in one assignment and refuses contexts that are already expired, so a bad
renewal never replaces good credentials. The private key never appears in repr/str.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from netshield.reasons import Reason
from netshield.tls.contexts import TlsContexts
from netshield.tls.credentials import MeshCredentials

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class HolderState:
    """Readiness as /readyz reports it: ready, or the reason code and a sentence why not."""

    ready: bool
    reason: Reason | None
    detail: str


class CredentialHolder:
    """The current TLS contexts; read `current()` once per new connection."""

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._contexts: TlsContexts | None = None
        self._discarded: str | None = None
        self._last_failure: str | None = None
        self.generation = 0  # bumped on every install/discard, for callers that cache

    def __repr__(self) -> str:
        creds = self.credentials
        if creds is None:
            return f"CredentialHolder(empty, generation={self.generation})"
        return (
            f"CredentialHolder(spiffe_id={creds.spiffe_id}, serial={creds.serial:x}, "
            f"not_after={creds.not_after.isoformat()}, generation={self.generation})"
        )

    @property
    def credentials(self) -> MeshCredentials | None:
        """The last installed credentials, even if expired (for status); None if none."""
        return None if self._contexts is None else self._contexts.credentials

    def expired(self, now: datetime | None = None) -> bool:
        """True when there is no certificate valid at `now` (default: the holder's clock)."""
        creds = self.credentials
        return creds is None or creds.expired(self._clock() if now is None else now)

    def current(self) -> TlsContexts | None:
        """The contexts to use for a new connection, or None (fail closed)."""
        contexts = self._contexts
        if contexts is None or contexts.credentials.expired(self._clock()):
            return None
        return contexts

    def install(self, contexts: TlsContexts) -> None:
        """Swap in new contexts; ValueError (keeping the old ones) if already expired."""
        creds = contexts.credentials
        now = self._clock()
        if creds.expired(now):
            raise ValueError(
                f"refusing to install certificate {creds.serial:x}: it expired at "
                f"{creds.not_after.isoformat()}"
            )
        self._contexts = contexts
        self._discarded = None
        self._last_failure = None
        self.generation += 1

    def note_failure(self, message: str) -> None:
        """Remember why the last attestation failed (e.g. the CAS's reason code, the evidence
        type and the check), so a fail-closed connection record says it."""
        self._last_failure = message if len(message) <= 400 else message[:399] + "…"

    def discard(self, why: str) -> None:
        """Drop the credentials (e.g. they were revoked): `current()` is None until `install`."""
        if self._contexts is not None:
            self._contexts = None
            self._discarded = why
            self.generation += 1

    def state(self, now: datetime | None = None) -> HolderState:
        """Whether the sidecar holds a valid certificate, and if not why."""
        now = self._clock() if now is None else now
        creds = self.credentials
        last = f"; last attestation: {self._last_failure}" if self._last_failure else ""
        if creds is None:
            detail = self._discarded or "not attested yet"
            return HolderState(False, Reason.NO_CREDENTIALS, detail + last)
        if creds.expired(now):
            return HolderState(
                False,
                Reason.NO_CREDENTIALS,
                f"certificate {creds.serial:x} expired at {creds.not_after.isoformat()}{last}",
            )
        return HolderState(True, None, f"certificate {creds.serial:x} valid")
