"""WAF route benchmark: a netshield WAF route (ModSecurity v3 + OWASP CRS, keep-alive) side by
side with nginx + libnginx-mod-http-modsecurity running the very same rule text (netshield
writes it: `netshield.waf.crs.crs_config`), and with the same netshield route with the WAF off.

    bench/waf                      # 5 interleaved rounds of 5 s per workload and set-up
    bench/waf --rounds 9 --seconds 10

Topology: wrk (the load generator, keep-alive, 16 connections) and the backend (nginx
answering 200 "ok") share core B; the proxy under test runs alone on core A (the sidecar with
its WAF threads, or nginx with one worker). Workloads: a small GET, and a 4 KiB form POST.
Figures per set-up: requests/s, CPU µs per request of the proxy (all its threads, from /proc),
and requests/s per core of proxy CPU. Rounds are interleaved and the set-up order rotates, so
a busy machine slows every set-up alike; the report gives medians and the median of the
per-round ratios netshield / nginx+ModSecurity. Target: ≥ 1.0× its requests/s per core.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import BenchError, Proc, cpu_delta, free_port, start
from topologies import Env, Mesh

ROOT = Path(__file__).resolve().parent.parent
NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_http_modsecurity_module.so")
HEADERS = ["Host: shop.example", "User-Agent: Mozilla/5.0 (bench)", "Accept: */*"]
FORM = "comment=" + "this+is+a+perfectly+ordinary+comment+about+the+product " * 64
FORM = FORM[:4096]
POST_LUA = (
    'wrk.method = "POST"\n'
    f'wrk.body = "{FORM}"\n'
    'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
)
WORKLOADS = {"get": "GET /products/42?color=red", "post-4k": "POST /comments (4 KiB form)"}
SETUPS = ("netshield-waf", "nginx-modsec", "netshield-nowaf")


def cores() -> tuple[int | None, int | None]:
    mine = sorted(os.sched_getaffinity(0))
    return (mine[0], mine[1]) if len(mine) >= 2 else (None, None)


def _cpu_of(pid: int) -> tuple[float, float]:
    """(utime + stime, scheduler runtime) in seconds of one process, all its threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return ticks, ns / 1e9


def tree_cpu(pid: int) -> tuple[float, float]:
    """CPU of a process and its children (nginx: the master and its worker)."""
    total = [0.0, 0.0]
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            ticks, precise = _cpu_of(current)
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total[0] += ticks
        total[1] += precise
        todo += [int(c) for c in children]
    return total[0], total[1]


def nginx_conf(workdir: Path, name: str, port: int, body: str) -> Path:
    prefix = workdir / name
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    module = f"load_module {NGINX_MODULE};\n" if "modsecurity" in body else ""
    conf.write_text(
        f"""{module}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_requests 1000000;
  client_body_buffer_size 64k;
  server {{
    listen 127.0.0.1:{port};
{body}
  }}
}}
"""
    )
    return conf


@dataclass
class Setup:
    name: str
    port: int
    proc: Proc


