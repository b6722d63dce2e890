"""Helpers of the attack, fault and soak tests: an attacker process, legitimate traffic whose
every stream is checksummed, a sampler of a process's file descriptors and memory, and forged
certificates."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from netshield.identity import SpiffeId
from netshield.logs.parties import host_of
from netshield.pki.ca import create_root_ca, issue_certificate, load_ca
from netshield.pki.certext import AttestationClaims
from netshield.pki.keys import generate_key, private_key_pem
from tests.mesh_support import TD, Mesh

ATTACKER = Path(__file__).with_name("attacker.py")
_HOSTS = itertools.count(2)


def attacker_host() -> str:
    """A loopback address no other attack of this test run used (legitimate sidecars use
    127.0.0.1), so that records and stragglers of one attack are told apart from another's."""
    n = next(_HOSTS)
    return f"127.0.{n // 250}.{n % 250 + 2}"


def attacker_hosts(count: int) -> list[str]:
    """`count` fresh attacker addresses (a distributed attacker)."""
    return [attacker_host() for _ in range(count)]


def raise_own_fd_limit() -> None:
    """The test process opens thousands of sockets too."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the attacker ----------------------------------------------------------------------------------
class Attacker:
    """`tests/attacker.py MODE ...` as a process; `finish()` stops it and returns its stats."""

    def __init__(
        self, mode: str, target: tuple[str, int], *args: str, source: str | list[str]
    ) -> None:
        self.mode = mode
        self.sources = [source] if isinstance(source, str) else source
        self.popen = subprocess.Popen(
            [
                sys.executable,
                str(ATTACKER),
                mode,
                "--target",
                f"{target[0]}:{target[1]}",
                "--source",
                ",".join(self.sources),
                *args,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.holding: dict[str, Any] | None = None
        if mode in ("idle", "slowloris", "slowhttp"):
            assert self.popen.stdout is not None
            self.holding = json.loads(self.popen.stdout.readline())

    def finish(self, timeout: float = 120) -> dict[str, Any]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        with contextlib.suppress(OSError):
            self.popen.stdin.close()
        self.popen.stdin = None  # communicate() must not flush the closed pipe
        out, _ = self.popen.communicate(timeout=timeout)
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        return next(line for line in lines if line.get("event") == "done")

    def wait(self, timeout: float = 300) -> dict[str, Any]:
        """For modes that end by themselves (churn, handshake, bytes)."""
        self.popen.wait(timeout=timeout)
        return self.finish()


# --- legitimate traffic --------------------------------------------------------------------------
@dataclass
class Traffic:
    ok: int = 0
    failed: int = 0
    corrupted: int = 0
    bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)  # each successful request's duration

    def quantile(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.corrupted

    @property
    def success_rate(self) -> float:
        return self.ok / self.total if self.total else 0.0


def checked_roundtrip(addr: tuple[str, int], size: int, timeout: float = 30) -> tuple[bool, str]:
    """Send `size` random bytes through an echo path, half-close, and compare the SHA-256 of what
    came back; (matched, why not)."""
    payload = secrets.token_bytes(size)
    try:
        with socket.create_connection(addr, timeout=timeout) as s:
            sender = threading.Thread(target=_send_all, args=(s, payload))
            sender.start()
            digest, got = hashlib.sha256(), 0
            while chunk := s.recv(1 << 16):
                digest.update(chunk)
                got += len(chunk)
            sender.join()
    except OSError as err:
        return False, type(err).__name__
    if got == 0:
        return False, "refused"
    if digest.digest() != hashlib.sha256(payload).digest():
        return False, "corrupted"
    return True, ""


def _send_all(s: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)


class LegitTraffic:
    """Requests through `addr` (a frontend outbound listener to an echo service), back to back
    from `workers` threads, until stopped; every stream checksummed."""

    def __init__(self, addr: tuple[str, int], *, workers: int = 2, size: int = 4096) -> None:
        self.addr, self.size = addr, size
        self.result = Traffic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def __enter__(self) -> LegitTraffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> Traffic:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        return self.result

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            ok, why = checked_roundtrip(self.addr, self.size)
            with self._lock:
                if ok:
                    self.result.ok += 1
                    self.result.bytes += self.size
                    self.result.seconds.append(time.monotonic() - t0)
                elif why == "corrupted":
                    self.result.corrupted += 1
                else:
                    self.result.failed += 1
                    self.result.errors[why] += 1


# --- sampling a process ----------------------------------------------------------------------------
def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_of(pid: int) -> int:
    """Resident memory in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Sampler:
    """Samples a process's open file descriptors and RSS every `period` seconds."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.pid, self.period = pid, period
        self.fds: list[int] = []
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(OSError):
            self.fds.append(fds_of(self.pid))
            self.rss.append(rss_of(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    @property
    def peak_fds(self) -> int:
        return max(self.fds)

    @property
    def peak_rss_mb(self) -> float:
        return max(self.rss) / 2**20


# --- forged certificates ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Credential:
    cert: Path
    key: Path


class Forge:
    """Client certificates an attacker might present to a sidecar of `mesh`."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        state = mesh.layout.cas_state
        self.mesh_ca = load_ca(state / "mesh-ca.pem", state / "mesh-ca.key")
        self.rogue_ca = create_root_ca("rogue", now=datetime.now(UTC))

    def _save(
        self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> Credential:
        cert_path, key_path = self.mesh.root / f"{name}.pem", self.mesh.root / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(private_key_pem(key))
        return Credential(cert_path, key_path)

    def leaf(
        self,
        name: str,
        *,
        service: str = "frontend",
        rogue: bool = False,
        start: datetime | None = None,
        lifetime: timedelta = timedelta(minutes=5),
        epoch: int = 1,
        platform: str = "p1",
    ) -> tuple[Credential, x509.Certificate]:
        """A leaf like the CAS would issue for `service` (its real measurement, the policy's
        epoch, a lifetime within the policy's), from the mesh CA or a rogue one."""
        key = generate_key()
        cert = issue_certificate(
            self.rogue_ca if rogue else self.mesh_ca,
            public_key=key.public_key(),
            spiffe_id=SpiffeId.for_service(TD, service),
            now=start or datetime.now(UTC),
            lifetime=lifetime,
            claims=self._claims(service, epoch, platform),
        )
        return self._save(name, cert, key), cert

    def _claims(self, service: str, epoch: int = 1, platform: str = "p1") -> AttestationClaims:
        return AttestationClaims(self.mesh.measurements[service], 1, epoch, platform)

    def two_uris(self, name: str) -> Credential:
        """A mesh-CA certificate naming two SPIFFE ids (frontend and orders)."""
        uris = [f"spiffe://{TD}/svc/frontend", f"spiffe://{TD}/svc/orders"]
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        return self._variant(name, san=san)

    def expired(self, name: str) -> Credential:
        """A frontend certificate from the mesh CA whose validity ended a second after the CA's
        began (the CA is younger than any backdated certificate it could sign otherwise)."""
        start = self.mesh_ca.cert.not_valid_before_utc
        return self._variant(name, validity=(start, start + timedelta(seconds=1)))

    def _variant(
        self,
        name: str,
        *,
        san: x509.SubjectAlternativeName | None = None,
        validity: tuple[datetime, datetime] | None = None,
    ) -> Credential:
        """A frontend leaf as the CAS issues it, with its SAN or validity replaced."""
        key = generate_key()
        base = issue_certificate(
            self.mesh_ca,
            public_key=key.public_key(),
            spiffe_id=SpiffeId.for_service(TD, "frontend"),
            now=datetime.now(UTC),
            lifetime=timedelta(minutes=5),
            claims=self._claims("frontend"),
        )
        not_before, not_after = validity or (base.not_valid_before_utc, base.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(base.subject)
            .issuer_name(base.issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
        )
        for ext in base.extensions:
            value = ext.value
            if san is not None and isinstance(value, x509.SubjectAlternativeName):
                value = san
            builder = builder.add_extension(value, critical=ext.critical)
        return self._save(name, builder.sign(self.mesh_ca.key, hashes.SHA256()), key)


# --- records -----------------------------------------------------------------------------------------
def denials_from(records: list[dict[str, Any]], host: str | list[str]) -> Counter[str]:
    """Denied connections from `host` (or hosts) by reason, aggregates counted by their `count`."""
    hosts = {host} if isinstance(host, str) else set(host)
    counts: Counter[str] = Counter()
    for rec in records:
        if rec["decision"] == "deny" and host_of(str(rec["src"])) in hosts:
            counts[rec["reason"]] += int(rec.get("count", 1))
    return counts


def wait_for_denials(
    mesh: Mesh, service: str, since: int, host: str | list[str], expected: int, timeout: float = 20
) -> Counter[str]:
    """Wait until `expected` denied connections from `host` are recorded after line `since`."""
    deadline = time.monotonic() + timeout
    while True:
        counts = denials_from(mesh.records(service)[since:], host)
        if sum(counts.values()) >= expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)
