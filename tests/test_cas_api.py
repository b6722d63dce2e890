"""The CAS API over real TLS on loopback: every attestation reason code with its passing twin,
bad requests, admin authentication, policy versions, the revocation feed and bursts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from netshield.agent.attest import InProcessQuoter, Workload, attest
from netshield.attestation.platform import create_platform
from netshield.attestation.quote import decode_quote, encode_body, encode_quote, report_data_for
from netshield.cas.api import ATTEST_SLOTS_KEY
from netshield.casclient import CasClient, CasRefused
from netshield.identity import SpiffeId
from netshield.pki.ca import create_root_ca, issue_certificate, spiffe_id_of
from netshield.pki.certext import attestation_claims_of
from netshield.pki.csr import build_csr
from netshield.pki.keys import generate_key, public_key_der
from netshield.policy import policy_hash
from netshield.tls.material import cas_client_context
from tests.support import (
    DEBUGGY_M,
    FRONTEND_M,
    ORDERS_M,
    POLICY,
    SIGNER,
    TD,
    Domain,
    cas_in_process,
    make_domain,
)

GOOD = {
    "platform": "p-good",
    "service": "orders",
    "measurement": ORDERS_M,
    "signer": SIGNER,
    "product_id": 7,
    "svn": 3,
}


@pytest.fixture
def domain(tmp_path: Path) -> Domain:
    return make_domain(tmp_path)


async def attempt(
    domain: Domain,
    cas: CasClient,
    *,
    nonce: bytes | None = None,
    key_for_quote: bool = True,
    csr_pem: bytes | None = None,
    mutate: Callable[[bytes], bytes] | None = None,
    **overrides: object,
) -> str:
    """One attestation with GOOD's values overridden; returns "OK" or the refusal's reason code."""
    spec = {**GOOD, **overrides}
    platform = (
        domain.platforms[str(spec["platform"])]
        if isinstance(spec["platform"], str)
        else spec["platform"]
    )
    key = generate_key()
    csr = csr_pem or build_csr(key, SpiffeId.for_service(TD, str(spec["service"])))
    nonce = nonce if nonce is not None else await cas.nonce()
    quote = platform.quote(
        measurement=str(spec["measurement"]),
        signer=str(spec["signer"]),  # type: ignore[union-attr]
        product_id=int(spec["product_id"]),
        svn=int(spec["svn"]),  # type: ignore[arg-type]
        report_data=report_data_for(public_key_der(key.public_key()), nonce),
    )
    if mutate:
        quote = mutate(quote)
    try:
        await cas.attest(service=str(spec["service"]), nonce=nonce, quote=quote, csr_pem=csr)
    except CasRefused as err:
        return err.code
    return "OK"


async def test_good_workload_gets_mesh_certificate_bound_to_its_key(domain: Domain) -> None:
    async with cas_in_process(domain), domain.client() as cas:
        got = await attest(
            cas,
            InProcessQuoter(
                domain.platforms["p-good"],
                Workload("orders", ORDERS_M, SIGNER, product_id=7, svn=3),
            ),
            "orders",
            trust_domain=TD,
        )
    creds = got.credentials
    certs = x509.load_pem_x509_certificates(creds.chain_pem)
    leaf = certs[0]
    assert spiffe_id_of(leaf) == SpiffeId.for_service(TD, "orders")
    assert leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == public_key_der(got.key.public_key())
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    lifetime = leaf.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(minutes=9) < lifetime <= timedelta(minutes=10)
    claims = attestation_claims_of(leaf)
    assert claims is not None
    assert (claims.measurement, claims.policy_version, claims.epoch) == (ORDERS_M, 1, 2)
    assert claims.platform_id == "p-good"
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(domain.ca_pem))
    assert creds.trust_bundle_pem.strip() == domain.ca_pem.strip()
    # the caller's slice of policy: who may call it, whom it may call, the registry
    assert creds.policy["allowed_callers"] == ["frontend"]
    assert "orders" in creds.policy["registry"]
    assert creds.policy["registry"]["orders"]["addresses"] == ["127.0.0.1:15001"]


def _other_vendor_platform(domain: Domain) -> object:
    now = datetime.now(UTC)
    rogue = create_root_ca("rogue vendor", now=now)
    return create_platform(rogue, platform_id="p-good", tcb_level=9, debug=False, now=now)


def _edit_measurement(quote: bytes) -> bytes:
    q = decode_quote(quote)
    body = dataclasses.replace(q.body, measurement=FRONTEND_M)
    return encode_quote(dataclasses.replace(q, body=body, body_bytes=encode_body(body)))


CASES: list[tuple[str, dict[str, object], str]] = [
    # (name, overrides, expected reason) — each has its passing twin: GOOD itself or the listed twin
    ("garbage quote", {"mutate": lambda q: b"\x00not a quote"}, "QUOTE_MALFORMED"),
    ("platform from another vendor", {"platform": "ROGUE"}, "PLATFORM_CERT_UNTRUSTED"),
    ("body edited after signing", {"mutate": _edit_measurement}, "QUOTE_SIGNATURE_INVALID"),
    ("revoked platform", {"platform": "p-revoked"}, "PLATFORM_REVOKED"),
    ("old firmware", {"platform": "p-old"}, "TCB_OUT_OF_DATE"),
    ("debug workload, service forbids debug", {"platform": "p-debug"}, "DEBUG_NOT_ALLOWED"),
    (
        "debug platform signs debug off",
        {"platform": "DEBUG_SIGNS_OFF"},
        "PLATFORM_CLAIM_NOT_CERTIFIED",
    ),
    ("unknown nonce", {"nonce": b"\x01" * 32}, "NONCE_UNKNOWN"),
    ("CSR swapped after quoting", {"swap_csr": True}, "REPORT_DATA_MISMATCH"),
    (
        "CSR garbage",
        {
            "csr_pem": b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        },
        "CSR_MALFORMED",
    ),
    ("service not in policy", {"service": "ghost"}, "SERVICE_UNKNOWN"),
    ("service disabled", {"service": "retired"}, "SERVICE_DISABLED"),
    ("tampered workload", {"measurement": "ee" * 32}, "MEASUREMENT_NOT_ALLOWED"),
    ("other signer", {"signer": "ff" * 32}, "SIGNER_NOT_ALLOWED"),
    ("other product", {"product_id": 8}, "PRODUCT_NOT_ALLOWED"),
    ("old security version", {"svn": 2}, "SVN_TOO_LOW"),
]


@pytest.mark.parametrize(("name", "overrides", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_attestation_refusal_names_its_reason(
    domain: Domain, name: str, overrides: dict[str, object], expected: str
) -> None:
    async with cas_in_process(domain) as running, domain.client() as cas:
        assert await attempt(domain, cas) == "OK"  # the passing twin, same CAS, same policy
        ov = dict(overrides)
        if ov.pop("swap_csr", False):
            ov["csr_pem"] = build_csr(generate_key(), SpiffeId.for_service(TD, "orders"))
        if ov.get("platform") == "ROGUE":
            ov["platform"] = _other_vendor_platform(domain)
        if ov.get("platform") == "DEBUG_SIGNS_OFF":  # certified debug on, signs debug off
            ov["platform"] = dataclasses.replace(domain.platforms["p-debug"], debug=False)
        assert await attempt(domain, cas, **ov) == expected  # type: ignore[arg-type]
        # the refusal is in the audit log with the same code
        entries = running.service.store.audit_entries()
        denials = [e for e in entries if e.event == "attest.deny"]
        assert denials and denials[-1].data["reason"] == expected


async def test_debug_workload_allowed_where_policy_says_so(domain: Domain) -> None:
    async with cas_in_process(domain), domain.client() as cas:
        code = await attempt(
            domain, cas, platform="p-debug", service="debuggy", measurement=DEBUGGY_M
        )
        assert code == "OK"


async def test_replayed_quote_is_refused_with_nonce_reused(domain: Domain) -> None:
    async with cas_in_process(domain), domain.client() as cas:
        key = generate_key()
        csr = build_csr(key, SpiffeId.for_service(TD, "orders"))
        nonce = await cas.nonce()
        quote = domain.platforms["p-good"].quote(
            measurement=ORDERS_M,
            signer=SIGNER,
            product_id=7,
            svn=3,
            report_data=report_data_for(public_key_der(key.public_key()), nonce),
        )
        await cas.attest(service="orders", nonce=nonce, quote=quote, csr_pem=csr)
        with pytest.raises(CasRefused) as info:
            await cas.attest(service="orders", nonce=nonce, quote=quote, csr_pem=csr)
        assert info.value.code == "NONCE_REUSED"
        assert info.value.status == 403


async def test_expired_nonce_is_refused_and_fresh_one_passes(domain: Domain) -> None:
    offset = [timedelta(0)]

    def clock() -> datetime:
        return datetime.now(UTC) + offset[0]

    async with cas_in_process(domain, clock=clock), domain.client() as cas:
        stale = await cas.nonce()
        offset[0] = timedelta(minutes=5)
        assert await attempt(domain, cas, nonce=stale) == "NONCE_EXPIRED"
        assert await attempt(domain, cas) == "OK"


async def test_revoked_service_and_platform_are_refused_at_attestation(domain: Domain) -> None:
    async with cas_in_process(domain), domain.client() as cas, domain.admin_client() as admin:
        assert await attempt(domain, cas, service="frontend", measurement=FRONTEND_M) == "OK"
        await admin.revoke("service", "frontend", "compromised")
        assert (
            await attempt(domain, cas, service="frontend", measurement=FRONTEND_M)
            == "SERVICE_REVOKED"
        )
        await admin.revoke("platform", "p-good", "decommissioned")
        assert await attempt(domain, cas) == "PLATFORM_REVOKED"


async def _raw(
    domain: Domain,
    method: str,
    path: str,
    *,
    data: bytes = b"",
    ctype: str = "application/json",
    ctx: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, object]]:
    ctx = ctx or cas_client_context(ca_pem=domain.ca_pem)
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method, domain._url + path, data=data, headers={"Content-Type": ctype}, ssl=ctx
        ) as resp,
    ):
        return resp.status, json.loads(await resp.read())


@pytest.mark.parametrize(
    ("path", "data", "ctype", "status", "code"),
    [
        ("/v1/attest", b"{not json", "application/json", 400, "REQUEST_MALFORMED"),
        ("/v1/attest", b"[1, 2]", "application/json", 400, "REQUEST_MALFORMED"),
        ("/v1/attest", b'{"service": "orders"}', "application/json", 400, "REQUEST_MALFORMED"),
        (
            "/v1/attest",
            b'{"service": 1, "nonce": 2, "quote": 3, "csr": 4}',
            "application/json",
            400,
            "REQUEST_MALFORMED",
        ),
        (
            "/v1/attest",
            b'{"service": "orders", "nonce": "zz", "quote": "", "csr": ""}',
            "application/json",
            400,
            "REQUEST_MALFORMED",
        ),
        (
            "/v1/attest",
            b'{"service": "orders", "nonce": "00", "quote": "!!!", "csr": ""}',
            "application/json",
            400,
            "QUOTE_MALFORMED",
        ),
        (
            "/v1/attest",
            b"service=orders",
            "application/x-www-form-urlencoded",
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        ("/v1/attest", b"x" * (200 * 1024), "application/json", 413, "BODY_TOO_LARGE"),
        ("/v1/nope", b"", "application/json", 404, "NOT_FOUND"),
    ],
)
async def test_bad_requests_get_4xx_with_reason_code(
    domain: Domain, path: str, data: bytes, ctype: str, status: int, code: str
) -> None:
    async with cas_in_process(domain):
        got_status, body = await _raw(domain, "POST", path, data=data, ctype=ctype)
        assert (got_status, body["error"]["reason"]) == (status, code)  # type: ignore[index]
        # the CAS is still healthy afterwards, and a good request passes (the twin)
        async with domain.client() as cas:
            assert await attempt(domain, cas) == "OK"


async def test_admin_endpoints_require_the_operator_certificate(domain: Domain) -> None:
    async with cas_in_process(domain):
        # no client certificate
        status, body = await _raw(domain, "GET", "/v1/admin/policy")
        assert (status, body["error"]["reason"]) == (403, "ADMIN_CERT_REQUIRED")  # type: ignore[index]
        # a mesh certificate of a service is not an operator
        async with domain.client() as cas:
            got = await attest(
                cas,
                InProcessQuoter(
                    domain.platforms["p-good"],
                    Workload("orders", ORDERS_M, SIGNER, product_id=7, svn=3),
                ),
                "orders",
                trust_domain=TD,
            )
        ctx = cas_client_context(
            ca_pem=domain.ca_pem, chain_pem=got.credentials.chain_pem, key=got.key
        )
        status, body = await _raw(domain, "GET", "/v1/admin/policy", ctx=ctx)
        assert (status, body["error"]["reason"]) == (403, "ADMIN_CERT_REQUIRED")  # type: ignore[index]
        # an admin certificate from another CA does not even complete the handshake
        now = datetime.now(UTC)
        rogue = create_root_ca("rogue", now=now)
        rkey = generate_key()
        rcert = issue_certificate(
            rogue,
            public_key=rkey.public_key(),
            spiffe_id=SpiffeId.for_admin(TD, "operator"),
            now=now,
            lifetime=timedelta(hours=1),
            server_auth=False,
        )
        ctx = cas_client_context(
            ca_pem=domain.ca_pem, chain_pem=rcert.public_bytes(serialization.Encoding.PEM), key=rkey
        )
        with pytest.raises(aiohttp.ClientError):
            await _raw(domain, "GET", "/v1/admin/policy", ctx=ctx)
        # the twin: the operator's certificate works
        async with domain.admin_client() as admin:
            assert (await admin.policy())["version"] == 1


async def test_policy_update_must_name_its_predecessor(domain: Domain) -> None:
    new_text = POLICY.replace("min_epoch: 2", "min_epoch: 3")
    async with cas_in_process(domain), domain.admin_client() as admin, domain.client() as cas:
        with pytest.raises(CasRefused) as info:
            await admin.apply_policy(new_text, previous="sha256:" + "0" * 64)
        assert info.value.code == "POLICY_PREDECESSOR_MISMATCH"
        with pytest.raises(CasRefused) as info:
            await admin.apply_policy(new_text, previous=None)
        assert info.value.code == "POLICY_PREDECESSOR_MISMATCH"
        with pytest.raises(CasRefused) as info:
            await admin.apply_policy("trust_domain: [", previous=policy_hash(POLICY))
        assert info.value.code == "POLICY_INVALID"
        result = await admin.apply_policy(new_text, previous=policy_hash(POLICY))
        assert result["version"] == 2
        got = await attest(
            cas,
            InProcessQuoter(
                domain.platforms["p-good"],
                Workload("orders", ORDERS_M, SIGNER, product_id=7, svn=3),
            ),
            "orders",
            trust_domain=TD,
        )
        claims = attestation_claims_of(
            x509.load_pem_x509_certificates(got.credentials.chain_pem)[0]
        )
        assert claims is not None and (claims.policy_version, claims.epoch) == (2, 3)


async def test_revocation_reaches_a_long_polling_follower_within_seconds(domain: Domain) -> None:
    async with cas_in_process(domain), domain.client() as cas, domain.admin_client() as admin:
        got = await attest(
            cas,
            InProcessQuoter(
                domain.platforms["p-good"],
                Workload("orders", ORDERS_M, SIGNER, product_id=7, svn=3),
            ),
            "orders",
            trust_domain=TD,
        )
        head = (await cas.feed(0))["next"]
        follower = asyncio.create_task(cas.feed(head, wait=30))
        await asyncio.sleep(0.1)
        assert not follower.done()  # it really waits
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await admin.revoke("instance", got.credentials.serial, "test")
        feed = await asyncio.wait_for(follower, 5)
        assert loop.time() - t0 < 5
        [event] = feed["events"]
        assert event["type"] == "revoke" and event["target"] == got.credentials.serial
        assert event["service"] == "orders"
        # the same events arrive as server-sent events
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                domain._url + "/v1/feed/stream?since=0",
                ssl=cas_client_context(ca_pem=domain.ca_pem),
            ) as resp,
        ):
            assert resp.content_type == "text/event-stream"
            seen = b""
            while b"event: revoke" not in seen:
                seen += await asyncio.wait_for(resp.content.readany(), 5)
        with pytest.raises(CasRefused) as info:
            await admin.revoke("instance", "abcdef", "no such serial")
        assert info.value.code == "REVOCATION_TARGET_UNKNOWN"


async def test_burst_of_concurrent_attestations_all_answered(domain: Domain) -> None:
    async with cas_in_process(domain) as running, domain.client() as cas:
        codes = await asyncio.gather(*(attempt(domain, cas) for _ in range(40)))
        assert set(codes) <= {"OK", "BUSY"}
        assert codes.count("OK") >= 1
        assert await attempt(domain, cas) == "OK"
        issued = running.service.store.list_issued("orders")
        assert len(issued) == codes.count("OK") + 1
        assert len({i.serial for i in issued}) == len(issued)


async def test_cas_never_logs_or_audits_key_material(
    domain: Domain, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    async with cas_in_process(domain) as running, domain.client() as cas:
        got = await attest(
            cas,
            InProcessQuoter(
                domain.platforms["p-good"],
                Workload("orders", ORDERS_M, SIGNER, product_id=7, svn=3),
            ),
            "orders",
            trust_domain=TD,
        )
        await attempt(domain, cas, measurement="ee" * 32)
        audit_text = json.dumps(
            [dataclasses.asdict(e) for e in running.service.store.audit_entries()]
        )
    secret = format(got.key.private_numbers().private_value, "x")
    ca_key = (domain.layout.cas_state / "mesh-ca.key").read_text()
    for text in (caplog.text, audit_text, repr(got), repr(running.service.ca)):
        assert "PRIVATE KEY" not in text
        assert secret not in text
        assert ca_key.splitlines()[1] not in text
    assert "attest.allow" in audit_text and "MEASUREMENT_NOT_ALLOWED" in audit_text
    # the CAS log and the audit log say the same about the refusal
    assert "reason=MEASUREMENT_NOT_ALLOWED service=orders" in caplog.text


async def test_attestations_beyond_the_concurrency_limit_get_busy_not_a_hang(
    domain: Domain,
) -> None:
    from netshield.cas.server import running_cas

    options = dataclasses.replace(domain.options(), max_attestations=1)
    async with running_cas(options) as running:
        domain._url = running.url
        async with domain.client() as cas:
            prepared = []
            for _ in range(16):  # nonces, quotes and CSRs first, so the attest calls really overlap
                key = generate_key()
                nonce = await cas.nonce()
                quote = domain.platforms["p-good"].quote(
                    measurement=ORDERS_M,
                    signer=SIGNER,
                    product_id=7,
                    svn=3,
                    report_data=report_data_for(public_key_der(key.public_key()), nonce),
                )
                prepared.append((nonce, quote, build_csr(key, SpiffeId.for_service(TD, "orders"))))

            async def fire(nonce: bytes, quote: bytes, csr: bytes) -> str:
                try:
                    await cas.attest(service="orders", nonce=nonce, quote=quote, csr_pem=csr)
                except CasRefused as err:
                    return err.code
                return "OK"

            store_lock = (
                running.service.store._lock
            )  # hold the store so the first attestation stays in flight
            store_lock.acquire()
            try:
                first = asyncio.create_task(fire(*prepared[0]))
                slots = running.app[ATTEST_SLOTS_KEY]
                for _ in range(200):
                    if slots.locked():
                        break
                    await asyncio.sleep(0.01)
                codes = await asyncio.gather(*(fire(*p) for p in prepared[1:]))
            finally:
                store_lock.release()
            assert await first == "OK"
            assert set(codes) == {"BUSY"}
            assert await attempt(domain, cas) == "OK"  # the twin: alone, it passes


async def test_wrong_method_is_refused_with_a_reason(domain: Domain) -> None:
    async with cas_in_process(domain):
        status, body = await _raw(domain, "GET", "/v1/attest")
        assert (status, body["error"]["reason"]) == (405, "METHOD_NOT_ALLOWED")  # type: ignore[index]
        status, body = await _raw(domain, "GET", "/healthz")
        assert (status, body["status"]) == (200, "ok")
        status, body = await _raw(domain, "GET", "/readyz")
        assert (status, body["trust_domain"]) == (200, TD)


async def test_audit_verify_during_concurrent_attestations_never_reports_a_false_truncation(
    domain: Domain,
) -> None:
    from netshield.operator import audit_online

    async with cas_in_process(domain), domain.client() as cas:
        stop = asyncio.Event()

        async def attest_until_stopped() -> int:
            done = 0
            while not stop.is_set():
                await attempt(domain, cas, measurement="ee" * 32 if done % 2 else ORDERS_M)
                done += 1
            return done

        writers = [asyncio.create_task(attest_until_stopped()) for _ in range(3)]
        verdicts = []
        for _ in range(15):
            lines, ok = await audit_online(
                domain._url, domain.admin, since=0, limit=1, verify=True, as_json=False
            )
            verdicts.append((ok, lines[-1]))
        stop.set()
        assert sum(await asyncio.gather(*writers)) > 10  # the log really grew while we verified
    assert all(ok for ok, _ in verdicts), [line for ok, line in verdicts if not ok]
