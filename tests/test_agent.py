"""The agent against a real in-process CAS on loopback: attest at start, renew with a new serial
and a new key, keep valid credentials through a CAS outage and fail closed at expiry, recover,
deliver revocations and epoch raises to subscribers, cancel cleanly, never log the key."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from netshield.agent.agent import Agent, parse_feed_answer
from netshield.agent.attest import InProcessQuoter, Workload
from netshield.agent.credentials import CredentialHolder
from netshield.agent.revocations import RevocationState
from netshield.cas.server import running_cas
from netshield.identity import SpiffeId
from netshield.pki.certext import AttestationClaims
from netshield.pki.keys import private_key_pem, public_key_der
from netshield.policy import policy_hash
from netshield.reasons import Reason
from netshield.tls.credentials import MeshCredentials
from netshield.tls.peer import PeerInfo
from tests.support import ORDERS_M, POLICY, SIGNER, TD, Domain, cas_in_process, make_domain

POLICY_1M = POLICY.replace("lifetime: 10m", "lifetime: 1m")
ORDERS = Workload("orders", ORDERS_M, SIGNER, product_id=7, svn=3)


class OffsetClock:
    """Real time plus an offset the test can move (shared by the CAS and the agent)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def domain(tmp_path: Path) -> Domain:
    return make_domain(tmp_path, POLICY_1M)