@dataclass
class Bench:
    workdir: Path
    core_a: int | None
    core_b: int | None
    netshield: list[str]
    procs: list[Proc] = field(default_factory=list)
    mesh: Mesh | None = None

    def start_backend(self) -> tuple[int, int]:
        port, second = free_port(), free_port()
        body = f'    listen 127.0.0.1:{second};\n    location / {{ return 200 "ok\\n"; }}'
        conf = nginx_conf(self.workdir, "backend", port, body)
        proc = start(
            "backend",
            ["nginx", "-c", str(conf), "-p", str(conf.parent)],
            workdir=self.workdir,
            core=self.core_b,
            port=port,
        )
        self.procs.append(proc)
        return port, second

    def start_nginx_modsec(self, backend: int, rules: Path) -> Setup:
        port = free_port()
        body = f"""    modsecurity on;
    modsecurity_rules_file {rules};
    modsecurity_transaction_id "$request_id";
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 32;"""
        conf = nginx_conf(self.workdir, "nginx-modsec", port, body)
        proc = start(
            "nginx-modsec",
            ["nginx", "-c", str(conf), "-p", str(conf.parent)],
            workdir=self.workdir,
            core=self.core_a,
            port=port,
        )
        self.procs.append(proc)
        return Setup("nginx-modsec", port, proc)

    def start_mesh(self, backend: tuple[int, int]) -> None:
        """The CAS of bench/topologies.py, with two native services on the backend's ports."""
        env = Env(self.workdir, self.core_a, self.core_b, backend[0], self.netshield)
        natives = {
            "shop": {"address": f"127.0.0.1:{backend[0]}", "waf": True},
            "shopraw": {"address": f"127.0.0.1:{backend[1]}", "waf": True},
        }
        self.mesh = Mesh.create(env, native_services=natives)

    def start_sidecar(self, name: str, service: str, waf: dict[str, Any]) -> Setup:
        proc = self.mesh.sidecar(
            name,
            "frontend",
            self.core_a,
            outbound=[{"service": service, "listen": "127.0.0.1:0"}],
            waf=waf,
        )
        port = int(str(proc.ready["listen"][f"outbound:{service}"]).rsplit(":", 1)[1])
        return Setup(name, port, proc)

    def stop(self) -> None:
        if self.mesh is not None:
            self.mesh.stop()
        for proc in reversed(self.procs):
            proc.stop()


_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def run_wrk(
    port: int, workload: str, seconds: float, core: int | None, lua: Path
) -> tuple[float, int]:
    cmd = ["wrk", "-t1", "-c16", f"-d{seconds:g}s", "--timeout", "10s"]
    for header in HEADERS:
        cmd += ["-H", header]
    if workload == "post-4k":
        cmd += ["-s", str(lua)]
    path = "/comments" if workload == "post-4k" else "/products/42?color=red"
    cmd.append(f"http://127.0.0.1:{port}{path}")
    pre = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pre, check=True).stdout
    rps = _RPS.search(out)
    bad = _NON2XX.search(out)
    if rps is None:
        raise BenchError(f"wrk printed no rate:\n{out}")
    return float(rps.group(1)), int(bad.group(1)) if bad else 0


def measure_one(
    setup: Setup, workload: str, seconds: float, core: int | None, lua: Path
) -> dict[str, float]:
    before = tree_cpu(setup.proc.pid)
    t0 = time.monotonic()
    rps, bad = run_wrk(setup.port, workload, seconds, core, lua)
    wall = time.monotonic() - t0
    cpu = cpu_delta(before, tree_cpu(setup.proc.pid))
    requests = rps * seconds
    return {
        "rps": rps,
        "cpu_us": cpu / requests * 1e6 if requests else float("nan"),
        "rps_per_core": requests / cpu if cpu else float("nan"),
        "cpu_share": cpu / wall,
        "non2xx": bad,
    }


