"""`netshield demo`: the shield on one machine, no Docker, narrated step by step.

It makes a throwaway trust domain in a temporary directory, starts the CAS as a real process,
and plays what the trust plane guarantees: a good workload gets a certificate; a tampered one,
one on an out-of-date platform, and a replayed quote are refused with their reason codes; an
operator revokes an instance and the revocation feed announces it. Each step prints what was
expected and what was observed; the exit code is 0 only if every step behaved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from netshield.agent.attest import Workload, attest
from netshield.attestation.measurement import measure
from netshield.attestation.platform import Platform, create_platform
from netshield.attestation.quote import report_data_for
from netshield.casclient import CasClient, CasRefused
from netshield.identity import SpiffeId
from netshield.operator import admin_client, audit_online
from netshield.pki.ca import load_ca
from netshield.pki.csr import build_csr
from netshield.pki.keys import generate_key, public_key_der
from netshield.tls.material import cas_client_context
from netshield.trustdomain import Layout, create_trust_domain, load_admin

TRUST_DOMAIN = "demo.netshield.local"
APP_CODE = b'import socket\nprint("orders service: pretend to serve orders")\n'
ENTRY = ["python3", "app.py"]
READY_TIMEOUT = 30.0

DEMO_POLICY = """\
# netshield demo policy (made by `netshield demo`)
trust_domain: {td}
certificates:
  lifetime: 10m
  min_epoch: 1
platforms:
  min_tcb: 5
  allow_debug: false
services:
  orders:
    measurements: ["{orders}"]
    allowed_callers: [frontend]
  frontend:
    measurements: ["{frontend}"]
"""


@dataclass
class Narrator:
    out: IO[str]
    color: bool
    results: list[bool] = field(default_factory=list)

    def _mark(self, ok: bool) -> str:
        mark = "[ok]  " if ok else "[FAIL]"
        if not self.color:
            return mark
        return f"\x1b[{32 if ok else 31}m{mark}\x1b[0m"

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str, expected: str, observed: str, ok: bool) -> None:
        """One line per step: what happened, what was expected, what was observed."""
        self.results.append(ok)
        n = len(self.results)
        self.say(f"{self._mark(ok)} {n:>2}. {title}: expected {expected}; observed {observed}")

    @property
    def all_ok(self) -> bool:
        return all(self.results) and bool(self.results)


async def expect_refusal(
    n: Narrator, title: str, expected: str, action: Callable[[], Awaitable[Any]]
) -> None:
    """A step whose right outcome is the CAS refusing with reason code `expected`."""
    try:
        await action()
    except CasRefused as err:
        n.step(title, f"refused {expected}", f"refused {err.code}", err.code == expected)
        return
    n.step(title, f"refused {expected}", "a certificate was issued", False)


@contextlib.asynccontextmanager
async def cas_process(layout: Layout, workdir: Path) -> AsyncIterator[str]:
    """Start `netshield cas serve` as a child process; yield its URL once it printed its ready line."""
    log_path = workdir / "cas.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "netshield",
            "cas",
            "serve",
            "--policy",
            str(layout.policy),
            "--state",
            str(layout.cas_state),
            "--listen",
            "127.0.0.1:0",
            "--counter",
            str(workdir / "cas.counter"),
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
            if not line:
                raise RuntimeError(f"the CAS exited before it was ready; see {log_path}")
            ready = json.loads(line)
            yield str(ready["url"])
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def _write_workload(root: Path, code: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.py").write_bytes(code)
    (root / "README").write_text("demo workload\n")
    return root


async def run_demo(
    *, keep: bool = False, workdir: Path | None = None, out: IO[str] | None = None
) -> int:
    stream = out or sys.stdout
    narrator = Narrator(stream, color=stream.isatty())
    temp = workdir is None
    base = Path(tempfile.mkdtemp(prefix="netshield-demo-")) if workdir is None else workdir
    base.mkdir(parents=True, exist_ok=True)
    try:
        await _play(narrator, base, keep=keep)
    finally:
        if temp and not keep:
            shutil.rmtree(base, ignore_errors=True)
    if narrator.all_ok:
        narrator.say(f"\nall {len(narrator.results)} steps behaved as expected.")
        return 0
    failed = sum(1 for ok in narrator.results if not ok)
    narrator.say(f"\n{failed} of {len(narrator.results)} steps did not behave as expected.")
    return 1


async def _play(n: Narrator, base: Path, *, keep: bool) -> None:
    now = datetime.now(UTC)
    n.say(
        "netshield demo: a service gets a mesh identity only after its workload passed attestation"
    )
    n.say(f"work directory: {base}\n")
    layout = Layout(base / "trust-domain")
    create_trust_domain(layout.root, trust_domain=TRUST_DOMAIN, admin_name="operator", now=now)
    vendor = load_ca(layout.vendor_dir / "vendor-root.pem", layout.vendor_dir / "vendor-root.key")
    orders_dir = _write_workload(base / "workloads" / "orders", APP_CODE)
    frontend_dir = _write_workload(base / "workloads" / "frontend", b'print("frontend")\n')
    tampered_dir = _write_workload(
        base / "workloads" / "orders-tampered", APP_CODE.replace(b"serve", b"steal")
    )
    good_m, tampered_m = measure(orders_dir, ENTRY), measure(tampered_dir, ENTRY)
    layout.policy.write_text(
        DEMO_POLICY.format(td=TRUST_DOMAIN, orders=good_m, frontend=measure(frontend_dir, ENTRY))
    )
    current = create_platform(vendor, platform_id="p-current", tcb_level=7, debug=False, now=now)
    old = create_platform(vendor, platform_id="p-old-firmware", tcb_level=3, debug=False, now=now)
    n.say(
        f"trust domain {TRUST_DOMAIN}: vendor root, mesh CA, operator credential, policy (min TCB 5)"
    )
    n.say(
        f"orders measures {good_m[:16]}…; its tampered copy (one word changed) {tampered_m[:16]}…"
    )

    async with cas_process(layout, base) as url:
        n.say(f"CAS running at {url} (log: {base / 'cas.log'})\n")
        ca_pem = (layout.cas_state / "mesh-ca.pem").read_bytes()
        async with CasClient(url, ssl_context=cas_client_context(ca_pem=ca_pem)) as cas:
            await _attestation_steps(n, cas, current, old, good_m, tampered_m)
            await _revocation_step(n, cas, url, layout, current, good_m)
        lines, ok = await audit_online(
            url, load_admin(layout.admin_dir), since=0, limit=0, verify=True, as_json=False
        )
        n.step(
            "operator verifies the CAS audit log",
            "an intact hash chain",
            lines[-1].removeprefix("audit log "),
            ok,
        )
        if keep:
            _print_try(n, url, layout)
            await _until_stopped()


async def _until_stopped() -> None:
    """Wait for Ctrl-C or SIGTERM; the caller's context managers then stop the CAS."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _print_try(n: Narrator, url: str, layout: Layout) -> None:
    n.say(f"\nthe CAS stays up at {url}; try (Ctrl-C stops everything):")
    n.say(f"  export NETSHIELD_CAS={url} NETSHIELD_ADMIN={layout.admin_dir}")
    n.say("  netshield cas audit --verify")
    n.say("  netshield cas policy show --text")
    n.say("  netshield cas revoke --platform p-current --note 'try it'")
    n.say(
        f"  curl --cacert {layout.cas_state / 'mesh-ca.pem'} -X POST "
        f"-H 'Content-Type: application/json' -d '{{}}' {url}/v1/nonce"
    )


