"""`netshield cas serve`: compose the CAS from its state directory and serve its API over HTTPS.

Start-up is fail-closed: a rolled-back state, a broken audit chain, a policy file that differs
from the stored policy, or missing CA material stops the CAS with one sentence. The CAS's own
server certificate is minted at start from the mesh CA and lives only in memory. When the
listener is bound, one JSON ready line goes to stdout with the bound address (port 0 works).

With ``--database postgresql://...`` the state lives in PostgreSQL and several CAS replicas may
serve it; the state directory then holds only the CA material. Each replica follows the
database (`follow_database`): it wakes its feed readers when another replica changed the audit
log, takes the policy versions others applied, and stops, fail-closed, if the database went
back behind what this replica witnessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from netshield.attestation.evidence.chains import TrustAnchors, load_certificates
from netshield.attestation.evidence.verifier import EvidenceVerifier
from netshield.attestation.verifier import SimulatedQuoteVerifier
from netshield.cas.api import MAX_CONCURRENT_ATTESTATIONS, Clock, make_app, utc_now
from netshield.cas.collateral import CollateralFiles
from netshield.cas.counter import MonotonicCounter
from netshield.cas.ratelimit import DEFAULT_BURST, DEFAULT_RATE, SourceRateLimit
from netshield.cas.service import CasService, bootstrap_policy
from netshield.cas.store import CasStore
from netshield.cas.store.backend import ChainLock
from netshield.errors import StateError, UsageError
from netshield.identity import SpiffeId
from netshield.netaddr import HostPort
from netshield.pki.ca import CertificateAuthority, issue_certificate
from netshield.pki.checkpoint import CheckpointSigner
from netshield.pki.keys import generate_key
from netshield.policy import parse_policy
from netshield.reasons import Reason
from netshield.serving import REQUEST_SECONDS, runner_options, start_site, stop_on_signals
from netshield.tls.material import cas_server_context
from netshield.trustdomain import load_cas_material

log = logging.getLogger("netshield.cas")

SERVER_CERT_LIFETIME = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class CasOptions:
    policy_file: Path
    state_dir: Path
    listen: HostPort
    counter_file: Path | None = None
    keys_dir: Path | None = None  # mesh CA and vendor roots; None: inside state_dir
    adopt_counter: bool = False
    adopt_unsigned: bool = False  # upgrade a state from before signed checkpoints
    server_names: tuple[str, ...] = ()
    nonce_ttl: timedelta = timedelta(seconds=30)
    max_attestations: int = MAX_CONCURRENT_ATTESTATIONS
    rate_per_source: float = DEFAULT_RATE  # nonce and attestation requests per second per address
    burst_per_source: int = DEFAULT_BURST
    request_timeout: float = REQUEST_SECONDS  # TLS handshake, first request head, request body
    collateral_dir: Path | None = None
    unsafe_evidence_roots: Path | None = None
    database: str | None = None  # a postgresql:// URL without password; None: SQLite in state_dir
    database_password_file: Path | None = None
    chain_lock: ChainLock = "advisory"
    follow_interval: float = 1.0  # seconds between database checks when no notification came


UNSPECIFIED = frozenset({"0.0.0.0", "::"})  # noqa: S104 - names to leave out of the certificate


def server_sans(listen: HostPort, extra: Sequence[str]) -> tuple[list[str], list[str]]:
    """DNS and IP SANs for the CAS certificate: loopback, the listen host, and --san names."""
    dns, ips = ["localhost"], ["127.0.0.1", "::1"]
    for name in (listen.host, *extra):
        target = ips if HostPort(name, 0).ip is not None else dns
        if name not in target and name not in UNSPECIFIED:
            target.append(name)
    return dns, ips


def mint_server_context(
    ca: CertificateAuthority,
    trust_domain: str,
    listen: HostPort,
    extra_names: Sequence[str],
    now: datetime,
) -> ssl.SSLContext:
    key = generate_key()
    dns, ips = server_sans(listen, extra_names)
    cert = issue_certificate(
        ca,
        public_key=key.public_key(),
        spiffe_id=SpiffeId.for_cas(trust_domain),
        now=now,
        lifetime=SERVER_CERT_LIFETIME,
        dns_names=dns,
        ip_addresses=ips,
        server_auth=True,
        client_auth=False,
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.bundle_pem()
    return cas_server_context(chain_pem=chain, key=key, client_ca_pem=ca.bundle_pem())


def build_service(options: CasOptions, now: datetime) -> CasService:
    """Open state and material; every failure is a NetshieldError with one sentence."""
    if not options.state_dir.is_dir():
        raise UsageError(
            f"--state {options.state_dir}: no such directory (made by `netshield init DIR` as DIR/cas)"
        )
    try:
        policy_text = options.policy_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--policy {options.policy_file}: cannot read ({err})") from None
    keys_dir = options.keys_dir or options.state_dir
    if not keys_dir.is_dir():
        raise UsageError(
            f"--keys {keys_dir}: no such directory (the mesh CA and vendor-roots/ from "
            "`netshield init DIR`, DIR/cas)"
        )
    material = load_cas_material(keys_dir)
    trust_domain = parse_policy(policy_text, source="--policy").trust_domain
    counter = MonotonicCounter(options.counter_file) if options.counter_file else None
    store = CasStore.open(
        options.state_dir,
        database=options.database,
        password=read_password_file(options.database_password_file),
        chain_lock=options.chain_lock,
        counter=counter,
        adopt_counter=options.adopt_counter,
        signer=CheckpointSigner(material.ca, trust_domain),
        adopt_unsigned=options.adopt_unsigned,
    )
    try:
        bootstrap_policy(store, policy_text, now=now)
        service = CasService(
            store=store,
            ca=material.ca,
            verifier=build_verifier(options, SimulatedQuoteVerifier(material.vendor_roots)),
            nonce_ttl=options.nonce_ttl,
        )
    except BaseException:
        store.close()
        raise
    return service


def build_verifier(options: CasOptions, sim: SimulatedQuoteVerifier) -> EvidenceVerifier:
    """The evidence verifier: the simulated platform, and SEV-SNP/SGX/TDX with the pinned vendor
    roots (plus --unsafe-evidence-roots, for labs and tests) and the --collateral directory."""
    anchors = TrustAnchors()
    if options.unsafe_evidence_roots is not None:
        path = options.unsafe_evidence_roots
        try:
            roots = load_certificates(path.read_bytes())
        except (OSError, ValueError) as err:
            raise UsageError(
                f"--unsafe-evidence-roots {path}: not readable PEM certificates ({err})"
            ) from None
        anchors = anchors.with_extra(roots)
        log.warning(
            "--unsafe-evidence-roots: trusting %d root(s) besides AMD's and Intel's for hardware "
            "evidence; never in production",
            len(roots),
        )
    if options.collateral_dir is not None and not options.collateral_dir.is_dir():
        raise UsageError(
            f"--collateral {options.collateral_dir}: no such directory (put the vendors' "
            "certificates, TCB Info and QE Identity files there)"
        )
    files = CollateralFiles(options.collateral_dir)
    return EvidenceVerifier(sim=sim, anchors=anchors, collateral=files.current)


def read_password_file(path: Path | None) -> str | None:
    """The database password from its file (one line; trailing newline ignored), or None."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--database-password-file {path}: cannot read ({err})") from None
    password = text.rstrip("\r\n")
    if not password or "\n" in password:
        raise UsageError(
            f"--database-password-file {path}: expected the password alone on one line"
        )
    return password