def make_agent(
    domain: Domain, clock: Callable[[], datetime] | None = None, **overrides: Any
) -> Agent:
    clock = clock or OffsetClock()
    options: dict[str, Any] = {
        "clock": clock,
        "rand": lambda: 0.5,
        "fraction": 0.5,
        "jitter": 0.0,
        "backoff_base": timedelta(milliseconds=50),
        "backoff_cap": timedelta(milliseconds=300),
        "min_renew_delay": timedelta(milliseconds=100),
        "feed_wait": 1,
        "request_timeout": 3.0,
        **overrides,
    }
    return Agent(
        domain._url,
        domain.ca_pem,
        InProcessQuoter(domain.platforms["p-good"], ORDERS),
        ORDERS.service,
        TD,
        CredentialHolder(clock=clock),
        RevocationState(),
        **options,
    )


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def eventually(check: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def current(agent: Agent) -> MeshCredentials | None:
    contexts = agent.holder.current()
    return None if contexts is None else contexts.credentials


def peer(service: str, *, serial: int = 1, epoch: int = 2) -> PeerInfo:
    return PeerInfo(
        spiffe_id=SpiffeId.for_service(TD, service),
        serial=serial,
        not_after=datetime.now(UTC) + timedelta(minutes=1),
        claims=AttestationClaims(ORDERS_M, policy_version=1, epoch=epoch, platform_id="p-good"),
        tls_version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        resumed=False,
    )


def key_secrets(key: ec.EllipticCurvePrivateKey) -> list[str]:
    pem = private_key_pem(key).decode()
    value = key.private_numbers().private_value
    return ["".join(pem.strip().splitlines()[1:-1]), str(value), format(value, "x")]


async def test_agent_attests_at_start_and_renews_with_new_serial_and_key(
    domain: Domain, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with cas_in_process(domain):
        agent = make_agent(domain, fraction=0.03)  # ~1.8 s into a 1 min certificate
        async with running(agent):
            await eventually(lambda: current(agent) is not None, "the first attestation")
            first = current(agent)
            assert first is not None
            assert first.spiffe_id == SpiffeId.for_service(TD, "orders")
            assert (first.epoch, first.policy_version) == (2, 1)
            assert agent.renewals == 0
            status = agent.status()
            assert status["serial"] == format(first.serial, "x")
            assert status["valid"] and status["cas_reachable"]
            assert 50 < status["seconds_to_expiry"] <= 60
            # not renewed before renew_at (the negative twin) ...
            assert agent.next_renewal is not None
            until_renewal = (agent.next_renewal - datetime.now(UTC)).total_seconds()
            assert 1.0 < until_renewal < 2.0  # 3 % of the minute left at receipt, no jitter
            await asyncio.sleep(until_renewal - 0.5)
            assert current(agent) is first and agent.renewals == 0
            # ... and renewed after it: a fresh attestation with a fresh key
            await eventually(lambda: agent.renewals >= 1, "a renewal")
            second = current(agent)
            assert second is not None and second.serial != first.serial
            assert public_key_der(second.key) != public_key_der(first.key)
            assert second.not_after > first.not_after
            assert agent.renewal_failures == 0
            seen = [repr(agent), repr(agent.holder), str(agent.status()), repr(second)]
    logged = caplog.text + "".join(seen)
    assert format(second.serial, "x") in logged  # the logs do name the certificate
    for creds in (first, second):
        for secret in key_secrets(creds.key):
            assert secret not in logged
    # the twin: the same check finds a key where one is
    assert key_secrets(first.key)[0] in private_key_pem(first.key).decode().replace("\n", "")


async def test_cas_outage_keeps_valid_credentials_then_fails_closed_then_recovers(
    domain: Domain,
) -> None:
    clock = OffsetClock()
    async with cas_in_process(domain, clock) as cas:
        port = cas.bound.port
        agent = make_agent(domain, clock, fraction=0.03)
        task = asyncio.create_task(agent.run())
        await eventually(lambda: current(agent) is not None, "the first attestation")
    try:
        first = current(agent)
        assert first is not None
        # the CAS is down: the renewal at ~1.8 s fails, and keeps failing with backoff
        await eventually(lambda: agent.renewal_failures >= 2, "failed renewals")
        assert current(agent) is first  # a failed renewal never throws away valid credentials
        status = agent.status()
        assert status["valid"] and not status["cas_reachable"]
        assert status["last_error"] and "unreachable" in status["last_error"]
        # time passes beyond not_after: fail closed, nobody has to remove anything
        clock.offset = first.not_after - datetime.now(UTC) + timedelta(seconds=1)
        assert agent.holder.current() is None
        assert agent.holder.state().reason is Reason.NO_CREDENTIALS
        assert not agent.status()["valid"] and agent.status()["seconds_to_expiry"] == 0
        # the CAS comes back on the same address: the agent recovers on its own
        async with running_cas(domain.options(f"127.0.0.1:{port}"), clock=clock):
            await eventually(lambda: current(agent) is not None, "recovery")
            recovered = current(agent)
            assert recovered is not None and recovered.serial != first.serial
            assert agent.status()["last_error"] is None
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        task.cancel()


async def test_agent_retries_from_start_until_the_cas_appears(domain: Domain) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    domain._url = f"https://127.0.0.1:{port}"
    agent = make_agent(domain)
    async with running(agent):
        await eventually(lambda: agent.renewal_failures >= 2, "failed attestations")
        assert agent.holder.current() is None
        assert agent.holder.state().reason is Reason.NO_CREDENTIALS
        assert agent.status()["serial"] is None and not agent.status()["cas_reachable"]
        async with running_cas(domain.options(f"127.0.0.1:{port}")):
            await eventually(lambda: current(agent) is not None, "attestation once the CAS is up")
            assert agent.renewals == 0  # the first success is an attestation, not a renewal
            await eventually(agent.synced.is_set, "the feed")


async def test_revocation_reaches_subscribers_within_seconds(domain: Domain) -> None:
    async with cas_in_process(domain), domain.admin_client() as admin:
        agent = make_agent(domain, feed_wait=20)  # a real long poll
        events: list[dict[str, Any]] = []
        agent.on_revocation(lambda event: events.append(dict(event)))
        async with running(agent):
            await eventually(
                lambda: agent.synced.is_set() and current(agent) is not None, "a synced agent"
            )
            mine = current(agent)
            await asyncio.sleep(0.2)  # the agent is now parked in its long poll
            assert events == []
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await admin.revoke("service", "frontend", "compromised")
            await eventually(lambda: events, "the revocation event", timeout=5)
            assert loop.time() - t0 < 5
            [event] = events
            assert (event["type"], event["kind"], event["target"]) == (
                "revoke",
                "service",
                "frontend",
            )
            assert agent.revocations.check(peer("frontend")) is Reason.PEER_REVOKED
            # the twins: other services pass, and our own credentials are untouched
            assert agent.revocations.check(peer("orders")) is None
            assert current(agent) is mine


async def test_own_revoked_certificate_is_dropped_and_replaced(domain: Domain) -> None:
    async with cas_in_process(domain), domain.admin_client() as admin:
        agent = make_agent(domain)
        async with running(agent):
            await eventually(
                lambda: agent.synced.is_set() and current(agent) is not None, "a synced agent"
            )
            first = current(agent)
            assert first is not None
            await admin.revoke("instance", format(first.serial, "x"), "key leaked")
            await eventually(
                lambda: (c := current(agent)) is not None and c.serial != first.serial,
                "a replacement certificate",
            )
            assert (
                agent.revocations.check(peer("orders", serial=first.serial)) is Reason.PEER_REVOKED
            )
            replacement = current(agent)
            assert replacement is not None
            assert agent.revocations.check(peer("orders", serial=replacement.serial)) is None


async def test_raised_min_epoch_triggers_reattestation_and_epoch_subscribers(
    domain: Domain,
) -> None:
    async with cas_in_process(domain), domain.admin_client() as admin:
        agent = make_agent(domain)
        epochs: list[int] = []
        agent.on_epoch(epochs.append)
        async with running(agent):
            await eventually(
                lambda: agent.synced.is_set() and current(agent) is not None, "a synced agent"
            )
            # the twin: a policy change that keeps min_epoch re-attests for the new slice only
            v2 = POLICY_1M + "# v2\n"
            await admin.apply_policy(v2, previous=policy_hash(POLICY_1M))
            await eventually(
                lambda: (c := current(agent)) is not None and c.policy_version == 2, "policy v2"
            )
            creds = current(agent)
            assert creds is not None and creds.epoch == 2
            assert epochs == [] and agent.revocations.min_epoch == 2
            # raising min_epoch: immediate re-attestation under the new epoch, subscribers told
            v3 = v2.replace("min_epoch: 2", "min_epoch: 3")
            await admin.apply_policy(v3, previous=policy_hash(v2))
            await eventually(lambda: (c := current(agent)) is not None and c.epoch == 3, "epoch 3")
            await eventually(lambda: epochs == [3], "the epoch subscriber")
            assert agent.revocations.min_epoch == 3
            assert agent.revocations.check(peer("frontend", epoch=2)) is Reason.POLICY_STALE
            assert agent.revocations.check(peer("frontend", epoch=3)) is None


async def test_cancelling_run_cancels_its_tasks_and_propagates(domain: Domain) -> None:
    async with cas_in_process(domain):
        agent = make_agent(domain)
        task = asyncio.create_task(agent.run())
        await eventually(lambda: current(agent) is not None, "attestation")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("agent-")]
        assert leftovers == []
        # the twin: while running, the agent's two tasks exist
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(0.05)
        names = sorted(t.get_name().split()[0] for t in asyncio.all_tasks())
        assert names.count("agent-renewal") == 1 and names.count("agent-feed") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_agent_rejects_bad_timing_knobs(domain: Domain) -> None:
    with pytest.raises(ValueError):
        make_agent(domain, fraction=0.0)
    with pytest.raises(ValueError):
        make_agent(domain, backoff_cap=timedelta(0))
    assert make_agent(domain).renewals == 0


def test_feed_answer_of_the_cas_parses() -> None:
    events, head, policy = parse_feed_answer(
        {
            "events": [{"seq": 5, "type": "revoke", "kind": "service", "target": "frontend"}],
            "next": 7,
            "policy": {"version": 2, "hash": "sha256:" + "0" * 64, "min_epoch": 3},
        }
    )
    assert (len(events), head, policy) == (1, 7, {"version": 2, "min_epoch": 3})
    # the twin: a missing min_epoch is refused, not defaulted
    with pytest.raises(ValueError, match="min_epoch"):
        parse_feed_answer({"events": [], "next": 7, "policy": {"version": 2}})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["events", "next", "policy", "version", "min_epoch"]), inner
        )
    ),
    max_leaves=10,
)


@given(json_values)
def test_feed_answer_parser_raises_only_value_error(answer: object) -> None:
    try:
        parse_feed_answer(answer)
    except ValueError:
        return
