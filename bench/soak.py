"""The soak: a mesh under mixed traffic, renewals, a revocation and injected faults, for a bounded
time; then the books are checked.

    bench/soak                     # the full form: 4 minutes
    bench/soak --seconds 40        # the short form CI runs (tests/test_soak.py)
    bench/soak --json soak.json

The mesh: a CAS, the orders sidecar in front of an echo service, frontend and intruder sidecars
calling it (both allowed callers until intruder is revoked). Certificates live 2 minutes and
are renewed at half their lifetime (every minute; in a short run they live 1 minute and renew
every ~15 s). Traffic: `--workers` threads through frontend and one through intruder, each
connection new (churn), of 1 KiB to 1 MiB, a fifth of them slow (sent in pieces with pauses),
every stream checksummed (SHA-256 of what came back against what was sent).

Faults, at fixed fractions of the run: a flood of 2,000 stalled connections from four hosts
(20 %), a SIGHUP of the orders sidecar (35 %), the CAS killed with SIGKILL and restarted (50 %),
intruder revoked (65 %), a flood of handshakes with a rogue certificate (80 %).

The books (each a failure if it does not hold): no byte lost or corrupted on any stream that
completed, and every stream that did not complete was refused visibly (no silent truncation);
at least 99 % of frontend's requests succeed; exactly one record per connection frontend's
listener accepted, with the bytes the client sent; both sides agree on every authorized
connection; no two records share a connection id; after intruder's revocation none of its
connections is allowed; file descriptors and memory of the sidecars do not grow after warm-up
(the last quarter of the samples against the first half: a trend, not a timing). It prints a
summary table: connections, bytes, renewals, faults injected, errors by reason, RSS and fds at
start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from netshield.record import rfc3339  # noqa: E402
from tests.attack_support import (  # noqa: E402
    Attacker,
    Forge,
    attacker_hosts,
    fds_of,
    raise_own_fd_limit,
    rss_of,
)
from tests.mesh_support import EchoServer, Mesh, Proc, http_get, make_mesh  # noqa: E402

SIZES = (1024, 16 * 1024, 256 * 1024, 1024 * 1024)
REVOCATION_GRACE = timedelta(seconds=5)  # the sidecars learn a revocation over the CAS feed


@dataclass
class Stream:
    """One connection of a worker: what it sent, and how it ended."""

    via: str  # "frontend" or "intruder"
    connected: bool
    sent: int
    ok: bool  # every byte came back, checksum equal
    corrupted: bool  # bytes came back but not the ones sent
    truncated: bool  # fewer bytes than sent, yet a clean end (the failure a checksum catches)
    started: float


def one_stream(addr: tuple[str, int], via: str, rng: random.Random) -> Stream:
    size = rng.choice(SIZES)
    slow = rng.random() < 0.2
    payload = rng.randbytes(size)
    started = time.monotonic()
    try:
        sock = socket.create_connection(addr, timeout=30)
    except OSError:
        return Stream(via, False, 0, False, False, False, started)
    digest, got = hashlib.sha256(), 0
    clean = True
    with sock:

        def send() -> None:
            with contextlib.suppress(OSError):
                step = max(1, size // 8) if slow else size
                for i in range(0, size, step):
                    sock.sendall(payload[i : i + step])
                    if slow:
                        time.sleep(0.05)
                sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            while chunk := sock.recv(65536):
                digest.update(chunk)
                got += len(chunk)
        except OSError:
            clean = False  # a reset: the failure is visible
        sender.join()
    ok = got == size and digest.digest() == hashlib.sha256(payload).digest()
    corrupted = got == size and not ok
    truncated = clean and 0 < got < size
    return Stream(via, True, size, ok, corrupted, truncated, started)


class Workers:
    def __init__(self, targets: list[tuple[str, tuple[str, int]]], seed: int) -> None:
        self.streams: list[Stream] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(via, addr, seed + i), daemon=True)
            for i, (via, addr) in enumerate(targets)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _run(self, via: str, addr: tuple[str, int], seed: int) -> None:
        rng = random.Random(seed)  # noqa: S311 - reproducible traffic, not secrets
        while not self._stop.is_set():
            stream = one_stream(addr, via, rng)
            with self._lock:
                self.streams.append(stream)
            if not stream.connected:
                time.sleep(0.1)


@dataclass
class Samples:
    """fds and RSS of the sidecars, once a second, from a thread of its own (floods included)."""

    procs: dict[str, int]
    fds: dict[str, list[int]] = field(default_factory=dict)
    rss: dict[str, list[int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def take(self) -> None:
        for name, pid in self.procs.items():
            with contextlib.suppress(OSError):
                self.fds.setdefault(name, []).append(fds_of(pid))
                self.rss.setdefault(name, []).append(rss_of(pid))

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(1.0):
                self.take()

        self.take()
        threading.Thread(target=run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.take()


def no_growth(series: list[int], slack: float) -> bool:
    """No trend after warm-up: the median of the last quarter of the samples is within `slack` of
    the median of the second quarter (medians: a flood's spike is not a trend)."""
    if len(series) < 8:
        return True
    quarter = len(series) // 4
    second, last = sorted(series[quarter : 2 * quarter]), sorted(series[-quarter:])
    return last[len(last) // 2] <= second[len(second) // 2] + slack


@dataclass
class Result:
    seconds: float
    streams: list[Stream]
    records: dict[str, list[dict[str, Any]]]
    faults: list[str]
    renewals: dict[str, float]
    samples: Samples
    revoked_at: str
    problems: list[str] = field(default_factory=list)

    def legit(self) -> list[Stream]:
        return [s for s in self.streams if s.via == "frontend"]

    def check(self) -> list[str]:
        problems: list[str] = []
        corrupted = [s for s in self.streams if s.corrupted or s.truncated]
        if corrupted:
            problems.append(f"{len(corrupted)} streams lost or corrupted bytes silently")
        legit = self.legit()
        ok = sum(s.ok for s in legit)
        if not legit or ok / len(legit) < 0.99:
            problems.append(f"frontend: only {ok} of {len(legit)} requests succeeded")
        front = [r for r in self.records["frontend"] if r["direction"] == "outbound"]
        connected = sum(1 for s in legit if s.connected)
        recorded = sum(int(r.get("count", 1)) for r in front)
        if recorded != connected:
            problems.append(
                f"frontend: records for {recorded} connections, {connected} made (one each)"
            )
        sent_ok = sum(s.sent for s in legit if s.ok)
        bytes_ok = sum(r["bytes_in"] for r in front if r["close_reason"] == "CLOSED")
        if bytes_ok < sent_ok:
            problems.append(f"frontend records count {bytes_ok} bytes, the clients sent {sent_ok}")
        for side in ("frontend", "orders", "intruder"):
            ids = [r["conn_id"] for r in self.records[side]]
            if len(ids) != len(set(ids)):
                problems.append(f"{side}: a connection id appears in two records")
        authorized_front = sum(
            1 for r in front if r["decision"] == "allow" and r.get("peer_identity")
        )
        authorized_orders = sum(
            1
            for r in self.records["orders"]
            if r["direction"] == "inbound"
            and r["decision"] == "allow"
            and str(r.get("peer_identity", "")).endswith("/svc/frontend")
        )
        if authorized_front != authorized_orders:
            problems.append(
                f"frontend recorded {authorized_front} authorized connections, orders "
                f"{authorized_orders}"
            )
        late = [
            r
            for r in self.records["orders"]
            if str(r.get("peer_identity", "")).endswith("/svc/intruder")
            and r["decision"] == "allow"
            and r["ts"] > self.revoked_at  # the revocation plus the feed's few seconds
            and r.get("close_reason") != "PEER_REVOKED"
        ]
        if late:
            problems.append(f"{len(late)} connections of revoked intruder were let in")
        for name in self.samples.procs:
            if not no_growth(self.samples.fds.get(name, []), slack=24):
                problems.append(f"{name}: file descriptors grew ({self.samples.fds[name]})")
            if not no_growth(self.samples.rss.get(name, []), slack=32 * 2**20):
                problems.append(f"{name}: memory grew")
        return problems

    def table(self) -> str:
        legit = self.legit()
        rows = [
            ("duration", f"{self.seconds:.0f} s"),
            (
                "connections (frontend / intruder)",
                f"{len(legit)} / {len(self.streams) - len(legit)}",
            ),
            ("succeeded, checksummed (frontend)", f"{sum(s.ok for s in legit)}"),
            ("bytes relayed and verified", f"{sum(s.sent for s in self.streams if s.ok):,}"),
            (
                "lost or corrupted bytes",
                f"{sum(s.sent for s in self.streams if s.corrupted or s.truncated)}",
            ),
            ("renewals", ", ".join(f"{k} {v:.0f}" for k, v in self.renewals.items())),
            ("faults injected", str(len(self.faults))),
        ]
        errors: Counter[str] = Counter()
        for side in ("frontend", "intruder"):
            for r in self.records[side]:
                if r["decision"] == "deny":
                    errors[f"{side} deny {r['reason']}"] += int(r.get("count", 1))
                elif r.get("close_reason") not in (None, "CLOSED"):
                    errors[f"{side} close {r['close_reason']}"] += 1
        for r in self.records["orders"]:
            if r["decision"] == "deny":
                errors[f"orders deny {r['reason']}"] += int(r.get("count", 1))
        for name in self.samples.procs:
            fds, rss = self.samples.fds.get(name, [0]), self.samples.rss.get(name, [0])
            rows.append(
                (
                    f"{name}: RSS, fds (start -> end, peak)",
                    f"{rss[0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} MiB ({max(rss) / 2**20:.0f}), "
                    f"{fds[0]} -> {fds[-1]} ({max(fds)})",
                )
            )
        width = max(len(k) for k, _ in rows) + 2
        out = ["soak summary", *(f"  {k:<{width}}{v}" for k, v in rows)]
        out.append("  faults: " + "; ".join(self.faults))
        out.append("  errors by reason:")
        out += [f"    {k:<48}{v:>8}" for k, v in sorted(errors.items())] or ["    none"]
        out.append("  books: " + ("balanced" if not self.problems else "; ".join(self.problems)))
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        legit = self.legit()
        return {
            "seconds": self.seconds,
            "connections": len(self.streams),
            "frontend_requests": len(legit),
            "frontend_ok": sum(s.ok for s in legit),
            "bytes_verified": sum(s.sent for s in self.streams if s.ok),
            "bytes_lost": sum(s.sent for s in self.streams if s.corrupted or s.truncated),
            "renewals": self.renewals,
            "faults": self.faults,
            "fds": {k: [v[0], v[-1], max(v)] for k, v in self.samples.fds.items()},
            "rss_mib": {
                k: [v[0] >> 20, v[-1] >> 20, max(v) >> 20] for k, v in self.samples.rss.items()
            },
            "problems": self.problems,
        }


def metric(proc: Proc, name: str) -> float:
    host, port = proc.addr("admin")
    _, body = http_get(f"http://{host}:{port}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in str(body).splitlines() if line.startswith(name)
    )


def records_settled(mesh: Mesh, timeout: float = 30) -> dict[str, list[dict[str, Any]]]:
    """The three sidecars' records once no new line arrived for three seconds."""
    deadline, last, still = time.monotonic() + timeout, None, 0
    while time.monotonic() < deadline:
        now = {s: len(mesh.records(s)) for s in ("frontend", "orders", "intruder")}
        still = still + 1 if now == last else 0
        if still >= 6:
            break
        last = now
        time.sleep(0.5)
    return {s: mesh.records(s) for s in ("frontend", "orders", "intruder")}


def run_soak(root: Path, seconds: float, workers: int = 3, seed: int = 7) -> Result:
    raise_own_fd_limit()
    short = seconds < 120
    lifetime, fraction = ("1m", 0.25) if short else ("2m", 0.5)
    mesh = make_mesh(
        root,
        lifetime=lifetime,
        overrides={"orders": {"allowed_callers": ["frontend", "intruder"]}},
    )
    echo = EchoServer()
    faults: list[str] = []
    mesh.start_cas()
    try:
        renewal = {"fraction": fraction, "jitter": 0.05}
        orders = mesh.start_sidecar(
            "orders",
            inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"},
            records={"file": str(root / "orders.records.jsonl"), "aggregate_denials": "1s"},
            renewal=renewal,
        )
        address = "{}:{}".format(*orders.addr("inbound"))
        callers = {
            name: mesh.start_sidecar(
                name,
                outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": address}],
                records={
                    "file": str(root / f"{name}.records.jsonl"),
                    "aggregate_denials": "1s",
                },
                renewal=renewal,
            )
            for name in ("frontend", "intruder")
        }
        sidecars = {"orders": orders, **callers}
        samples = Samples({n: p.popen.pid for n, p in sidecars.items()})
        targets = [("frontend", callers["frontend"].addr("outbound:orders"))] * workers
        targets.append(("intruder", callers["intruder"].addr("outbound:orders")))
        traffic = Workers(targets, seed)
        forge = Forge(mesh)
        schedule = [
            (0.20, "2,000 stalled connections from 4 hosts, 4 s", lambda: stalled(orders)),
            (0.35, "SIGHUP of the orders sidecar", lambda: orders.popen.send_signal(signal.SIGHUP)),
            (0.50, "CAS killed (SIGKILL) and restarted 2 s later", lambda: kill_cas(mesh)),
            (0.65, "intruder revoked", lambda: mesh.cas_admin("revoke", "--service", "intruder")),
            (0.80, "200 handshakes with a rogue certificate", lambda: rogue(orders, forge)),
        ]
        revoked_at = "9999"
        t0 = time.monotonic()
        samples.start()
        traffic.start()
        for at, name, inject in schedule:
            while time.monotonic() - t0 < at * seconds:
                time.sleep(0.2)
            if name.startswith("intruder revoked"):
                revoked_at = rfc3339(datetime.now(UTC) + REVOCATION_GRACE)
            inject()
            faults.append(name)
        while time.monotonic() - t0 < seconds:
            time.sleep(0.2)
        traffic.stop()
        elapsed = time.monotonic() - t0
        samples.stop()
        renewals = {n: metric(p, "netshield_renewals_total") for n, p in sidecars.items()}
        result = Result(
            elapsed,
            traffic.streams,
            records_settled(mesh),
            faults,
            renewals,
            samples,
            revoked_at,
        )
        result.problems = result.check()
        return result
    finally:
        mesh.stop_all()
        echo.shutdown()
        echo.server_close()


def stalled(orders: Proc) -> None:
    Attacker(
        "idle",
        orders.addr("inbound"),
        "--count",
        "2000",
        "--reopen",
        "--seconds",
        "4",
        source=attacker_hosts(4),
    ).wait()


def rogue(orders: Proc, forge: Forge) -> None:
    cred, _ = forge.leaf("soak-rogue", rogue=True)
    args = ["--count", "200", "--threads", "4", "--cert", str(cred.cert), "--key", str(cred.key)]
    Attacker("handshake", orders.addr("inbound"), *args, source=attacker_hosts(1)).wait()


def kill_cas(mesh: Mesh) -> None:
    assert mesh.cas is not None
    mesh.cas.popen.send_signal(signal.SIGKILL)
    mesh.cas.popen.wait(timeout=10)
    time.sleep(2.0)
    mesh.restart_cas(name=f"cas-{time.monotonic_ns()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="netshield-soak-") as tmp:
        result = run_soak(Path(tmp), args.seconds, args.workers, args.seed)
    print(result.table())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
