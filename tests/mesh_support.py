"""A real mesh for end-to-end tests: trust domain, CAS process, plain services, sidecar processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from netshield.attestation.measurement import measure
from netshield.attestation.platform import create_platform, save_platform
from netshield.identity import SpiffeId
from netshield.pki.ca import issue_certificate, load_ca
from netshield.pki.certext import AttestationClaims
from netshield.pki.keys import generate_key, private_key_pem
from netshield.trustdomain import Layout, create_trust_domain
from tests.support import netshield_cmd

TD = "mesh.netshield.test"
ENTRY = "python3 app.py"


def mesh_policy(
    measurements: dict[str, str],
    *,
    lifetime: str = "10m",
    extra: str = "",
    overrides: dict[str, dict[str, Any]] | None = None,
) -> str:
    services = {
        "frontend": {"measurements": [measurements["frontend"]]},
        "orders": {"measurements": [measurements["orders"]], "allowed_callers": ["frontend"]},
        "intruder": {"measurements": [measurements["intruder"]]},
    }
    for name, fields in (overrides or {}).items():
        services[name].update(fields)
    doc = {
        "trust_domain": TD,
        "certificates": {"lifetime": lifetime, "min_epoch": 1},
        "platforms": {"min_tcb": 1},
        "services": services,
    }
    return yaml.safe_dump(doc, sort_keys=False) + extra


# --- plain services ------------------------------------------------------------------------------
class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: EchoServer = self.server  # type: ignore[assignment]
        conn: socket.socket = self.request
        with contextlib.suppress(OSError):
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                server.received.append(data)
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)


class EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte; remembers what reached it (to prove a denial delivered nothing)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.received: list[bytes] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def bytes_received(self) -> int:
        return sum(len(b) for b in self.received)


# --- processes -----------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[str]
    ready: dict[str, Any]
    stderr_path: Path

    def addr(self, key: str) -> tuple[str, int]:
        host, port = str(self.ready["listen"][key]).rsplit(":", 1)
        return host.strip("[]"), int(port)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, sig: int = 15, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return int(self.popen.returncode)


def start(name: str, args: list[str], workdir: Path, timeout: float = 30) -> Proc:
    err = workdir / f"{name}.stderr"
    popen = subprocess.Popen(
        netshield_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=err.open("w"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert popen.stdout is not None
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(popen.stdout, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            line = popen.stdout.readline()
            if not line:
                break
            try:
                ready = json.loads(line)
            except ValueError:
                continue
            if ready.get("event") == "ready":
                return Proc(name, popen, ready, err)
        if popen.poll() is not None:
            break
    popen.kill()
    raise AssertionError(f"{name} did not become ready: {err.read_text()}")


@dataclass
class Mesh:
    root: Path
    layout: Layout
    measurements: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    cas: Proc | None = None

    @property
    def ca_pem(self) -> Path:
        return self.layout.cas_state / "mesh-ca.pem"

    def start_cas(self, listen: str = "127.0.0.1:0", name: str = "cas") -> Proc:
        self.cas = start(
            name,
            [
                "cas",
                "serve",
                "--policy",
                str(self.layout.policy),
                "--state",
                str(self.layout.cas_state),
                "--listen",
                listen,
                "--counter",
                str(self.root / "cas.counter"),
            ],
            self.root,
        )
        self.procs.append(self.cas)
        return self.cas

    def restart_cas(self, name: str = "cas-again") -> Proc:
        """Start the CAS again on the address it had (the sidecars know its URL); the old process
        must be gone (stopped or killed)."""
        assert self.cas is not None and self.cas.popen.poll() is not None
        return self.start_cas(str(self.cas.ready["listen"]["api"]), name)

    def admin_args(self) -> list[str]:
        """`--cas URL --admin DIR`: how operator commands reach this mesh's CAS."""
        assert self.cas is not None
        return ["--cas", str(self.cas.ready["url"]), "--admin", str(self.layout.admin_dir)]

    def cas_admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run an operator command, e.g. `cas_admin("revoke", "--service", "x")`; it must succeed."""
        return subprocess.run(
            netshield_cmd("cas", *args, *self.admin_args()),
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def mint(
        self,
        name: str,
        service: str = "frontend",
        *,
        lifetime: timedelta = timedelta(minutes=10),
        now: datetime | None = None,
        measurement: str | None = None,
        epoch: int = 1,
    ) -> tuple[str, str]:
        """A leaf signed with the mesh CA key, as the CAS would issue it by default (the policy's
        lifetime, the service's measurement, the current epoch): what an attacker holding the
        CA key could mint. Returns (certificate path, key path)."""
        from cryptography.hazmat.primitives import serialization

        ca = load_ca(self.ca_pem, self.layout.cas_state / "mesh-ca.key")
        key = generate_key()
        cert = issue_certificate(
            ca,
            public_key=key.public_key(),
            spiffe_id=SpiffeId.for_service(TD, service),
            now=now or datetime.now(UTC),
            lifetime=lifetime,
            claims=AttestationClaims(measurement or self.measurements[service], 1, epoch, "p1"),
        )
        cert_path, key_path = self.root / f"{name}.pem", self.root / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(private_key_pem(key))
        return str(cert_path), str(key_path)

    def sidecar_config(self, service: str, **sections: Any) -> Path:
        assert self.cas is not None
        doc: dict[str, Any] = {
            "service": service,
            "cas": {"url": str(self.cas.ready["url"]), "ca": str(self.ca_pem)},
            "platform": {"in_process": str(self.root / "platforms" / "p1")},
            "workload": {"path": str(self.root / "workloads" / service), "cmd": ENTRY},
            "admin": {"listen": "127.0.0.1:0"},
            "records": {"file": str(self.root / f"{service}.records.jsonl")},
            **sections,
        }
        path = self.root / f"{service}.sidecar.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def start_sidecar(self, service: str, **sections: Any) -> Proc:
        proc = start(
            f"sidecar-{service}",
            ["sidecar", "--config", str(self.sidecar_config(service, **sections))],
            self.root,
        )
        self.procs.append(proc)
        return proc

    def records(self, service: str) -> list[dict[str, Any]]:
        path = self.root / f"{service}.records.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_record(self, service: str, pred: Any, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.records(service):
                if pred(rec):
                    return rec
            time.sleep(0.05)
        raise AssertionError(f"no matching record for {service}: {self.records(service)}")

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def make_mesh(
    root: Path,
    *,
    lifetime: str = "10m",
    policy_extra: str = "",
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Mesh:
    now = datetime.now(UTC)
    layout = Layout(root / "td")
    create_trust_domain(layout.root, trust_domain=TD, admin_name="operator", now=now)
    vendor = load_ca(layout.vendor_dir / "vendor-root.pem", layout.vendor_dir / "vendor-root.key")
    save_platform(
        create_platform(vendor, platform_id="p1", tcb_level=5, debug=False, now=now),
        root / "platforms" / "p1",
    )
    measurements = {}
    for svc in ("frontend", "orders", "intruder"):
        wl = root / "workloads" / svc
        wl.mkdir(parents=True)
        (wl / "app.py").write_text(f"print('{svc}')\n")
        measurements[svc] = measure(wl, ENTRY.split())
    layout.policy.write_text(
        mesh_policy(measurements, lifetime=lifetime, extra=policy_extra, overrides=overrides)
    )
    return Mesh(root=root, layout=layout, measurements=measurements)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def s_client(port: int, *args: str, data: bytes = b"hello\n") -> subprocess.CompletedProcess[bytes]:
    """openssl s_client as a real peer of 127.0.0.1:`port`: send `data`, give the far end a
    moment to answer, then close."""
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    with contextlib.suppress(OSError):
        proc.stdin.write(data)
        proc.stdin.flush()
    time.sleep(1.0)
    with contextlib.suppress(OSError):
        proc.stdin.close()
    proc.stdin = None  # communicate() must not flush the closed pipe
    out, err = proc.communicate(timeout=20)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def roundtrip(addr: tuple[str, int], payload: bytes, timeout: float = 20) -> bytes:
    """Send payload, half-close, read everything back."""
    with socket.create_connection(addr, timeout=timeout) as s:

        def send() -> None:
            with contextlib.suppress(OSError):
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        chunks = []
        with contextlib.suppress(ConnectionResetError):  # a refusal may reset: nothing came back
            while True:
                data = s.recv(1 << 16)
                if not data:
                    break
                chunks.append(data)
        sender.join()
    return b"".join(chunks)


def http_get(url: str, *, ca: Path | None = None) -> tuple[int, dict[str, Any] | str]:
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(url, timeout=10, context=ctx) as resp:
            body = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as err:
        body, status = err.read().decode(), err.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body
