"""The in-process shield beside the sidecar pair: the same Python client and server programs,
three ways.

    .venv/bin/python bench/shield_bench.py [--rounds 3] [--seconds 3] [--json FILE]

| set-up | what runs |
|---|---|
| `direct` | the client program talks to the server program: what Python and loopback cost |
| `sidecars` | client -> `netshield sidecar` (outbound) -> mTLS -> `netshield sidecar` (inbound) -> server |
| `in-process` | both programs under `netshield run`: mTLS from the client's own socket to the server's |

Workloads (the client program, blocking sockets, one connection unless said): `pp-1` 64-byte
request and echo, repeated (requests/s, p50/p99 µs, CPU µs per request of all processes);
`bulk-1` upload for the whole duration (MB/s, CPU seconds per GB); `conn-1` a new connection per
64-byte request and echo (connections/s, CPU µs per connection). The client side (client and,
for sidecars, the outbound sidecar) is pinned to one core, the server side to the other, as in
bench/run. Rounds are interleaved (each round runs every workload through every set-up, the
order rotating); the table gives medians over rounds and the median ratio in-process / sidecars.
All programs are Python; a Python program is what the in-process shield is for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TD = "bench.netshield.test"
ENTRY = "python3 app.py"

SERVER = r"""
import os, socket, threading, json
def serve(port, handler):
    srv = socket.create_server(("127.0.0.1", port))
    def loop():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()[1]
