"""Several CAS replicas on one PostgreSQL database, for real: `netshield cas serve` processes
(and in-process CAS instances) sharing a schema of the session's throwaway cluster.

Shown here: a nonce is consumed once at any replica; revocations and policy updates made at
one replica reach feed readers and attestations at another; the audit chain stays one chain
under concurrent writers at every replica (with either chain lock); serials never collide;
killing a replica mid-attestation loses nothing a client was told was done, and clients fail
over to the next replica; a database restored from an older dump is refused at start and stops
a running replica; the database password never shows on a command line, in a log or the ready
line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from netshield.attestation.quote import report_data_for
from netshield.cas.server import CasOptions, RunningCas, running_cas
from netshield.casclient import CasClient, CasRefused, CasUnreachable
from netshield.identity import SpiffeId
from netshield.operator import admin_client
from netshield.pki.csr import build_csr
from netshield.pki.keys import generate_key, public_key_der
from netshield.policy import policy_hash
from netshield.tls.material import cas_client_context
from tests.pg_support import PgCluster
from tests.support import (
    FRONTEND_M,
    ORDERS_M,
    POLICY,
    SIGNER,
    TD,
    CasProcess,
    Domain,
    cas_subprocess,
    make_domain,
    netshield_cmd,
)

pytestmark = [pytest.mark.postgres]

DEADLINE = 30.0  # hang guard for anything that waits on another replica


@dataclasses.dataclass
class Shared:
    """A trust domain whose CAS state lives in one PostgreSQL schema."""

    domain: Domain
    cluster: PgCluster
    schema: str
    password_file: Path

    @property
    def url(self) -> str:
        return self.cluster.url() + f"?options=-csearch_path%3D{self.schema}"

    def counter(self, n: int) -> Path:
        return self.domain.root / f"counter-{n}" / "cas.counter"

    def options(self, n: int, **kw: object) -> CasOptions:
        return dataclasses.replace(
            self.domain.options(),
            counter_file=self.counter(n),
            adopt_counter=n > 1,
            database=self.url,
            database_password_file=self.password_file,
            **kw,  # type: ignore[arg-type]
        )

    def raw(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            self.cluster.url(),
            password=self.cluster.password,
            autocommit=True,
            options=f"-csearch_path={self.schema}",
        )


@pytest.fixture
def shared(tmp_path: Path, pg_cluster: PgCluster, pg_schema: str) -> Shared:
    password_file = tmp_path / "db-password"
    password_file.write_text(pg_cluster.password + "\n")
    password_file.chmod(0o600)
    return Shared(make_domain(tmp_path), pg_cluster, pg_schema, password_file)


@contextlib.contextmanager
def replica(shared: Shared, n: int, *extra: str, name: str = "") -> Iterator[CasProcess]:
    """Replica ``n`` as a `netshield cas serve` process; the first one creates the state."""
    args = ["--database", shared.url, "--database-password-file", str(shared.password_file)]
    if n > 1:
        args.append("--adopt-counter")  # a new replica: its own witness starts at the head
    with cas_subprocess(
        shared.domain, *args, *extra, counter=shared.counter(n), name=name or f"cas-{n}"
    ) as proc:
        yield proc


@contextlib.asynccontextmanager
async def in_process(shared: Shared, n: int, **kw: object) -> AsyncIterator[RunningCas]:
    async with running_cas(shared.options(n, **kw)) as cas:
        yield cas


def client(shared: Shared, *urls: str) -> CasClient:
    return CasClient(list(urls), ssl_context=cas_client_context(ca_pem=shared.domain.ca_pem))


def admin(shared: Shared, url: str) -> CasClient:
    return admin_client(url, shared.domain.admin)


def prepared(
    shared: Shared, nonce: bytes, measurement: str = ORDERS_M, service: str = "orders"
) -> dict[str, object]:
    """The body of one attestation of ``service`` on the good platform, bound to ``nonce``."""
    key = generate_key()
    quote = shared.domain.platforms["p-good"].quote(
        measurement=measurement,
        signer=SIGNER,
        product_id=7,
        svn=3,
        report_data=report_data_for(public_key_der(key.public_key()), nonce),
    )
    csr = build_csr(key, SpiffeId.for_service(TD, service))
    return {"service": service, "nonce": nonce, "quote": quote, "csr_pem": csr}


async def attest(cas: CasClient, body: dict[str, object]) -> str:
    """ "OK:<serial>" or the refusal's reason code."""
    try:
        creds = await cas.attest(**body)  # type: ignore[arg-type]
    except CasRefused as err:
        return err.code
    return f"OK:{creds.serial}"