async def _attestation_steps(
    n: Narrator, cas: CasClient, current: Platform, old: Platform, good_m: str, tampered_m: str
) -> None:
    orders = Workload(service="orders", measurement=good_m)
    try:
        got = await attest(cas, current, orders, trust_domain=TRUST_DOMAIN)
        c = got.credentials
        observed = f"{c.spiffe_id}, serial {c.serial}, until {c.not_after[11:19]} UTC"
        ok = c.spiffe_id == str(SpiffeId.for_service(TRUST_DOMAIN, "orders"))
    except CasRefused as err:
        observed, ok = f"refused {err.code}", False
    n.step(
        "orders on platform p-current (TCB 7) attests",
        "a 10-minute certificate",
        observed,
        ok,
    )

    tampered = Workload(service="orders", measurement=tampered_m)
    await expect_refusal(
        n,
        "a tampered build of orders attests",
        "MEASUREMENT_NOT_ALLOWED",
        lambda: attest(cas, current, tampered, trust_domain=TRUST_DOMAIN),
    )
    await expect_refusal(
        n,
        "orders on platform p-old-firmware (TCB 3 < min 5) attests",
        "TCB_OUT_OF_DATE",
        lambda: attest(cas, old, orders, trust_domain=TRUST_DOMAIN),
    )

    key = generate_key()
    csr = build_csr(key, SpiffeId.for_service(TRUST_DOMAIN, "orders"))
    nonce = await cas.nonce()
    quote = current.quote(
        measurement=good_m,
        signer="0" * 64,
        product_id=0,
        svn=0,
        report_data=report_data_for(public_key_der(key.public_key()), nonce),
    )
    await cas.attest(service="orders", nonce=nonce, quote=quote, csr_pem=csr)
    await expect_refusal(
        n,
        "an eavesdropper replays a captured quote",
        "NONCE_REUSED",
        lambda: cas.attest(service="orders", nonce=nonce, quote=quote, csr_pem=csr),
    )


async def _revocation_step(
    n: Narrator, cas: CasClient, url: str, layout: Layout, platform: Platform, good_m: str
) -> None:
    got = await attest(
        cas, platform, Workload(service="orders", measurement=good_m), trust_domain=TRUST_DOMAIN
    )
    serial = got.credentials.serial
    since = (await cas.feed(0))["next"]
    watcher = asyncio.create_task(cas.feed(since, wait=10))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    async with admin_client(url, load_admin(layout.admin_dir)) as admin:
        await admin.revoke("instance", serial, "demo: decommissioned")
    events = (await watcher)["events"]
    took = time.monotonic() - started
    seen = [e for e in events if e.get("type") == "revoke" and e.get("target") == serial]
    n.step(
        f"operator revokes the orders instance (serial {serial})",
        "the CAS feed announces it within 5 s",
        f"announced after {took:.2f} s" if seen else f"not announced (events: {events})",
        bool(seen) and took < 5,
    )