async def follow_database(service: CasService, interval: float) -> None:
    """Follow a shared database until cancelled; StateError if it was rolled back.

    Wakes on the database's change notifications, or every ``interval`` seconds.
    """
    last: int | None = None
    while True:
        try:
            if last is not None:
                await asyncio.to_thread(service.store.backend.wait_for_change, interval)
            head = await asyncio.to_thread(service.refresh)
        except StateError as err:
            if err.reason is not Reason.STATE_UNAVAILABLE:
                raise
            log.warning("%s", err)  # the database is away: keep serving, try again
            await asyncio.sleep(interval)
            continue
        if head != last:
            if last is not None:
                await service.feed.notify()
            last = head


@dataclass(frozen=True, slots=True)
class RunningCas:
    service: CasService
    bound: HostPort
    app: web.Application
    follower: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.bound}"


@contextlib.asynccontextmanager
async def running_cas(options: CasOptions, *, clock: Clock = utc_now) -> AsyncIterator[RunningCas]:
    """Open the state, bind the HTTPS listener, and yield; closes listener and store on exit."""
    now = clock()
    service = build_service(options, now)
    try:
        ctx = mint_server_context(
            service.ca, service.policy.trust_domain, options.listen, options.server_names, now
        )
        runner = web.AppRunner(
            make_app(
                service,
                clock=clock,
                max_attestations=options.max_attestations,
                rate_limit=SourceRateLimit(options.rate_per_source, options.burst_per_source),
                request_timeout=options.request_timeout,
            ),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
            **runner_options(),
        )
        await runner.setup()
        try:
            bound = await start_site(runner, options.listen, ssl_context=ctx)
            service.store.audit(
                "cas.start",
                {"listen": str(bound), "policy_version": service.stored_policy.version},
                now=now,
            )
            follower = None
            if service.store.backend.shared:
                follower = asyncio.create_task(
                    follow_database(service, options.follow_interval), name="cas-follow"
                )
            try:
                yield RunningCas(service=service, bound=bound, app=runner.app, follower=follower)
            finally:
                if follower is not None:
                    follower.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await follower
        finally:
            service.feed.close()  # pending long-polls answer now instead of holding up shutdown
            await runner.cleanup()
    finally:
        service.store.close()


async def serve(options: CasOptions, *, out: TextIO | None = None) -> None:
    """Run the CAS until SIGTERM/SIGINT; prints the ready line once the port is bound."""
    with stop_on_signals() as stop:
        async with running_cas(options) as cas:
            ready = {
                "event": "ready",
                "component": "cas",
                "listen": {"api": str(cas.bound)},
                "url": cas.url,
                "trust_domain": cas.service.policy.trust_domain,
                "policy_version": cas.service.stored_policy.version,
                "state_id": cas.service.store.state_id,
                "counter": str(cas.service.store.counter_path),
                "database": cas.service.store.backend.location,
            }
            print(json.dumps(ready), file=out or sys.stdout, flush=True)
            log.info(
                "CAS serving %s for trust domain %s", cas.bound, cas.service.policy.trust_domain
            )
            await _until_stopped(stop, cas.follower)
            log.info("CAS stopping")


async def _until_stopped(stop: asyncio.Event, follower: asyncio.Task[None] | None) -> None:
    """Wait for a stop signal; re-raise what ended the database follower first (a rollback)."""
    stopping = asyncio.ensure_future(stop.wait())
    waiting: set[asyncio.Future[Any]] = {stopping}
    if follower is not None:
        waiting.add(follower)
    try:
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if follower is not None and follower in done:
        follower.result()  # raises the StateError that stopped it
