"""The CAS benchmark: attestations per second and latency with SQLite, PostgreSQL and one replica,
and PostgreSQL with two replicas, in one run; and the two ways replicas serialize the audit chain.

    bench/cas                      # 3 rounds of 5 s per set-up (about 3 minutes)
    bench/cas --rounds 5 --seconds 10 --clients 32 --json out.json

What one attestation is here: what a sidecar does at every renewal, over real TLS to a real
`netshield cas serve` process: POST /v1/nonce, a quote over the nonce and a fresh CSR key from
the simulated platform, POST /v1/attest; the CAS verifies the quote, appraises it against the
policy, signs the certificate and commits it with its audit entry (and, with PostgreSQL, takes
the chain lock). Latency is that whole exchange as the client sees it. `--clients` sidecars
attest back to back; with two replicas half of them talk to each (as behind a Service).

The PostgreSQL cluster is a throwaway one (Debian's postgresql, initdb into a temporary
directory, fsync on: durable commits, like production); SQLite runs with synchronous=FULL as
always. Set-ups run in interleaved rounds, their order rotating, and the report gives medians.

The last table is the audit chain under concurrent writers: two stores (two replicas' worth of
connection pools) with 8 threads each append entries as fast as they can, once with the
advisory lock and once with SERIALIZABLE transactions and retries.

Finally the report says what a mesh of 1,000 sidecars needs: each renews at half its
certificate's lifetime (10 minutes by default, so every 5 minutes); the figure asked for is the
rate when every sidecar renews every 2 minutes, and the time a cold start of all 1,000 at once
takes at the measured rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from netshield.attestation.quote import report_data_for  # noqa: E402
from netshield.cas.counter import MonotonicCounter  # noqa: E402
from netshield.cas.store import CasStore  # noqa: E402
from netshield.casclient import CasClient, CasRefused  # noqa: E402
from netshield.errors import StateError  # noqa: E402
from netshield.identity import SpiffeId  # noqa: E402
from netshield.pki.csr import build_csr  # noqa: E402
from netshield.pki.keys import generate_key, public_key_der  # noqa: E402
from netshield.tls.material import cas_client_context  # noqa: E402
from tests.pg_support import PgCluster, find_bindir  # noqa: E402
from tests.support import (  # noqa: E402
    ORDERS_M,
    SIGNER,
    TD,
    CasProcess,
    Domain,
    cas_subprocess,
    make_domain,
)

MESH = 1000
RENEW_EVERY_S = 120.0  # the rate asked for: every sidecar renews every 2 minutes
DEFAULT_RENEW_S = 300.0  # what the defaults give: half of a 10-minute certificate


@dataclass
class Sample:
    setup: str
    round: int
    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    cas_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    def pct(self, p: float) -> float:
        data = sorted(self.latencies_ms)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(p / 100 * len(data)))]


def cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cas(domain: Domain, name: str, *extra: str, counter: Path) -> Iterator[CasProcess]:
    """One `netshield cas serve` process (the tests' helper), its log in <root>/<name>.stderr."""
    with cas_subprocess(domain, *extra, counter=counter, name=name, timeout=60) as proc:
        yield proc


class Load:
    """``clients`` sidecars attesting back to back against the given replicas."""

    def __init__(self, domain: Domain, urls: list[str], clients: int) -> None:
        self.domain = domain
        self.urls = urls
        self.clients = clients
        self.csrs = []
        for _ in range(clients * 4):  # keys and CSRs made up front: the CAS is measured
            key = generate_key()
            csr = build_csr(key, SpiffeId.for_service(TD, "orders"))
            self.csrs.append((public_key_der(key.public_key()), csr))

    async def run(self, seconds: float) -> tuple[int, int, list[float]]:
        ctx = cas_client_context(ca_pem=self.domain.ca_pem)
        platform = self.domain.platforms["p-good"]
        ok = errors = 0
        latencies: list[float] = []
        stop = time.monotonic() + seconds

        async def sidecar(i: int) -> None:
            nonlocal ok, errors
            async with CasClient(self.urls[i % len(self.urls)], ssl_context=ctx) as c:
                n = i
                while time.monotonic() < stop:
                    key_der, csr = self.csrs[n % len(self.csrs)]
                    n += self.clients
                    start = time.perf_counter()
                    try:
                        nonce = await c.nonce()
                        quote = platform.quote(
                            measurement=ORDERS_M,
                            signer=SIGNER,
                            product_id=7,
                            svn=3,
                            report_data=report_data_for(key_der, nonce),
                        )
                        await c.attest(service="orders", nonce=nonce, quote=quote, csr_pem=csr)
                    except CasRefused:
                        errors += 1
                        continue
                    ok += 1
                    latencies.append((time.perf_counter() - start) * 1000)

        await asyncio.gather(*(sidecar(i) for i in range(self.clients)))
        return ok, errors, latencies


def measure(
    setup: str, rnd: int, domain: Domain, replicas: list[CasProcess], clients: int, seconds: float
) -> Sample:
    load = Load(domain, [r.url for r in replicas], clients)
    asyncio.run(load.run(1.0))  # warm up: connections, prepared statements
    before = sum(cpu_s(r.proc.pid) for r in replicas)
    t0 = time.monotonic()
    ok, errors, lat = asyncio.run(load.run(seconds))
    elapsed = time.monotonic() - t0
    used = sum(cpu_s(r.proc.pid) for r in replicas) - before
    return Sample(setup, rnd, ok, errors, elapsed, lat, used)


@contextlib.contextmanager
def setup_replicas(
    name: str, domain: Domain, cluster: PgCluster | None, pwfile: Path
) -> Iterator[list[CasProcess]]:
    """The CAS processes of one set-up, on a fresh state."""
    root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=domain.root))
    if cluster is None:  # a new state directory; the CA material stays where init put it
        state = root / "state"
        state.mkdir(mode=0o700)
        keys = ("--state", str(state), "--keys", str(domain.layout.cas_state))
        with cas(domain, name, *keys, counter=root / "counter") as r:
            yield [r]
        return
    schema = "b_" + root.name.replace("-", "_")
    cluster.psql(f'CREATE SCHEMA "{schema}"')
    url = cluster.url() + f"?options=-csearch_path%3D{schema}"
    lock = ["--chain-lock", "serializable"] if "serializable" in name else []
    db = ["--database", url, "--database-password-file", str(pwfile), *lock]
    count = 2 if "2" in name else 1
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(cas(domain, f"{name}-1", *db, counter=root / "c1"))]
        for n in range(2, count + 1):
            replicas.append(
                stack.enter_context(
                    cas(domain, f"{name}-{n}", *db, "--adopt-counter", counter=root / f"c{n}")
                )
            )
        yield replicas