def echo(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
def sink(conn):
    total = 0
    with conn:
        while data := conn.recv(262144):
            total += len(data)
        conn.sendall(str(total).encode())
ports = json.loads(os.environ["BENCH_PORTS"])
serve(ports["echo"], echo); serve(ports["sink"], sink)
print(json.dumps({"event": "app-ready"}), flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import os, socket, time, json
mode, seconds = os.environ["BENCH_MODE"], float(os.environ["BENCH_SECONDS"])
host, port = "127.0.0.1", int(os.environ["BENCH_PORT"])
msg = b"x" * 64
lat = []; count = 0; nbytes = 0
cpu0, t0 = time.process_time(), time.monotonic()
end = t0 + seconds
if mode == "pp":
    s = socket.create_connection((host, port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (now := time.monotonic()) < end:
        s.sendall(msg); got = 0
        while got < 64: got += len(s.recv(65536))
        lat.append(time.monotonic() - now); count += 1
    s.close()
elif mode == "conn":
    while (now := time.monotonic()) < end:
        with socket.create_connection((host, port)) as s:
            s.sendall(msg); got = 0
            while got < 64: got += len(s.recv(65536))
        lat.append(time.monotonic() - now); count += 1
else:
    s = socket.create_connection((host, port)); block = b"y" * 65536
    while time.monotonic() < end:
        s.sendall(block); nbytes += len(block)
    s.shutdown(socket.SHUT_WR); total = int(s.recv(64) or 0); s.close(); count = 1
    assert total == nbytes, (total, nbytes)
elapsed = time.monotonic() - t0
lat.sort()
print(json.dumps({"count": count, "bytes": nbytes, "seconds": elapsed,
                  "cpu": time.process_time() - cpu0,
                  "p50": lat[len(lat) // 2] * 1e6 if lat else None,
                  "p99": lat[int(len(lat) * 0.99)] * 1e6 if lat else None}), flush=True)
"""

WORKLOADS = {"pp-1": ("pp", "echo"), "bulk-1": ("bulk", "sink"), "conn-1": ("conn", "echo")}
SETUPS = ("direct", "sidecars", "in-process")


def netshield() -> list[str]:
    venv = ROOT / ".venv" / "bin" / "netshield"
    return [str(venv)] if venv.exists() else [sys.executable, "-m", "netshield"]


def python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cores() -> tuple[int | None, int | None]:
    available = sorted(os.sched_getaffinity(0))
    return (available[0], available[1]) if len(available) >= 2 else (None, None)


class Proc:
    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: Path,
        core: int | None,
        ready: str,
        log: Path,
    ) -> None:
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,  # noqa: PLW1509
        )
        assert self.popen.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                raise RuntimeError(f"{argv} exited: {log.read_text()[-2000:]}")
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == ready:
                self.ready = doc
                return
        raise RuntimeError(f"{argv} not ready: {log.read_text()[-2000:]}")

    def cpu(self) -> float:
        """CPU seconds of the process so far (all threads)."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()


class World:
    """A trust domain, a CAS, the two programs as measured workloads, and each set-up's
    long-running processes (servers, sidecars)."""

    def __init__(self, root: Path) -> None:
        from netshield.attestation.measurement import measure
        from netshield.attestation.platform import create_platform, save_platform
        from netshield.pki.ca import load_ca
        from netshield.trustdomain import Layout, create_trust_domain

        self.root = root
        self.core_a, self.core_b = cores()
        now = datetime.now(UTC)
        layout = Layout(root / "td")
        create_trust_domain(layout.root, trust_domain=TD, admin_name="operator", now=now)
        vendor = load_ca(
            layout.vendor_dir / "vendor-root.pem", layout.vendor_dir / "vendor-root.key"
        )
        save_platform(
            create_platform(vendor, platform_id="p1", tcb_level=5, debug=False, now=now),
            root / "platforms" / "p1",
        )
        measurements = {}
        for svc, program in (("frontend", CLIENT), ("orders", SERVER)):
            wl = root / "workloads" / svc
            wl.mkdir(parents=True)
            (wl / "app.py").write_text(program)
            measurements[svc] = measure(wl, ENTRY.split())
        self.ports = {s: {"echo": free_port(), "sink": free_port()} for s in SETUPS}
        inbound = {"echo": free_port(), "sink": free_port()}
        self.sidecar_inbound = inbound
        addresses = [f"127.0.0.1:{p}" for p in self.ports["in-process"].values()]
        addresses += [f"127.0.0.1:{p}" for p in inbound.values()]
        policy = {
            "trust_domain": TD,
            "certificates": {"lifetime": "1h", "min_epoch": 1},
            "platforms": {"min_tcb": 1},
            "services": {
                "frontend": {"measurements": [measurements["frontend"]]},
                "orders": {
                    "measurements": [measurements["orders"]],
                    "allowed_callers": ["frontend"],
                    "addresses": addresses,
                },
            },
        }
        layout.policy.write_text(yaml.safe_dump(policy, sort_keys=False))
        self.layout = layout
        self.procs: dict[str, list[Proc]] = {s: [] for s in SETUPS}
        self.cas = Proc(
            [
                *netshield(),
                "cas",
                "serve",
                "--policy",
                str(layout.policy),
                "--state",
                str(layout.cas_state),
                "--listen",
                "127.0.0.1:0",
                "--counter",
                str(root / "cas.counter"),
            ],
            env={},
            cwd=root,
            core=self.core_b,
            ready="ready",
            log=root / "cas.log",
        )
        self.entries: dict[tuple[str, str], int] = {}
        self._start_setups()

    def _common(self, service: str, name: str) -> dict[str, Any]:
        return {
            "service": service,
            "cas": {"url": self.cas.ready["url"], "ca": str(self.layout.cas_state / "mesh-ca.pem")},
            "platform": {"in_process": str(self.root / "platforms" / "p1")},
            "records": {"file": str(self.root / f"{name}.records.jsonl")},
        }

    def config(self, name: str, doc: dict[str, Any]) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def _server(self, setup: str, argv: list[str]) -> None:
        self.procs[setup].append(
            Proc(
                argv,
                env={"BENCH_PORTS": json.dumps(self.ports[setup])},
                cwd=self.root / "workloads" / "orders",
                core=self.core_b,
                ready="app-ready",
                log=self.root / f"server-{setup}.log",
            )
        )

    def _start_setups(self) -> None:
        self._server("direct", [python(), "app.py"])
        for kind, port in self.ports["direct"].items():
            self.entries[("direct", kind)] = port
        # sidecars: plain server behind an inbound sidecar per port, outbound sidecar per port
        self._server("sidecars", [python(), "app.py"])
        for kind, port in self.ports["sidecars"].items():
            inbound = self.config(
                f"inbound-{kind}",
                {
                    **self._common("orders", f"sidecar-in-{kind}"),
                    "workload": {"path": str(self.root / "workloads" / "orders"), "cmd": ENTRY},
                    "admin": {"listen": "127.0.0.1:0"},
                    "inbound": {
                        "listen": f"127.0.0.1:{self.sidecar_inbound[kind]}",
                        "upstream": f"127.0.0.1:{port}",
                    },
                    "tls": {"resumption": False},
                },
            )
            outbound_port = free_port()
            outbound = self.config(
                f"outbound-{kind}",
                {
                    **self._common("frontend", f"sidecar-out-{kind}"),
                    "workload": {"path": str(self.root / "workloads" / "frontend"), "cmd": ENTRY},
                    "admin": {"listen": "127.0.0.1:0"},
                    "outbound": [
                        {
                            "service": "orders",
                            "listen": f"127.0.0.1:{outbound_port}",
                            "address": f"127.0.0.1:{self.sidecar_inbound[kind]}",
                        }
                    ],
                    "tls": {"resumption": False},
                },
            )
            for path, core, name in ((inbound, self.core_b, "in"), (outbound, self.core_a, "out")):
                self.procs["sidecars"].append(
                    Proc(
                        [*netshield(), "sidecar", "--config", str(path)],
                        env={},
                        cwd=self.root,
                        core=core,
                        ready="ready",
                        log=self.root / f"sidecar-{name}-{kind}.log",
                    )
                )
            self.entries[("sidecars", kind)] = outbound_port
        server_cfg = self.config("shield-orders", self._common("orders", "shield-orders"))
        self._server(
            "in-process", [*netshield(), "run", "--config", str(server_cfg), "--", *ENTRY.split()]
        )
        for kind, port in self.ports["in-process"].items():
            self.entries[("in-process", kind)] = port
        self.client_cfg = self.config(
            "shield-frontend", self._common("frontend", "shield-frontend")
        )

    def run_client(self, setup: str, mode: str, kind: str, seconds: float) -> dict[str, Any]:
        argv = [python(), "app.py"]
        if setup == "in-process":
            argv = [*netshield(), "run", "--config", str(self.client_cfg), "--", *ENTRY.split()]
        servers = self.procs[setup]
        before = sum(p.cpu() for p in servers)
        done = subprocess.run(
            argv,
            cwd=self.root / "workloads" / "frontend",
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "BENCH_MODE": mode,
                "BENCH_SECONDS": str(seconds),
                "BENCH_PORT": str(self.entries[(setup, kind)]),
            },
            preexec_fn=(lambda: os.sched_setaffinity(0, {self.core_a}))
            if self.core_a is not None
            else None,
            check=False,
            timeout=seconds + 60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{setup} {mode}: {done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        result["server_cpu"] = sum(p.cpu() for p in servers) - before
        return result

    def stop(self) -> None:
        for procs in self.procs.values():
            for proc in procs:
                proc.stop()
        self.cas.stop()


def figures(workload: str, r: dict[str, Any]) -> dict[str, float]:
    cpu = r["cpu"] + r["server_cpu"]
    if workload == "bulk-1":
        mb = r["bytes"] / 1e6
        return {"MB/s": mb / r["seconds"], "CPU s/GB": cpu / (mb / 1000)}
    rate = r["count"] / r["seconds"]
    unit = "req/s" if workload == "pp-1" else "conn/s"
    return {unit: rate, "p50 µs": r["p50"], "p99 µs": r["p99"], "CPU µs/op": cpu / r["count"] * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", help="write the raw samples here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="netshield-shield-bench-"))
    world = World(root)
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for rnd in range(args.rounds):
            order = SETUPS[rnd % 3 :] + SETUPS[: rnd % 3]
            for workload, (mode, kind) in WORKLOADS.items():
                for setup in order:
                    result = world.run_client(setup, mode, kind, args.seconds)
                    samples.setdefault((workload, setup), []).append(figures(workload, result))
    finally:
        world.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"# in-process shield vs sidecar pair ({args.rounds} rounds of {args.seconds:g} s, "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d})\n"
    )
    print("| workload | figure | direct | sidecars | in-process | in-process / sidecars |")
    print("|---|---|---|---|---|---|")
    for workload in WORKLOADS:
        names = list(samples[(workload, "direct")][0])
        for name in names:
            med = {s: statistics.median(x[name] for x in samples[(workload, s)]) for s in SETUPS}
            ratios = [
                i[name] / s[name]
                for i, s in zip(
                    samples[(workload, "in-process")], samples[(workload, "sidecars")], strict=True
                )
            ]
            print(
                f"| {workload} | {name} | {med['direct']:,.1f} | {med['sidecars']:,.1f} | "
                f"{med['in-process']:,.1f} | {statistics.median(ratios):.2f}× |"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({f"{w}/{s}": v for (w, s), v in samples.items()}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
