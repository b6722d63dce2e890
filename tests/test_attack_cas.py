"""Attacks on the CAS, each with its twin that passes. (Evidence refusals reason by reason, admin
calls without or with a wrong certificate, rolled-back state and a tampered audit log have their
tests in test_cas_api.py, test_store_rollback.py and test_cas_e2e.py; the README's security
table names them.)

Here: a quote signed by a key the vendor never certified; a CSR that asks for more than the
policy grants; two attestations racing for one nonce; a flood of nonce requests (nothing written,
memory bounded, legitimate attestations still pass); deep JSON; an oversized body that declares
no length; requests that arrive slowly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netshield.agent.attest import InProcessQuoter, Workload, attest
from netshield.attestation.quote import report_data_for
from netshield.cas.server import running_cas
from netshield.casclient import CasClient, CasRefused
from netshield.identity import SpiffeId
from netshield.pki.csr import build_csr
from netshield.pki.keys import generate_key, public_key_der
from netshield.tls.material import cas_client_context
from tests.attack_support import Attacker, Sampler, attacker_host, attacker_hosts
from tests.support import ORDERS_M, SIGNER, TD, Domain, cas_in_process, cas_subprocess, make_domain

pytestmark = pytest.mark.slow


@pytest.fixture
def domain(tmp_path: Path) -> Domain:
    return make_domain(tmp_path)


def orders_quote(domain: Domain, key: ec.EllipticCurvePrivateKey, nonce: bytes) -> bytes:
    return domain.platforms["p-good"].quote(
        measurement=ORDERS_M,
        signer=SIGNER,
        product_id=7,
        svn=3,
        report_data=report_data_for(public_key_der(key.public_key()), nonce),
    )


async def attest_orders(cas: CasClient, domain: Domain) -> str:
    """A legitimate attestation of orders through the agent's code; "OK" or the refusal code."""
    quoter = InProcessQuoter(
        domain.platforms["p-good"], Workload("orders", ORDERS_M, SIGNER, product_id=7, svn=3)
    )
    try:
        await attest(cas, quoter, "orders", trust_domain=TD)
    except CasRefused as err:
        return err.code
    return "OK"


# --- evidence -------------------------------------------------------------------------------------
async def test_a_quote_signed_by_a_key_the_vendor_never_certified_is_refused(
    domain: Domain,
) -> None:
    """The genuine platform certificate, but the quote signed by the attacker's own key."""
    async with cas_in_process(domain), domain.client() as cas:
        key, nonce = generate_key(), await cas.nonce()
        forged = dataclasses.replace(domain.platforms["p-good"], key=generate_key())
        quote = forged.quote(
            measurement=ORDERS_M,
            signer=SIGNER,
            product_id=7,
            svn=3,
            report_data=report_data_for(public_key_der(key.public_key()), nonce),
        )
        csr = build_csr(key, SpiffeId.for_service(TD, "orders"))
        with pytest.raises(CasRefused) as info:
            await cas.attest(service="orders", nonce=nonce, quote=quote, csr_pem=csr)
        assert info.value.code == "QUOTE_SIGNATURE_INVALID"
        assert await attest_orders(cas, domain) == "OK"  # the twin: the certified key