def gil_figure(seconds: float = 3.0) -> str:
    """Inspections/s of the engine alone with 1 and 2 threads (a 64 KiB form)."""
    from netshield.waf import Exchange, HttpRequest, WafSettings, load_engine

    engine = load_engine(WafSettings(engine="crs"))
    body = ("comment=" + "lorem+ipsum+dolor+sit+amet+" * 2400).encode()
    request = HttpRequest(
        "POST",
        "/c",
        "1.1",
        (
            ("Host", "a"),
            ("User-Agent", "b"),
            ("Accept", "*/*"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", str(len(body))),
        ),
        body,
    )
    rates = {}
    for threads in (1, 2):
        done = [0] * threads
        stop = time.monotonic() + seconds

        def work(i: int, done: list[int], stop: float) -> None:
            while time.monotonic() < stop:
                engine.inspect_request(request, Exchange())
                done[i] += 1

        pool = [threading.Thread(target=work, args=(i, done, stop)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        rates[threads] = sum(done) / seconds
    engine.close()
    return (
        f"engine alone, a {len(body) // 1024} KiB form: {rates[1]:.1f} inspections/s on one "
        f"thread, {rates[2]:.1f} on two ({rates[2] / rates[1]:.2f}x; near 2x on an idle 2-core "
        "machine means ModSecurity runs without the GIL)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (bench/waf installs it when run as root)")
    if not NGINX_MODULE.exists():
        raise BenchError("libnginx-mod-http-modsecurity is not installed")
    sys.path.insert(0, str(ROOT))
    from netshield.waf.crs import crs_config, crs_rules_dir
    from netshield.waf.settings import WafSettings

    workdir = Path(tempfile.mkdtemp(prefix="netshield-wafbench-"))
    core_a, core_b = cores()
    venv = ROOT / ".venv" / "bin" / "netshield"
    bench = Bench(
        workdir,
        core_a,
        core_b,
        [str(venv)] if venv.exists() else [sys.executable, "-m", "netshield"],
    )
    settings = WafSettings(engine="crs", paranoia=1)
    rules = workdir / "modsecurity-crs.conf"
    rules.write_text(crs_config(settings, crs_rules_dir(settings.rules)))
    lua = workdir / "post.lua"
    lua.write_text(POST_LUA)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    ratios: dict[str, list[float]] = {w: [] for w in WORKLOADS}
    try:
        backend = bench.start_backend()
        bench.start_mesh(backend)
        setups = {
            "netshield-waf": bench.start_sidecar(
                "netshield-waf", "shop", {"engine": "crs", "paranoia": 1}
            ),
            "netshield-nowaf": bench.start_sidecar(
                "netshield-nowaf", "shopraw", {"routes": {"shopraw": {"mode": "off"}}}
            ),
            "nginx-modsec": bench.start_nginx_modsec(backend[0], rules),
        }
        for r in range(args.rounds):
            order = SETUPS[r % len(SETUPS) :] + SETUPS[: r % len(SETUPS)]
            per_round: dict[tuple[str, str], dict[str, float]] = {}
            for workload in WORKLOADS:
                for name in order:
                    sample = measure_one(setups[name], workload, args.seconds, core_b, lua)
                    results.setdefault((name, workload), []).append(sample)
                    per_round[(name, workload)] = sample
                ratios[workload].append(
                    per_round[("netshield-waf", workload)]["rps_per_core"]
                    / per_round[("nginx-modsec", workload)]["rps_per_core"]
                )
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(results, ratios, args, core_a, core_b))
    print(gil_figure())
    return 0


def report(
    results: dict[tuple[str, str], list[dict[str, float]]],
    ratios: dict[str, list[float]],
    args: argparse.Namespace,
    core_a: int | None,
    core_b: int | None,
) -> str:
    import ssl

    lines = [
        f"WAF route benchmark: {args.rounds} interleaved rounds x {args.seconds:g} s per workload "
        f"and set-up; wrk -t1 -c16 keep-alive; proxy on core {core_a}, wrk + backend on core {core_b}",
        f"{os.uname().sysname} {os.uname().release}, {os.cpu_count()} cores, {ssl.OPENSSL_VERSION}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; same CRS 3.3.4 rule text, paranoia 1, for both WAFs",
        "",
        "| workload | set-up | req/s | CPU µs/req | req/s per core | non-2xx |",
        "|---|---|---|---|---|---|",
    ]
    for workload, title in WORKLOADS.items():
        for name in SETUPS:
            samples = results.get((name, workload), [])
            if not samples:
                continue
            med = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
            lines.append(
                f"| {title} | {name} | {med['rps']:,.0f} | {med['cpu_us']:,.0f} | "
                f"{med['rps_per_core']:,.0f} | {int(med['non2xx'])} |"
            )
    lines.append("")
    for workload, title in WORKLOADS.items():
        values = ratios[workload]
        if values:
            verdict = "PASS" if statistics.median(values) >= 1.0 else "FAIL"
            lines.append(
                f"{title}: netshield / nginx+ModSecurity requests/s per core = "
                f"{statistics.median(values):.2f}x (rounds {min(values):.2f}-{max(values):.2f}; "
                f"target >= 1.0x) {verdict}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as err:
        print(f"bench/waf: {err}", file=sys.stderr)
        sys.exit(2)