@dataclass
class ChainSample:
    rate: float  # entries appended per second
    entries: int
    retries: int  # transactions run again after a conflict
    failed: int  # appends that gave up (the retry limit)
    problems: int  # what verify_audit found afterwards (must be 0)


def chain_appends(cluster: PgCluster, lock: str, seconds: float) -> ChainSample:
    """Two stores x 8 threads appending audit entries as fast as they can."""
    schema = f"chain_{lock}_{os.getpid()}"
    cluster.psql(f'CREATE SCHEMA "{schema}"')
    url = cluster.url() + f"?options=-csearch_path%3D{schema}"
    root = Path(tempfile.mkdtemp(prefix="chain-"))
    now = datetime.now(UTC)
    stores = [
        CasStore.open(
            root,
            database=url,
            password=cluster.password,
            chain_lock=lock,  # type: ignore[arg-type]
            counter=MonotonicCounter(root / f"c{i}"),
            adopt_counter=i > 0,
            now=now,
        )
        for i in range(2)
    ]
    count = failed = 0
    guard = threading.Lock()
    stop = time.monotonic() + seconds

    def writer(store: CasStore) -> None:
        nonlocal count, failed
        while time.monotonic() < stop:
            try:
                store.audit("bench.append", {"t": threading.get_ident()}, now=now)
            except StateError:
                with guard:
                    failed += 1
                continue
            with guard:
                count += 1

    threads = [threading.Thread(target=writer, args=(s,)) for s in stores for _ in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    problems = stores[0].verify_audit()
    retries = sum(getattr(s.backend, "retries", 0) for s in stores)
    for s in stores:
        s.close()
    cluster.psql(f'DROP SCHEMA "{schema}" CASCADE')
    return ChainSample(count / elapsed, count, retries, failed, len(problems))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--json", help="write the raw samples here")
    args = parser.parse_args()
    bindir, why = find_bindir()
    if bindir is None:
        print(f"bench/cas: {why}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="netshield-cas-bench-"))
    os.environ["XDG_STATE_HOME"] = str(work / "xdg")
    domain = make_domain(work)
    cluster = PgCluster.start(durable=True)
    pwfile = work / "db-password"
    pwfile.write_text(cluster.password + "\n")
    pwfile.chmod(0o600)
    setups = ["sqlite", "postgresql-1", "postgresql-2", "postgresql-2-serializable"]
    samples: list[Sample] = []
    chain: dict[str, list[ChainSample]] = {"advisory": [], "serializable": []}
    try:
        for rnd in range(args.rounds):
            order = setups[rnd % len(setups) :] + setups[: rnd % len(setups)]
            for name in order:
                with setup_replicas(
                    name, domain, None if name == "sqlite" else cluster, pwfile
                ) as replicas:
                    s = measure(name, rnd, domain, replicas, args.clients, args.seconds)
                samples.append(s)
                print(
                    f"round {rnd + 1} {name:26} {s.rate:7.1f}/s  p50 {s.pct(50):6.1f} ms  "
                    f"p99 {s.pct(99):6.1f} ms  errors {s.errors}",
                    file=sys.stderr,
                )
            for lock in (
                ("advisory", "serializable") if rnd % 2 == 0 else ("serializable", "advisory")
            ):
                sample = chain_appends(cluster, lock, min(args.seconds, 5.0))
                if sample.problems:
                    raise SystemExit(f"the audit chain broke under {lock}: {sample.problems}")
                chain[lock].append(sample)
    finally:
        cluster.stop()
    print(report(samples, chain, args))
    if args.json:
        Path(args.json).write_text(json.dumps([s.__dict__ for s in samples]))
    return 0


def report(
    samples: list[Sample], chain: dict[str, list[ChainSample]], args: argparse.Namespace
) -> str:
    lines = [
        f"CAS benchmark: {args.clients} sidecars attesting back to back, {args.rounds} rounds of "
        f"{args.seconds:g} s, {os.cpu_count()} cores, medians over rounds",
        "",
        "| set-up | attestations/s | p50 ms | p99 ms | CAS CPU ms per attestation | refused |",
        "|---|---|---|---|---|---|",
    ]
    rates: dict[str, float] = {}
    for name in dict.fromkeys(s.setup for s in samples):
        mine = [s for s in samples if s.setup == name]
        rate = statistics.median(s.rate for s in mine)
        rates[name] = rate
        p50 = statistics.median(s.pct(50) for s in mine)
        p99 = statistics.median(s.pct(99) for s in mine)
        cpu = statistics.median(1000 * s.cas_cpu_s / max(s.ok, 1) for s in mine)
        refused = sum(s.errors for s in mine)
        lines.append(f"| {name} | {rate:.1f} | {p50:.1f} | {p99:.1f} | {cpu:.2f} | {refused} |")
    lines += [
        "",
        "| audit chain, 2 writers x 8 threads | entries/s | retried transactions per entry "
        "| appends that gave up (30 tries) | chain intact |",
        "|---|---|---|---|---|",
        *(
            f"| {lock} | {statistics.median(c.rate for c in v):.0f} | "
            f"{sum(c.retries for c in v) / max(1, sum(c.entries for c in v)):.2f} | "
            f"{sum(c.failed for c in v)} | yes |"
            for lock, v in chain.items()
            if v
        ),
        "",
    ]
    need = MESH / RENEW_EVERY_S
    slowest = min(rates.values())
    lines += [
        f"A mesh of {MESH} sidecars renewing every {RENEW_EVERY_S / 60:g} minutes needs "
        f"{need:.1f} attestations/s ({MESH / DEFAULT_RENEW_S:.1f}/s with the default 10-minute "
        f"certificates renewed at half-life); the slowest set-up here does {slowest:.1f}/s, "
        f"{slowest / need:.0f}x that: {'MET' if slowest >= need else 'NOT MET'}. A cold start of "
        f"all {MESH} at once takes {MESH / slowest:.0f} s at that rate.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
