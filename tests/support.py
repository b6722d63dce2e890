"""Test support: a real trust domain on disk, platforms, workloads, and a CAS on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from netshield.attestation.platform import Platform, create_platform
from netshield.cas.counter import MonotonicCounter
from netshield.cas.server import CasOptions, RunningCas, running_cas
from netshield.casclient import CasClient
from netshield.netaddr import HostPort
from netshield.operator import admin_client
from netshield.pki.ca import CertificateAuthority, load_ca
from netshield.tls.material import cas_client_context
from netshield.trustdomain import AdminCredential, Layout, create_trust_domain, load_admin

TD = "test.netshield.local"
ORDERS_M = "a1" * 32
FRONTEND_M = "b2" * 32
DEBUGGY_M = "c3" * 32
SIGNER = "d4" * 32

POLICY = f"""\
trust_domain: {TD}
certificates:
  lifetime: 10m
  min_epoch: 2
platforms:
  min_tcb: 5
  allow_debug: false
  revoked: [p-revoked]
services:
  orders:
    measurements: ["{ORDERS_M}"]
    signer: "{SIGNER}"
    product_id: 7
    min_svn: 3
    allowed_callers: [frontend]
    addresses: ["127.0.0.1:15001"]
  frontend:
    measurements: ["{FRONTEND_M}"]
  debuggy:
    measurements: ["{DEBUGGY_M}"]
    allow_debug: true
  retired:
    measurements: ["{ORDERS_M}"]
    enabled: false
native_services:
  legacy:
    address: "127.0.0.1:15080"
"""


@dataclass
class Domain:
    root: Path
    layout: Layout
    vendor: CertificateAuthority
    platforms: dict[str, Platform] = field(default_factory=dict)

    @property
    def admin(self) -> AdminCredential:
        return load_admin(self.layout.admin_dir)

    @property
    def ca_pem(self) -> bytes:
        return (self.layout.cas_state / "mesh-ca.pem").read_bytes()

    @property
    def counter_file(self) -> Path:
        return self.root / "counter" / "cas.counter"

    def options(self, listen: str = "127.0.0.1:0") -> CasOptions:
        return CasOptions(
            policy_file=self.layout.policy,
            state_dir=self.layout.cas_state,
            listen=HostPort.parse(listen),
            counter_file=self.counter_file,
        )

    def client(self) -> CasClient:
        return CasClient(self._url, ssl_context=cas_client_context(ca_pem=self.ca_pem))

    def admin_client(self) -> CasClient:
        return admin_client(self._url, self.admin)

    _url: str = ""


def make_domain(root: Path, policy: str = POLICY) -> Domain:
    now = datetime.now(UTC)
    layout = Layout(root / "td")
    create_trust_domain(layout.root, trust_domain=TD, admin_name="operator", now=now)
    layout.policy.write_text(policy)
    (root / "counter").mkdir()
    vendor = load_ca(layout.vendor_dir / "vendor-root.pem", layout.vendor_dir / "vendor-root.key")
    domain = Domain(root=root, layout=layout, vendor=vendor)
    for pid, tcb, debug in (
        ("p-good", 7, False),
        ("p-old", 3, False),
        ("p-debug", 7, True),
        ("p-revoked", 9, False),
    ):
        domain.platforms[pid] = create_platform(
            vendor, platform_id=pid, tcb_level=tcb, debug=debug, now=now
        )
    return domain


@contextlib.asynccontextmanager
async def cas_in_process(
    domain: Domain, clock: Callable[[], datetime] | None = None
) -> AsyncIterator[RunningCas]:
    kwargs = {"clock": clock} if clock else {}
    async with running_cas(domain.options(), **kwargs) as cas:
        domain._url = cas.url
        yield cas


def counter_of(domain: Domain) -> MonotonicCounter:
    return MonotonicCounter(domain.counter_file)


def netshield_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "netshield", *args]


@dataclass
class CasProcess:
    proc: subprocess.Popen[str]
    ready: dict[str, object]

    @property
    def url(self) -> str:
        return str(self.ready["url"])

    @property
    def port(self) -> int:
        return int(str(self.ready["url"]).rsplit(":", 1)[1])


@contextlib.contextmanager
def cas_subprocess(
    domain: Domain,
    *extra: str,
    timeout: float = 20.0,
    counter: Path | None = None,
    name: str = "cas",
    env: dict[str, str] | None = None,
) -> Iterator[CasProcess]:
    """`netshield cas serve` as a real process; yields once its ready line arrived.

    ``name`` names its stderr log (``<root>/<name>.stderr``): one per replica.
    """
    args = netshield_cmd(
        "cas",
        "serve",
        "--policy",
        str(domain.layout.policy),
        "--state",
        str(domain.layout.cas_state),
        "--listen",
        "127.0.0.1:0",
        "--counter",
        str(counter or domain.counter_file),
        *extra,
    )
    log_path = domain.root / f"{name}.stderr"
    log = log_path.open("w")
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    try:
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            raise AssertionError(f"CAS exited {proc.returncode}: {log_path.read_text()}")
        ready = json.loads(line)
        domain._url = str(ready["url"])
        yield CasProcess(proc, ready)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
