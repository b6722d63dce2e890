"""`netshield cas serve`: compose the CAS from its state directory and serve its API over HTTPS.

Start-up is fail-closed: a rolled-back state, a broken audit chain, a policy file that differs
from the stored policy, or missing CA material stops the CAS with one sentence. The CAS's own
server certificate is minted at start from the mesh CA and lives only in memory. When the
listener is bound, one JSON ready line goes to stdout with the bound address (port 0 works).
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from netshield.attestation.evidence.chains import TrustAnchors, load_certificates
from netshield.attestation.evidence.verifier import EvidenceVerifier
from netshield.attestation.verifier import SimulatedQuoteVerifier
from netshield.cas.api import MAX_CONCURRENT_ATTESTATIONS, Clock, make_app, utc_now
from netshield.cas.collateral import CollateralFiles
from netshield.cas.counter import MonotonicCounter
from netshield.cas.service import CasService, bootstrap_policy
from netshield.cas.store import CasStore
from netshield.errors import UsageError
from netshield.identity import SpiffeId
from netshield.netaddr import HostPort
from netshield.pki.ca import CertificateAuthority, issue_certificate
from netshield.pki.keys import generate_key
from netshield.serving import start_site, stop_on_signals
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
    server_names: tuple[str, ...] = ()
    nonce_ttl: timedelta = timedelta(seconds=30)
    max_attestations: int = MAX_CONCURRENT_ATTESTATIONS
    collateral_dir: Path | None = None
    unsafe_evidence_roots: Path | None = None


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
    counter = MonotonicCounter(options.counter_file) if options.counter_file else None
    store = CasStore.open(options.state_dir, counter=counter, adopt_counter=options.adopt_counter)
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


@dataclass(frozen=True, slots=True)
class RunningCas:
    service: CasService
    bound: HostPort
    app: web.Application

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
            make_app(service, clock=clock, max_attestations=options.max_attestations),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
        )
        await runner.setup()
        try:
            bound = await start_site(runner, options.listen, ssl_context=ctx)
            service.store.audit(
                "cas.start",
                {"listen": str(bound), "policy_version": service.stored_policy.version},
                now=now,
            )
            yield RunningCas(service=service, bound=bound, app=runner.app)
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
            }
            print(json.dumps(ready), file=out or sys.stdout, flush=True)
            log.info(
                "CAS serving %s for trust domain %s", cas.bound, cas.service.policy.trust_domain
            )
            await stop.wait()
            log.info("CAS stopping")
