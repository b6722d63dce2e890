"""netshield's side-by-side benchmark: the sidecar pair against HAProxy, stunnel and direct TCP.

    bench/run            short mode (< 3 minutes): 3 interleaved rounds of 1 s per run
    bench/run --full     full mode: 7 rounds of 4 s per run; the report goes to bench/REPORT.md

Topology, pinning and set-ups: topologies.py. Workloads, figures and targets: workloads.py.
Every run goes through the same C load generator and backend (nsload.c, built here with gcc).
Rounds are interleaved (each round runs every workload through every set-up, the set-up order
rotating from round to round), so that a busy machine slows all set-ups alike; the report gives
the median of each figure and the median of the per-round ratios netshield / HAProxy and
netshield / stunnel, and PASS/FAIL beside each target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import BenchError, Proc, cpu_delta, json_ready, pinned, start
from topologies import Env, Topology, make_topology, netshield_command
from workloads import (
    HOLD_CONNS,
    HOLD_RSS_MB,
    IDLE_RSS_MB,
    TARGETS,
    WORKLOADS,
    Sample,
    Target,
    Workload,
)

BENCH = Path(__file__).resolve().parent
MODES = {"short": (3, 1.0), "full": (7, 4.0)}
HOLD_SETUPS = {"short": ("netshield", "haproxy"), "full": ("netshield", "haproxy", "stunnel")}
"""The set-ups whose memory for `--hold` idle connections each mode measures."""


@dataclass
class Results:
    """Samples by (workload, set-up), one per round, plus memory figures."""

    rounds: int
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=lambda: defaultdict(list))
    idle_rss: dict[str, dict[str, float]] = field(default_factory=dict)
    hold_rss: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def figure(self, workload: str, setup: str, key: str) -> list[float | None]:
        figure = next(f for f in _workload(workload).figures if f.key == key)
        return [figure.get(s) for s in self.samples.get((workload, setup), [])]

    def ratios(self, target: Target) -> list[float]:
        ours = self.figure(*target.ours, target.figure)
        theirs = self.figure(*target.theirs, target.figure)
        return [a / b for a, b in zip(ours, theirs, strict=False) if a and b]


def _workload(key: str) -> Workload:
    return next(w for w in WORKLOADS if w.key == key)


def median(values: list[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return statistics.median(real) if real else None


# --- set-up ---------------------------------------------------------------------------------


def build_nsload(workdir: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BenchError("gcc is needed to build the load generator (apt-get install gcc)")
    exe = workdir / "nsload"
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(exe), str(BENCH / "nsload.c")], check=True)
    return exe


def cores() -> tuple[int | None, int | None]:
    """Core A (load generator + outbound proxy) and core B (inbound proxy + backend)."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]


def machine(env: Env, setups: list[Topology]) -> dict[str, str]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    openssl = subprocess.run(
        ["openssl", "version"], capture_output=True, text=True, check=False
    ).stdout
    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.node()}: {model}, {os.cpu_count()} cores, "
        f"{int(mem) // 1024 // 1024} GiB, Linux {platform.release()}",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "OpenSSL": f"{openssl.strip()} (Python's ssl: {ssl.OPENSSL_VERSION})",
        "Python": platform.python_version(),
        "pinning": f"core A = {env.core_a} (load generator, outbound proxy), "
        f"core B = {env.core_b} (inbound proxy, backend, CAS)",
    }
    for setup in setups:
        version = setup.version()
        if version:
            info.setdefault(setup.name, version)
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except ImportError:
        pass
    return info


def start_setups(env: Env, labels: list[str]) -> dict[str, Topology]:
    """Start every set-up named in `labels`, side by side (what they share, the CAS and the C
    proxies' certificates, first): start-up waits on other processes (imports, attestation)."""
    setups = {label: make_topology(label) for label in dict.fromkeys(labels)}
    print(f"starting {', '.join(setups)} ...", file=sys.stderr, flush=True)
    names = {s.name for s in setups.values()}
    if "netshield" in names:
        env.mesh()
    if names & {"haproxy", "stunnel"}:
        env.pki()
    with ThreadPoolExecutor(max_workers=len(setups)) as pool:
        futures = {label: pool.submit(setup.start, env) for label, setup in setups.items()}
        failed = [label for label, f in futures.items() if f.exception() is not None]
    if failed:
        for setup in setups.values():
            setup.stop()
        error = futures[failed[0]].exception()
        raise error if isinstance(error, BenchError) else BenchError(f"{failed[0]}: {error}")
    return setups