def issued_serials(shared: Shared) -> set[str]:
    with shared.raw() as conn:
        return {str(r[0]) for r in conn.execute("SELECT serial FROM issued").fetchall()}


def audit_check(shared: Shared, url: str) -> subprocess.CompletedProcess[str]:
    """`netshield cas audit --verify` against a replica's API (the operator's check)."""
    return subprocess.run(
        netshield_cmd(
            "cas", "audit", "--verify", "--cas", url, "--admin", str(shared.domain.layout.admin_dir)
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )


def serve_once(
    shared: Shared, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`netshield cas serve` expected to refuse to start: its exit status and output."""
    return subprocess.run(
        netshield_cmd(
            "cas", "serve", "--policy", str(shared.domain.layout.policy),
            "--state", str(shared.domain.layout.cas_state), *args,
        ),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )  # fmt: skip


# --- nonces -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_nonce_is_consumed_once_when_replicas_race_for_it(shared: Shared) -> None:
    with replica(shared, 1) as r1, replica(shared, 2) as r2, replica(shared, 3) as r3:
        clients = [client(shared, r.url) for r in (r1, r2, r3)]
        async with clients[0] as c1, clients[1] as c2, clients[2] as c3:
            for _ in range(3):
                nonce = await c2.nonce()  # issued at replica 2, presented at all three at once
                body = prepared(shared, nonce)
                results = await asyncio.gather(*(attest(c, body) for c in (c1, c2, c3, c1, c3)))
                assert sorted(r.split(":")[0] for r in results) == ["NONCE_REUSED"] * 4 + ["OK"]
            # the twin: distinct nonces from any replica are each good once, at any replica
            bodies = [prepared(shared, await c.nonce()) for c in (c1, c2, c3)]
            results = await asyncio.gather(
                *(attest(c, b) for c, b in zip((c3, c1, c2), bodies, strict=True))
            )
            assert all(r.startswith("OK:") for r in results), results


# --- the feed across replicas -----------------------------------------------------------------


@pytest.mark.slow
async def test_revocations_and_policy_updates_at_one_replica_reach_another(shared: Shared) -> None:
    with replica(shared, 1) as r1, replica(shared, 2) as r2:
        async with client(shared, r2.url) as c2, admin(shared, r1.url) as a1:
            head = (await c2.feed(0))["next"]
            quiet = await c2.feed(head, wait=1)  # the twin: nothing happened, nothing arrives
            assert quiet["events"] == []

            # a long poll waiting at replica 2 wakes for a revocation made at replica 1
            waiting = asyncio.create_task(c2.feed(head, wait=60))
            await asyncio.sleep(0.5)
            await a1.revoke("platform", "p-old", "decommissioned")
            answer = await asyncio.wait_for(waiting, DEADLINE)
            assert [(e["type"], e["target"]) for e in answer["events"]] == [("revoke", "p-old")]

            # a policy version applied at replica 1 governs attestations at replica 2
            frontend_nonce = await c2.nonce()
            body = prepared(shared, frontend_nonce, measurement=FRONTEND_M)
            assert await attest(c2, body) == "MEASUREMENT_NOT_ALLOWED"  # the twin, before
            new_policy = POLICY.replace(
                f'measurements: ["{ORDERS_M}"]\n    signer',
                f'measurements: ["{ORDERS_M}", "{FRONTEND_M}"]\n    signer',
            )
            assert new_policy != POLICY
            await a1.apply_policy(new_policy, policy_hash(POLICY))
            async with asyncio.timeout(DEADLINE):
                while (await c2.ready())["policy"]["version"] != 2:
                    await asyncio.sleep(0.1)
            body = prepared(shared, await c2.nonce(), measurement=FRONTEND_M)
            assert (await attest(c2, body)).startswith("OK:")


# --- one audit chain under concurrent writers -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("chain_lock", ["advisory", "serializable"])
async def test_audit_chain_stays_one_chain_under_concurrent_writers(
    shared: Shared, chain_lock: str
) -> None:
    lock = ("--chain-lock", chain_lock)
    with replica(shared, 1, *lock) as r1, replica(shared, 2, *lock) as r2:
        async with (
            client(shared, r1.url) as c1,
            client(shared, r2.url) as c2,
            admin(shared, r1.url) as a1,
            admin(shared, r2.url) as a2,
        ):

            async def one(c: CasClient) -> str:
                return await attest(c, prepared(shared, await c.nonce()))

            work = [one(c) for c in (c1, c2) * 12]
            work += [a.revoke("platform", f"p-x{i}") for i, a in enumerate((a1, a2) * 3)]
            results = await asyncio.gather(*work)
            serials = [r.split(":")[1] for r in results[:24] if isinstance(r, str)]
            assert len(serials) == 24 and len(set(serials)) == 24  # none refused, none collide
            assert set(serials) <= issued_serials(shared)
            revocations = sorted(r["revocation"]["seq"] for r in results[24:])  # type: ignore[index]
            assert revocations == list(range(1, 7))
    with shared.raw() as conn:
        seqs = [int(r[0]) for r in conn.execute("SELECT seq FROM audit ORDER BY seq").fetchall()]
    assert seqs == list(range(1, len(seqs) + 1))
    with replica(shared, 1) as r1:  # replica 1 restarts on its witness: the state is trusted
        check = audit_check(shared, r1.url)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "audit log intact" in check.stdout


async def test_a_serial_taken_at_another_replica_is_never_issued_twice(shared: Shared) -> None:
    taken = iter([0x5EED, 0x5EED, 0x5EED + 1, 0x5EED + 2])  # both replicas draw 0x5EED first
    serials = lambda: next(taken)  # noqa: E731
    async with in_process(shared, 1) as cas1, in_process(shared, 2) as cas2:
        cas1.service._serials = serials
        cas2.service._serials = serials
        async with client(shared, cas1.url) as c1, client(shared, cas2.url) as c2:
            first = await attest(c1, prepared(shared, await c1.nonce()))
            second = await attest(c2, prepared(shared, await c2.nonce()))
    assert first == "OK:5eed"  # the twin: a free serial is used as drawn
    assert second == "OK:5eee"  # replica 2 found 5eed taken and signed again
    assert issued_serials(shared) == {"5eed", "5eee"}


# --- a replica dies, clients fail over --------------------------------------------------------


@pytest.mark.slow
async def test_killing_a_replica_mid_attestation_loses_nothing_a_client_was_told(
    shared: Shared,
) -> None:
    with replica(shared, 1) as r1, replica(shared, 2) as r2:
        async with client(shared, r1.url) as c1:
            done = [await attest(c1, prepared(shared, await c1.nonce())) for _ in range(3)]
            assert all(d.startswith("OK:") for d in done)
            bodies = [prepared(shared, await c1.nonce()) for _ in range(4)]
            with shared.raw() as blocker:
                # hold the audit table: replica 1's next attestations stop inside their
                # transaction, after the nonce and before the commit
                blocker.execute("BEGIN")
                blocker.execute("LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")
                in_flight = [asyncio.create_task(attest(c1, b)) for b in bodies]
                await asyncio.sleep(1.0)
                assert not any(t.done() for t in in_flight)
                r1.proc.send_signal(signal.SIGKILL)
                r1.proc.wait(timeout=DEADLINE)
                blocker.execute("ROLLBACK")
            outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(o, CasUnreachable) for o in outcomes), outcomes  # none told done
        recorded = issued_serials(shared)
        assert {d.split(":")[1] for d in done} <= recorded  # everything it was told is kept
        assert len(recorded) == 3  # and nothing half-done was kept

        # a client that lists both replicas fails over to replica 2, which trusts the state
        async with client(shared, r1.url, r2.url) as both:
            assert (await attest(both, prepared(shared, await both.nonce()))).startswith("OK:")
            assert both.base_url == r2.url
        check = audit_check(shared, r2.url)
        assert check.returncode == 0, check.stdout + check.stderr


async def test_a_client_with_no_replica_left_names_every_url(shared: Shared) -> None:
    dead = [f"https://127.0.0.1:{p}" for p in (1, 2)]
    async with client(shared, *dead) as c:
        with pytest.raises(CasUnreachable) as info:
            await c.nonce()
    assert "no CAS replica answered" in str(info.value)
    assert all(url in str(info.value) for url in dead)


# --- rollback ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_database_restored_from_an_older_dump_is_refused_and_stops_a_replica(
    shared: Shared, tmp_path: Path
) -> None:
    dump = tmp_path / "old.sql"
    with replica(shared, 1) as r1:
        shared.cluster.tool("pg_dump", "-d", "postgres", "-n", shared.schema, "-f", str(dump))
        async with admin(shared, r1.url) as a1:
            await a1.revoke("platform", "p-old", "after the dump")
        # the adversary restores the older dump while the replica runs
        shared.cluster.psql(f'DROP SCHEMA "{shared.schema}" CASCADE')
        shared.cluster.tool("psql", "-X", "-q", "-d", "postgres", "-f", str(dump))
        r1.proc.wait(timeout=DEADLINE)
        assert r1.proc.returncode != 0
    stderr = (shared.domain.root / "cas-1.stderr").read_text()
    assert "rolled back or replaced while the CAS ran" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr

    # and it does not start again on the old copy
    with pytest.raises(AssertionError) as info:
        with replica(shared, 1, name="cas-1-again"):
            pass
    assert "rolled back to an older copy" in str(info.value)
    # the twin: a replica whose witness never saw the newer state adopts the restored head
    with replica(shared, 2) as r2:
        assert r2.ready["database"] == (
            f"postgresql://netshield@127.0.0.1:{shared.cluster.port}/postgres "
            f"(options -csearch_path={shared.schema})"
        )


# --- the password -----------------------------------------------------------------------------


def test_a_database_url_with_a_password_is_refused_on_the_command_line(shared: Shared) -> None:
    secret_url = shared.url.replace("netshield@", f"netshield:{shared.cluster.password}@")
    proc = serve_once(shared, "--database", secret_url)
    assert proc.returncode != 0
    assert "--database-password-file" in proc.stderr
    assert shared.cluster.password not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_password_comes_from_a_file_or_the_environment_and_is_never_shown(
    shared: Shared,
) -> None:
    password = shared.cluster.password
    with replica(shared, 1) as r1:
        cmdline = Path(f"/proc/{r1.proc.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline
        assert password not in json.dumps(r1.ready)
    # from the environment (libpq's PGPASSWORD), URL from NETSHIELD_DATABASE
    env = {"PGPASSWORD": password, "NETSHIELD_DATABASE": shared.url}
    with cas_subprocess(
        shared.domain, "--adopt-counter", counter=shared.counter(2), name="cas-2", env=env
    ) as r2:
        assert password.encode() not in Path(f"/proc/{r2.proc.pid}/cmdline").read_bytes()
        assert r2.ready["database"].startswith("postgresql://netshield@")  # type: ignore[union-attr]
    logs = "".join((shared.domain.root / f"cas-{n}.stderr").read_text() for n in (1, 2))
    assert password not in logs
    # the twin: a wrong password is one clear line naming the database, not the password
    wrong = shared.domain.root / "wrong-password"
    wrong.write_text("not-the-password\n")
    proc = serve_once(
        shared,
        "--database",
        shared.url,
        "--database-password-file",
        str(wrong),
        env={k: v for k, v in os.environ.items() if k != "PGPASSWORD"},
    )
    assert proc.returncode != 0
    assert "password authentication failed" in proc.stderr
    assert f"127.0.0.1:{shared.cluster.port}/postgres" in proc.stderr
    assert "not-the-password" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