# --- what a CSR asks for --------------------------------------------------------------------------
def greedy_csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """A CSR for another identity, with extra SANs, asking to be a CA that signs certificates."""
    from cryptography.hazmat.primitives import serialization

    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/frontend"),
                    x509.UniformResourceIdentifier(f"spiffe://{TD}/admin/operator"),
                    x509.DNSName("cas.internal"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


async def test_a_csr_asking_for_more_than_the_policy_gets_only_what_the_policy_grants(
    domain: Domain,
) -> None:
    async with cas_in_process(domain), domain.client() as cas:
        key, nonce = generate_key(), await cas.nonce()
        creds = await cas.attest(
            service="orders",
            nonce=nonce,
            quote=orders_quote(domain, key, nonce),
            csr_pem=greedy_csr(key),
        )
        cert = x509.load_pem_x509_certificate(creds.chain_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://{TD}/svc/orders"  # the attested service, not what the CSR named
        ]
        assert san.get_values_for_type(x509.DNSName) == []
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert basic.ca is False
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(minutes=11)
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        assert creds.spiffe_id == f"spiffe://{TD}/svc/orders"


@pytest.mark.parametrize(
    "weak",
    [
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
        lambda: ec.generate_private_key(ec.SECP192R1()),
    ],
    ids=["rsa-1024", "p-192"],
)
async def test_a_csr_with_a_weak_key_is_refused(domain: Domain, weak: object) -> None:
    async with cas_in_process(domain), domain.client() as cas:
        key = weak()  # type: ignore[operator]
        nonce = await cas.nonce()
        quote = domain.platforms["p-good"].quote(
            measurement=ORDERS_M,
            signer=SIGNER,
            product_id=7,
            svn=3,
            report_data=report_data_for(public_key_der(key.public_key()), nonce),
        )
        with pytest.raises(CasRefused) as info:
            await cas.attest(service="orders", nonce=nonce, quote=quote, csr_pem=greedy_csr(key))
        assert info.value.code == "CSR_MALFORMED" and "P-256" in str(info.value)


# --- nonces -------------------------------------------------------------------------------------
async def test_two_attestations_racing_for_one_nonce_get_one_certificate(domain: Domain) -> None:
    async with cas_in_process(domain) as running, domain.client() as cas:
        key, nonce = generate_key(), await cas.nonce()
        quote, csr = (
            orders_quote(domain, key, nonce),
            build_csr(key, SpiffeId.for_service(TD, "orders")),
        )

        async def one() -> str:
            try:
                await cas.attest(service="orders", nonce=nonce, quote=quote, csr_pem=csr)
            except CasRefused as err:
                return err.code
            return "OK"

        outcomes = await asyncio.gather(*(one() for _ in range(16)))
        assert sorted(outcomes) == sorted(["OK"] + ["NONCE_REUSED"] * 15)
        issued = running.service.store.list_issued(service="orders")
        assert len(issued) == 1


def nonce_rows(domain: Domain) -> int:
    db = sqlite3.connect(domain.layout.cas_state / "cas.db")
    try:
        return int(db.execute("SELECT count(*) FROM nonces").fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def cas_process(domain: Domain) -> Iterator[object]:
    with cas_subprocess(domain) as proc:
        yield proc


def test_a_nonce_flood_writes_nothing_stays_bounded_and_legitimate_attestations_pass(
    domain: Domain, cas_process: object
) -> None:
    """Four addresses ask for nonces as fast as they can for 5 s, while a sidecar's address
    attests every half second: every legitimate attestation passes; the flood writes no row
    (only used nonces are stored: one per attestation); the CAS's memory stays bounded; each
    flooding address is held to its rate (429 RATE_LIMITED beyond it)."""
    pid = cas_process.proc.pid  # type: ignore[attr-defined]
    port = cas_process.port  # type: ignore[attr-defined]
    before = nonce_rows(domain)
    hosts = attacker_hosts(4)
    with Sampler(pid) as sampler:
        flood = Attacker(
            "nonces", ("127.0.0.1", port), "--threads", "4", "--seconds", "5", source=hosts
        )

        async def legit() -> list[str]:
            outcomes = []
            async with domain.client() as cas:
                t_end = time.monotonic() + 4
                while time.monotonic() < t_end:
                    outcomes.append(await attest_orders(cas, domain))
                    await asyncio.sleep(0.5)
            return outcomes

        outcomes = asyncio.run(legit())
        stats = flood.wait()
    answered = stats["outcomes"]
    served, limited = answered.get("200", 0), answered.get("429", 0)
    rate = stats["opened"] / 5
    growth = (max(sampler.rss) - sampler.rss[0]) / 2**20
    print(
        f"\n[attack] nonce flood: {stats['opened']} requests in 5 s ({rate:.0f}/s) from 4 "
        f"addresses: {served} nonces, {limited} refused with 429; legitimate attestations "
        f"{outcomes.count('OK')}/{len(outcomes)}; nonce rows +{nonce_rows(domain) - before}; "
        f"CAS RSS {sampler.rss[0] / 2**20:.0f} -> {max(sampler.rss) / 2**20:.0f} MiB"
    )
    assert outcomes and set(outcomes) == {"OK"}
    assert nonce_rows(domain) - before == len(outcomes)  # one row per used nonce, none per flood
    assert limited > 0 and served <= 4 * (200 + 50 * 6)  # each address: burst + rate x time
    assert growth < 40, sampler.rss


async def test_an_address_over_its_rate_is_told_when_to_come_back(domain: Domain) -> None:
    from netshield.cas.api import RATE_KEY

    async with cas_in_process(domain) as running, domain.client() as cas:
        limit = running.app[RATE_KEY]
        limit.rate, limit.burst = 1.0, 3
        for _ in range(3):
            await cas.nonce()
        with pytest.raises(CasRefused) as info:
            await cas.nonce()
        assert (info.value.status, info.value.code) == (429, "RATE_LIMITED")
        await asyncio.sleep(1.1)  # the twin: a token later, it passes again
        assert len(await cas.nonce()) == 32


# --- request bodies and slow clients --------------------------------------------------------------
async def test_deep_json_is_a_malformed_request_not_a_crash(domain: Domain) -> None:
    import aiohttp

    async with cas_in_process(domain), domain.client() as cas:
        ctx = cas_client_context(ca_pem=domain.ca_pem)
        deep = b"[" * 60_000 + b"]" * 60_000
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{domain._url}/v1/attest",
                data=deep[:60_000],
                headers={"Content-Type": "application/json"},
                ssl=ctx,
            ) as response:
                body = await response.json()
        assert response.status == 400 and body["error"]["reason"] == "REQUEST_MALFORMED"
        assert await attest_orders(cas, domain) == "OK"  # the twin, on the same CAS


async def test_an_oversized_body_without_a_length_is_refused_once_past_the_limit(
    domain: Domain,
) -> None:
    """A chunked body (no Content-Length to refuse it by, as test_cas_api.py does) that grows
    past the 64 KiB limit and never ends: 413 BODY_TOO_LARGE as soon as the limit is crossed,
    not a CAS that waits for, or buffers, whatever the client keeps sending."""
    from netshield.cas.api import MAX_BODY

    async with cas_in_process(domain) as running, domain.client() as cas:
        ctx = cas_client_context(ca_pem=domain.ca_pem)
        host, port = running.bound.host, running.bound.port
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
        try:
            writer.write(
                b"POST /v1/attest HTTP/1.1\r\nHost: cas\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b" " * 16384
            for _ in range(MAX_BODY // len(chunk) + 1):  # one chunk past the limit, no last chunk
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            async with asyncio.timeout(30):  # a hang guard: the answer must not wait for an end
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":", 1)[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                body = json.loads(await reader.readexactly(length))
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 413 ")
        assert body["error"]["reason"] == "BODY_TOO_LARGE"
        assert await attest_orders(cas, domain) == "OK"  # the twin, on the same CAS


@pytest.mark.parametrize(
    ("body", "outcome"),
    [(False, "closed"), (True, "answered 408 " + "REQUEST_TOO_SLOW")],
    ids=["head one byte a second", "body that never comes"],
)
async def test_slow_requests_are_cut_off_and_legitimate_ones_pass_meanwhile(
    domain: Domain, body: bool, outcome: str
) -> None:
    options = dataclasses.replace(domain.options(), request_timeout=1.0)
    async with running_cas(options) as running:
        domain._url = running.url
        host, port = running.bound.host, running.bound.port
        args = ["--count", "200", "--seconds", "15", *(["--body"] if body else [])]
        slow = await asyncio.to_thread(
            Attacker, "slowhttp", (host, port), *args, source=attacker_host()
        )
        async with domain.client() as cas:
            assert await attest_orders(cas, domain) == "OK"  # while 200 slow clients wait
        stats = await asyncio.to_thread(slow.wait, 60)
    assert stats["opened"] == 200
    assert stats["outcomes"] == {outcome: 200}, stats  # every one cut off, none still open
    if body:
        assert outcome.rsplit(maxsplit=1)[-1] == "REQUEST_TOO_SLOW"  # 408 with its reason code
    assert stats["max_open"] == 0


def test_tls_handshakes_that_stall_are_cut_off(domain: Domain) -> None:
    """TCP connections that never start TLS: closed at the handshake deadline (the twin of the
    slow requests above, one layer down)."""

    async def go() -> dict[str, object]:
        options = dataclasses.replace(domain.options(), request_timeout=1.0)
        async with running_cas(options) as running:
            attacker = await asyncio.to_thread(
                Attacker,
                "idle",
                (running.bound.host, running.bound.port),
                "--count",
                "300",
                "--seconds",
                "15",
                source=attacker_host(),
            )
            return await asyncio.to_thread(attacker.wait, 60)

    started = time.monotonic()
    stats = asyncio.run(go())
    assert stats["opened"] == 300 and stats["dropped_by_peer"] == 300, stats
    # at the configured deadline (1 s), not the default one (10 s): a hang guard, generous
    assert time.monotonic() - started < 9