# --- runs -------------------------------------------------------------------------------------


def run_once(
    nsload: Path, env: Env, backend: Proc, setup: Topology, workload: Workload, seconds: float
) -> Sample:
    procs = setup.processes()
    before = {side: p.cpu_seconds() for side, p in procs.items()}
    before["backend"] = backend.cpu_seconds()
    out = subprocess.run(
        [str(nsload), *workload.args(setup.entry, seconds)],
        capture_output=True,
        text=True,
        preexec_fn=pinned(env.core_a),
        timeout=seconds + 120,
        check=False,
    )
    after = {side: p.cpu_seconds() for side, p in procs.items()}
    after["backend"] = backend.cpu_seconds()
    if out.returncode != 0 or not out.stdout.strip():
        raise BenchError(f"nsload {workload.key} via {setup.label} failed: {out.stderr.strip()}")
    result = json.loads(out.stdout)
    cpu = {side: cpu_delta(before[side], after[side]) for side in after}
    cpu["load"] = float(result.get("cpu_s", 0.0))
    return Sample(result, cpu, float(result["seconds"]))


def hold(nsload: Path, env: Env, setup: Topology, conns: int) -> dict[str, float]:
    """Extra RSS (MB) of each proxy process while `conns` idle connections go through it."""
    procs = setup.processes()
    before = {side: p.rss_mb() for side, p in procs.items()}
    holder = subprocess.Popen(
        [str(nsload), "hold", "127.0.0.1", str(setup.entry), str(conns)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pinned(env.core_a),  # noqa: PLW1509
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        result = json.loads(line) if line.strip() else {"held": 0, "errors": conns}
        time.sleep(0.5)
        extra = {side: p.rss_mb() - before[side] for side, p in procs.items()}
        extra["held"] = float(result["held"])
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(60)
    time.sleep(0.5)  # let the proxies close the connections before the next set-up
    return extra


def warm_up(nsload: Path, env: Env, backend: Proc, setup: Topology) -> None:
    for workload in (WORKLOADS[2], WORKLOADS[5]):
        run_once(nsload, env, backend, setup, workload, 0.3)


def measure(
    args: argparse.Namespace,
    env: Env,
    nsload: Path,
    backend: Proc,
    setups: dict[str, Topology],
    workloads: list[Workload],
) -> Results:
    results = Results(rounds=args.rounds)
    for label, setup in setups.items():
        results.idle_rss[label] = {s: p.rss_mb() for s, p in setup.processes().items()}
        # Held right after start-up, so "more" is measured from the idle figure, not from a
        # heap the workloads grew. The short mode holds through the two of the target only.
        if setup.name in HOLD_SETUPS[args.mode] and not setup.resume:
            results.hold_rss[label] = hold(nsload, env, setup, args.hold)
        warm_up(nsload, env, backend, setup)
    total = args.rounds * sum(len(w.setups) for w in workloads)
    done = 0
    started = time.monotonic()
    for rnd in range(args.rounds):
        for workload in workloads:
            order = list(workload.setups)
            shift = rnd % len(order)
            order = order[shift:] + order[:shift]
            for label in order:
                sample = run_once(nsload, env, backend, setups[label], workload, args.seconds)
                if sample.result.get("errors"):
                    results.errors.append(
                        f"round {rnd + 1} {workload.key} via {label}: "
                        f"{sample.result['errors']} failed requests"
                    )
                results.samples[(workload.key, label)].append(sample)
                done += 1
            elapsed = time.monotonic() - started
            print(
                f"\r  round {rnd + 1}/{args.rounds}: {done}/{total} runs, {elapsed:.0f} s",
                end="",
                file=sys.stderr,
                flush=True,
            )
    print(file=sys.stderr)
    return results


# --- report -----------------------------------------------------------------------------------


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def ratio_text(values: list[float]) -> str:
    med = median(values)  # type: ignore[arg-type]
    if med is None:
        return "–"
    spread = f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""
    return f"{med:.2f}×{spread}"


def report(
    info: dict[str, str],
    results: Results,
    args: argparse.Namespace,
    workloads: list[Workload],
    setups: dict[str, Topology],
) -> tuple[str, bool]:
    lines = [f"# netshield benchmark ({args.mode} mode)", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += [
        f"- rounds: {results.rounds} interleaved, {args.seconds:g} s per run; figures are "
        "medians over rounds, ratios are medians of per-round ratios (range in brackets)",
        "- command: `bench/run" + (" --full" if args.mode == "full" else "") + "`",
        "",
        "## Targets (netshield / the reference each row names, HAProxy unless said, same run)",
        "",
        "| target | netshield | reference | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    all_pass = True
    for target in TARGETS:
        if (target.ours[0], target.ours[1]) not in results.samples or (
            target.theirs[0],
            target.theirs[1],
        ) not in results.samples:
            continue
        ratios = results.ratios(target)
        figure = next(f for f in _workload(target.ours[0]).figures if f.key == target.figure)
        med = median(ratios)  # type: ignore[arg-type]
        ok = med is not None and target.passes(med)
        all_pass &= ok
        lines.append(
            f"| {target.label} | {fmt(median(results.figure(*target.ours, target.figure)), figure.unit)}"
            f" | {fmt(median(results.figure(*target.theirs, target.figure)), figure.unit)}"
            f" | {ratio_text(ratios)} | {target.text} | {'PASS' if ok else 'FAIL'} |"
        )
    for label, sides in results.idle_rss.items():
        if label == "netshield":
            worst = max(sides.values())
            ok = worst <= IDLE_RSS_MB
            all_pass &= ok
            lines.append(
                f"| sidecar RSS idle (largest of the two) | {fmt(worst, 'MB')} | "
                f"{fmt(max(results.idle_rss.get('haproxy', {'-': 0}).values()), 'MB')} | | "
                f"≤ {IDLE_RSS_MB:g} MB | {'PASS' if ok else 'FAIL'} |"
            )
    hold_ns = results.hold_rss.get("netshield")
    if hold_ns:
        worst = max(v for k, v in hold_ns.items() if k != "held")
        ok = worst <= HOLD_RSS_MB and hold_ns["held"] == args.hold
        all_pass &= ok
        theirs = results.hold_rss.get("haproxy", {})
        lines.append(
            f"| sidecar RSS for {args.hold:,} more idle connections | +{fmt(worst, 'MB')} | "
            f"+{fmt(max((v for k, v in theirs.items() if k != 'held'), default=None), 'MB')} | | "
            f"≤ +{HOLD_RSS_MB:g} MB | {'PASS' if ok else 'FAIL'} |"
        )
    lines += ["", "## All figures", ""]
    for workload in workloads:
        lines += [f"### {workload.key}: {workload.title}", ""]
        labels = list(workload.setups)
        ours = next((x for x in labels if x.startswith("netshield")), None)
        refs = [x for x in labels if x not in (ours, "direct")]
        head = (
            "| figure | "
            + " | ".join(labels)
            + " | "
            + " | ".join(f"netshield / {r}" for r in refs)
            + " |"
        )
        lines += [head, "|" + "---|" * (1 + len(labels) + len(refs))]
        for figure in workload.figures:
            row = [figure.label]
            row += [
                fmt(median(results.figure(workload.key, x, figure.key)), figure.unit)
                for x in labels
            ]
            for ref in refs:
                a = results.figure(workload.key, ours, figure.key) if ours else []
                b = results.figure(workload.key, ref, figure.key)
                row.append(ratio_text([x / y for x, y in zip(a, b, strict=False) if x and y]))
            lines.append("| " + " | ".join(row) + " |")
        shares = []
        for x in labels:
            samples = results.samples.get((workload.key, x), [])
            if samples:
                load = median([s.share("load") for s in samples])
                back = median([s.share("backend") for s in samples])
                shares.append(f"{x} {fmt((load or 0) * 100)} % / {fmt((back or 0) * 100)} %")
        lines += ["", "Load generator / backend CPU share of their core: " + ", ".join(shares), ""]
    lines += [
        "## Memory (RSS, MB)",
        "",
        "| set-up | outbound idle | inbound idle | "
        f"outbound +{args.hold:,} conns | inbound +{args.hold:,} conns |",
        "|---|---|---|---|---|",
    ]
    for label, sides in results.idle_rss.items():
        held = results.hold_rss.get(label, {})
        lines.append(
            f"| {label} | {fmt(sides.get('outbound'))} | {fmt(sides.get('inbound'))} | "
            f"{fmt(held.get('outbound'))} | {fmt(held.get('inbound'))} |"
        )
    lines += ["", "## Set-ups", ""]
    lines += [f"- `{label}`: {setup.description}" for label, setup in setups.items()]
    if results.errors:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in results.errors]
    lines += ["", f"Overall: {'all targets PASS' if all_pass else 'some targets FAIL'}.", ""]
    return "\n".join(lines), all_pass


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_const", const="full", dest="mode", default="short")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (short 3, full 7)")
    parser.add_argument("--seconds", type=float, help="seconds per run (short 1, full 4)")
    parser.add_argument("--only", help="comma-separated workload keys (default: all)")
    parser.add_argument("--setups", help="comma-separated set-ups (default: each workload's)")
    parser.add_argument("--hold", type=int, default=HOLD_CONNS, help="idle connections for RSS")
    parser.add_argument("--report", type=Path, help="write the report here (full: bench/REPORT.md)")
    parser.add_argument("--json", type=Path, help="write the raw samples here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    rounds, seconds = MODES[args.mode]
    args.rounds = args.rounds or rounds
    args.seconds = args.seconds or seconds
    if args.report is None and args.mode == "full":
        args.report = BENCH / "REPORT.md"
    workloads = [w for w in WORKLOADS if not args.only or w.key in args.only.split(",")]
    if args.setups:
        chosen = args.setups.split(",")
        workloads = [
            replace(w, setups=tuple(x for x in w.setups if x in chosen)) for w in workloads
        ]
        workloads = [w for w in workloads if w.setups]
    if not workloads:
        print(f"--only: no such workload (known: {', '.join(w.key for w in WORKLOADS)})")
        return 2
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="netshield-bench-"))
    core_a, core_b = cores()
    setups: dict[str, Topology] = {}
    env: Env | None = None
    backend: Proc | None = None
    try:
        nsload = build_nsload(workdir)
        backend = start(
            "backend", [str(nsload), "serve"], workdir=workdir, core=core_b, ready=json_ready(None)
        )
        env = Env(workdir, core_a, core_b, int(backend.ready["port"]), netshield_command())
        setups.update(start_setups(env, [x for w in workloads for x in w.setups]))
        print(f"  set-ups ready after {time.monotonic() - began:.0f} s", file=sys.stderr)
        info = machine(env, list(setups.values()))
        results = measure(args, env, nsload, backend, setups, workloads)
        print(f"  measured after {time.monotonic() - began:.0f} s", file=sys.stderr)
        info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        info["duration"] = f"{time.monotonic() - began:.0f} s"
        for label, setup in setups.items():
            for side, proc in setup.processes().items():
                if not proc.alive():
                    results.errors.append(f"{label} {side} exited during the run: see {proc.log}")
        text, _ok = report(info, results, args, workloads, setups)
        print(text)
        if args.report:
            args.report.write_text(text)
            print(f"report written to {args.report}", file=sys.stderr)
        if args.json:
            raw = {f"{w}|{s}": [vars(x) for x in v] for (w, s), v in results.samples.items()}
            args.json.write_text(json.dumps({"machine": info, "samples": raw}, indent=1))
        return 1 if results.errors else 0
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    finally:
        for setup in setups.values():
            setup.stop()
        if env is not None:
            env.stop()
        if backend is not None:
            backend.stop()
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
