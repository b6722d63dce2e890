"""The sidecar agent: attest, keep credentials fresh, and follow the CAS's revocation feed.

Responsibility: one long-running `run()` that owns two tasks. The renewal task attests at start
(retrying with capped exponential backoff until it succeeds), installs the resulting TLS
contexts in the `CredentialHolder`, sleeps until about half the certificate's lifetime, and
attests again — a fresh nonce and a fresh key every time. The feed task long-polls the CAS feed
(reconnecting with backoff), folds its events into `RevocationState`, tells subscribers about
revocations and epoch raises, and asks the renewal task for an immediate re-attestation when the
CAS's `min_epoch` (or policy version) is above the current certificate's, or when the current
certificate itself is revoked. Both check the CAS's signed audit checkpoint in every answer
against the sidecar's `CasWitness`: a CAS that presents an older history than the sidecar saw
(restored with its counter from one snapshot) is refused (`CAS_ROLLED_BACK`): its certificates
are not installed, its feed is not applied, and `cas_rolled_back` says why until it presents
its newest history again; the credentials already held keep working until they expire.
Guarantees: a failed renewal never replaces still-valid credentials; once they expire the holder
answers None (fail closed) without any action here. Both tasks belong to a task group inside
`run()`; cancelling `run()` cancels them and closes the CAS client, and CancelledError is never
swallowed. Every network wait has a timeout; every sleep re-reads the injected clock at least
every `max_sleep` seconds. Private keys never reach logs, `repr` or `status()`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from netshield.agent.attest import Quoter, attest
from netshield.agent.credentials import CredentialHolder
from netshield.agent.revocations import REVOKE, RevocationState
from netshield.agent.rotation import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_FRACTION,
    DEFAULT_JITTER,
    backoff,
    renew_at,
)
from netshield.agent.witness import CasWitness
from netshield.casclient import CasClient, CasUnreachable
from netshield.errors import NetshieldError
from netshield.identity import SpiffeId
from netshield.pki.checkpoint import verify_checkpoint
from netshield.pki.keys import load_certificates
from netshield.tls.contexts import TlsContexts, build_contexts
from netshield.tls.credentials import MeshCredentials
from netshield.tls.material import cas_client_context

log = logging.getLogger("netshield.agent")

FEED_BACKOFF_CAP = timedelta(seconds=5)
"""The feed reconnects within this long of the CAS coming back (a revocation must arrive within
seconds, even after an outage); a long-poll is cheap, unlike an attestation (which backs off up
to its own cap)."""

Clock = Callable[[], datetime]
Rand = Callable[[], float]
RevocationListener = Callable[[Mapping[str, Any]], None]
EpochListener = Callable[[int], None]

FEED_WAIT = 25  # seconds a feed long-poll may wait on the CAS
FEED_GRACE = 15.0  # extra seconds before a long-poll counts as hung
REQUEST_TIMEOUT = 10.0
ATTEST_TIMEOUT = 30.0
MAX_SLEEP = 5.0
REFUSED_RETRY = 5.0  # seconds between feed polls while the CAS's checkpoints are refused
MIN_RENEW_DELAY = timedelta(seconds=1)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Agent:
    """Attests a workload to the CAS and keeps its mesh credentials and revocation view current."""

    def __init__(
        self,
        cas_url: str | Sequence[str],
        cas_ca_pem: bytes,
        quoter: Quoter,
        service: str,
        trust_domain: str,
        holder: CredentialHolder,
        revocations: RevocationState,
        *,
        clock: Clock = utc_now,
        rand: Rand | None = None,
        min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
        resumption: bool = False,
        tunnels: bool = False,
        fraction: float = DEFAULT_FRACTION,
        jitter: float = DEFAULT_JITTER,
        backoff_base: timedelta = DEFAULT_BACKOFF_BASE,
        backoff_cap: timedelta = DEFAULT_BACKOFF_CAP,
        min_renew_delay: timedelta = MIN_RENEW_DELAY,
        feed_wait: int = FEED_WAIT,
        request_timeout: float = REQUEST_TIMEOUT,
        attest_timeout: float = ATTEST_TIMEOUT,
        max_sleep: float = MAX_SLEEP,
        witness: CasWitness | None = None,
    ) -> None:
        now = clock()
        # validate the timing knobs once, here, rather than on the first renewal
        renew_at(now, now + timedelta(minutes=1), fraction=fraction, jitter=jitter, rand=0.5)
        backoff(0, base=backoff_base, cap=backoff_cap, rand=0.5)
        if feed_wait < 0 or request_timeout <= 0 or attest_timeout <= 0 or max_sleep <= 0:
            raise ValueError("feed_wait must be >= 0 and the timeouts and max_sleep > 0")
        self.cas_urls = (cas_url,) if isinstance(cas_url, str) else tuple(cas_url)
        self.cas_url = ", ".join(self.cas_urls)  # for messages: the replicas it may use
        self._cas_ca_pem = cas_ca_pem
        self._quoter = quoter
        self._service = service
        self.witness = witness if witness is not None else CasWitness()
        bundle = load_certificates(cas_ca_pem, source="the CAS trust bundle")
        self.witness.bind(lambda s: verify_checkpoint(s, bundle, trust_domain=trust_domain))
        self.cas_rolled_back: str | None = None  # why the CAS is refused, while it is
        self._spiffe_id = SpiffeId.for_service(trust_domain, service)
        self._trust_domain = trust_domain
        self.holder = holder
        self.revocations = revocations
        self._clock = clock
        self._rand: Rand = rand if rand is not None else random.SystemRandom().random
        self._min_version = min_version
        self._resumption = resumption
        self._tunnels = tunnels
        self._fraction, self._jitter = fraction, jitter
        self._backoff_base, self._backoff_cap = backoff_base, backoff_cap
        self._min_renew_delay = min_renew_delay
        self._feed_wait = feed_wait
        self._request_timeout = request_timeout
        self._attest_timeout = attest_timeout
        self._max_sleep = max_sleep
        # counters for metrics: plain ints
        self.attestations = 0  # successful attestations, the first one included
        self.renewals = 0  # successful attestations after the first
        self.renewal_failures = 0  # failed attestation attempts, the first ones included
        self.cas_reachable = False
        self.last_renewal: datetime | None = None
        self.last_error: str | None = None
        self.next_renewal: datetime | None = None
        self.feed_position = 0
        self.synced = asyncio.Event()  # set once the first feed answer has been applied
        self._wake = asyncio.Event()
        self._reattest_reason: str | None = None
        self._in_backoff = False  # the renewal task waits to retry a failed attestation
        self._feed_min_epoch: int | None = None  # as the last feed answer reported it
        self._requested_epoch = 0
        self._requested_version = 0
        self._expired_reported: int | None = None
        self._revocation_listeners: list[RevocationListener] = []
        self._epoch_listeners: list[EpochListener] = []

    def __repr__(self) -> str:
        return (
            f"Agent(spiffe_id={self._spiffe_id}, cas_url={self.cas_url!r}, holder={self.holder!r})"
        )

    # --- subscriptions -----------------------------------------------------------------------
    def on_revocation(self, listener: RevocationListener) -> Callable[[], None]:
        """Call `listener(event)` for every revoke event; returns a function that unsubscribes."""
        self._revocation_listeners.append(listener)
        return lambda: self._revocation_listeners.remove(listener)

    def on_epoch(self, listener: EpochListener) -> Callable[[], None]:
        """Call `listener(min_epoch)` when the feed reports a raised minimum epoch.

        Not called for the first feed answer (that is the starting point, not a change).
        """
        self._epoch_listeners.append(listener)
        return lambda: self._epoch_listeners.remove(listener)

    def request_reattestation(self, why: str) -> None:
        """Wake the renewal task: attest again now (also cuts a retry backoff short)."""
        self._reattest_reason = why
        self._wake.set()

    # --- the long-running part ---------------------------------------------------------------
    async def run(self) -> None:
        """Attest, renew and follow the feed until cancelled."""
        ctx = cas_client_context(ca_pem=self._cas_ca_pem)
        async with (
            CasClient(self.cas_urls, ssl_context=ctx, timeout=self._request_timeout) as cas,
            asyncio.TaskGroup() as tasks,
        ):
            tasks.create_task(self._renewal_loop(cas), name=f"agent-renewal {self._spiffe_id}")
            tasks.create_task(self._feed_loop(cas), name=f"agent-feed {self._spiffe_id}")

    async def _renewal_loop(self, cas: CasClient) -> None:
        failures = 0
        while True:
            reason = self._reattest_reason or ("renewal" if self.attestations else "startup")
            self._reattest_reason = None
            self._wake.clear()
            try:
                contexts = await self._attest_once(cas)
                self.holder.install(contexts)
            except Exception as err:  # every failure is retried; CancelledError is not an Exception
                failures += 1
                delay = backoff(
                    failures - 1, base=self._backoff_base, cap=self._backoff_cap, rand=self._rand()
                )
                self._record_failure(err, reason, delay)
                self._in_backoff = True
                try:
                    await self._sleep_until(self._clock() + delay)
                finally:
                    self._in_backoff = False
                continue
            failures = 0
            await self._sleep_until(self._record_success(contexts.credentials, reason))

    async def _attest_once(self, cas: CasClient) -> TlsContexts:
        baseline = self.witness.seen  # the CAS's answer can only be newer than this
        try:
            async with asyncio.timeout(self._attest_timeout):
                got = await attest(
                    cas, self._quoter, self._service, trust_domain=self._trust_domain
                )
        except TimeoutError:
            raise CasUnreachable(
                f"attestation at {self.cas_url} took longer than {self._attest_timeout:g} s"
            ) from None
        creds = MeshCredentials.from_attestation(got.credentials, got.key)
        try:
            signed = self.witness.check(got.credentials.checkpoint, baseline=baseline)
        except NetshieldError as err:
            self._refuse_cas(err)
            raise NetshieldError(
                f"refusing certificate {creds.serial:x}: {err}", reason=err.reason
            ) from None
        self.witness.remember(signed)
        if creds.spiffe_id != self._spiffe_id:
            raise NetshieldError(
                f"the CAS issued a certificate for {creds.spiffe_id}, expected {self._spiffe_id}"
            )
        return build_contexts(
            creds,
            min_version=self._min_version,
            resumption=self._resumption,
            tunnels=self._tunnels,
        )

    def _record_success(self, creds: MeshCredentials, reason: str) -> datetime:
        """Count and log a successful attestation; returns when to renew."""
        now = self._clock()
        if self.attestations:
            self.renewals += 1
        self.attestations += 1
        self.cas_reachable = True
        self.last_renewal = now
        self.last_error = None
        self._expired_reported = None
        if creds.epoch > self.revocations.min_epoch:
            self.revocations.set_min_epoch(creds.epoch)  # the CAS issues at its current min_epoch
        start = max(creds.not_before, now)
        at = renew_at(
            start, creds.not_after, fraction=self._fraction, jitter=self._jitter, rand=self._rand()
        )
        self.next_renewal = next_renewal = max(at, now + self._min_renew_delay)
        log.info(
            "attested (%s): %s serial=%x epoch=%d policy_version=%d not_after=%s renew_at=%s",
            reason,
            creds.spiffe_id,
            creds.serial,
            creds.epoch,
            creds.policy_version,
            creds.not_after.isoformat(),
            next_renewal.isoformat(),
        )
        return next_renewal

    def _record_failure(self, err: Exception, reason: str, delay: timedelta) -> None:
        self.renewal_failures += 1
        if isinstance(err, CasUnreachable):
            self.cas_reachable = False
        message = str(err) if isinstance(err, NetshieldError | ValueError) else repr(err)
        self.last_error = message
        self.holder.note_failure(message)
        creds = self.holder.credentials
        now = self._clock()
        if creds is not None and not creds.expired(now):
            keeping = (
                f"keeping certificate {creds.serial:x} valid until {creds.not_after.isoformat()}"
            )
        else:
            keeping = "no valid certificate: failing closed"
            if creds is not None and self._expired_reported != creds.serial:
                self._expired_reported = creds.serial
                log.error(
                    "certificate %x expired at %s without a renewal: failing closed",
                    creds.serial,
                    creds.not_after.isoformat(),
                )
        if not isinstance(err, NetshieldError | ValueError):
            log.error("attestation (%s) failed unexpectedly", reason, exc_info=err)
        log.warning(
            "attestation (%s) failed: %s; %s; retry in %.1f s",
            reason,
            message,
            keeping,
            delay.total_seconds(),
        )

    async def _sleep_until(self, deadline: datetime) -> None:
        """Sleep until `deadline` on the injected clock, or until woken."""
        while not self._wake.is_set():
            remaining = (deadline - self._clock()).total_seconds()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(min(remaining, self._max_sleep)):
                    await self._wake.wait()
            except TimeoutError:
                continue

    # --- the feed ----------------------------------------------------------------------------
    async def _feed_loop(self, cas: CasClient) -> None:
        failures = 0
        while True:
            # long-poll only while following a trusted CAS; after an error or a refusal, ask
            # for an answer at once (a restored or repaired CAS is noticed without a wait)
            following = self.synced.is_set() and not failures and self.cas_rolled_back is None
            wait = self._feed_wait if following else 0
            baseline = self.witness.seen  # the CAS's answer can only be newer than this
            seen = None if baseline is None else baseline.seq
            try:
                async with asyncio.timeout(wait + self._request_timeout + FEED_GRACE):
                    answer = await cas.feed(self.feed_position, wait=wait, seen=seen)
                events, head, policy = parse_feed_answer(answer)
            except Exception as err:  # CasUnreachable, CasRefused, a malformed answer, a timeout
                failures += 1
                delay = backoff(
                    failures - 1,
                    base=self._backoff_base,
                    cap=min(self._backoff_cap, FEED_BACKOFF_CAP),
                    rand=self._rand(),
                )
                if failures == 1 or self.cas_reachable:
                    log.warning(
                        "CAS feed at %s: %s; reconnecting in %.1f s",
                        self.cas_url,
                        str(err) or type(err).__name__,
                        delay.total_seconds(),
                    )
                self.cas_reachable = False
                await asyncio.sleep(delay.total_seconds())
                continue
            try:
                signed = self.witness.check(
                    answer.get("checkpoint"), baseline=baseline, at_seen=answer.get("seen")
                )
            except NetshieldError as err:  # refuse this CAS's word: no events, no policy
                self._refuse_cas(err)
                self.cas_reachable, failures = True, 0
                await asyncio.sleep(min(self._backoff_cap.total_seconds(), REFUSED_RETRY))
                continue
            if self.cas_rolled_back is not None:
                log.warning("CAS %s presents its newest history again", self.cas_url)
                self.cas_rolled_back = None
                if self._in_backoff:  # its certificates were refused: attest again now
                    self.request_reattestation("CAS history trusted again")
            if failures:
                log.info("CAS feed at %s reachable again", self.cas_url)
                if self._in_backoff:  # cut the renewal's retry wait short
                    self.request_reattestation("CAS reachable again")
            failures = 0
            self.cas_reachable = True
            for event in events:
                self._on_event(event)
            self.feed_position = max(self.feed_position, head)
            self.witness.remember(signed)
            self._on_policy_head(policy)
            self.synced.set()

    def _refuse_cas(self, err: NetshieldError) -> None:
        """Note why the CAS's word is refused (for /readyz, metrics and status); log it once."""
        problem = f"{err.reason.value}: {err}"
        if self.cas_rolled_back != problem:
            log.error("CAS %s refused: %s", self.cas_url, problem)
        self.cas_rolled_back = problem

    def _on_event(self, event: Mapping[str, Any]) -> None:
        try:
            self.revocations.apply(event)
        except ValueError as err:
            log.error("ignoring a malformed feed event (seq %r): %s", event.get("seq"), err)
            return
        if event.get("type") != REVOKE:
            return
        log.warning(
            "revocation seq=%s: %s %s (%s)",
            event.get("seq"),
            event.get("kind"),
            event.get("target"),
            event.get("note") or "no note",
        )
        for listener in list(self._revocation_listeners):
            _call(listener, event, "revocation")
        creds = self.holder.credentials
        if creds is not None and self.revocations.revoked(
            serial=creds.serial,
            service=creds.spiffe_id.service,
            platform_id=self._quoter.platform_id,
        ):
            log.error(
                "this sidecar's certificate %x is revoked (%s %s): dropping it and re-attesting",
                creds.serial,
                event.get("kind"),
                event.get("target"),
            )
            self.holder.discard(f"certificate {creds.serial:x} revoked by the CAS")
            self.request_reattestation("own certificate revoked")

    def _on_policy_head(self, policy: Mapping[str, Any]) -> None:
        min_epoch, version = policy["min_epoch"], policy["version"]
        previous, self._feed_min_epoch = self._feed_min_epoch, min_epoch
        self.revocations.set_min_epoch(min_epoch)
        if previous is not None and min_epoch > previous:
            log.warning("CAS minimum epoch raised to %d (was %d)", min_epoch, previous)
            for listener in list(self._epoch_listeners):
                _call(listener, min_epoch, "epoch")
        creds = self.holder.credentials
        if creds is None:
            return
        if min_epoch > creds.epoch and min_epoch > self._requested_epoch:
            self._requested_epoch = min_epoch
            self.request_reattestation(f"minimum epoch raised to {min_epoch}")
        elif version > creds.policy_version and version > self._requested_version:
            self._requested_version = version
            self.request_reattestation(f"policy version {version}")

    # --- reporting ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The agent's state for `/status` and `netshield status` (no key material)."""
        now = self._clock()
        creds = self.holder.credentials
        state = self.holder.state(now)
        return {
            "spiffe_id": str(creds.spiffe_id) if creds else None,
            "serial": format(creds.serial, "x") if creds else None,
            "not_after": creds.not_after.isoformat() if creds else None,
            "seconds_to_expiry": (
                round(max(0.0, (creds.not_after - now).total_seconds()), 3) if creds else 0.0
            ),
            "valid": state.ready,
            "detail": state.detail,
            "cas_reachable": self.cas_reachable,
            "last_renewal": self.last_renewal.isoformat() if self.last_renewal else None,
            "next_renewal": self.next_renewal.isoformat() if self.next_renewal else None,
            "last_error": self.last_error,
            "renewals": self.renewals,
            "renewal_failures": self.renewal_failures,
            "epoch": creds.epoch if creds else None,
            "policy_version": creds.policy_version if creds else None,
            "min_epoch": self.revocations.min_epoch,
            "feed_position": self.feed_position,
            "revocations_synced": self.synced.is_set(),
            "cas_refused": self.cas_rolled_back,
            "checkpoint_seen": None if self.witness.seen is None else self.witness.seen.seq,
        }


def _call(listener: Callable[[Any], None], arg: Any, what: str) -> None:
    """Run one subscriber; a failing subscriber is logged and does not stop the feed."""
    try:
        listener(arg)
    except Exception:
        log.exception("%s subscriber %r failed", what, listener)


def _nonneg_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"CAS feed answer: {what} is not a non-negative integer: {value!r}")
    return value


def parse_feed_answer(
    answer: object,
) -> tuple[list[Mapping[str, Any]], int, dict[str, int]]:
    """Check the shape of a feed answer; ValueError names what is wrong."""
    if not isinstance(answer, dict):
        raise ValueError("CAS feed answer is not a JSON object")
    events, policy = answer.get("events"), answer.get("policy")
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise ValueError("CAS feed answer: events is not a list of objects")
    if not isinstance(policy, dict):
        raise ValueError("CAS feed answer: policy is not an object")
    head = _nonneg_int(answer.get("next"), "next")
    return (
        events,
        head,
        {
            "version": _nonneg_int(policy.get("version"), "policy.version"),
            "min_epoch": _nonneg_int(policy.get("min_epoch"), "policy.min_epoch"),
        },
    )
