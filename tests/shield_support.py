"""A mesh for in-process shield tests: the ordinary programs of tests/shield_programs as the
services' workloads (measured with the command `netshield run` is given), run under
`netshield run`, beside sidecars where a test wants them."""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from netshield.attestation.measurement import measure
from tests.mesh_support import ENTRY, Mesh, make_mesh, mesh_policy, start
from tests.support import netshield_cmd

PROGRAMS = Path(__file__).resolve().parent / "shield_programs"
SERVER_KINDS = ("http", "aiohttp", "streams", "protocol", "socket")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """Ports the shielded programs are told to listen on: free now, and outside the kernel's
    ephemeral range, so no outgoing connection of a busy host takes one before the program
    binds it (the race a port from bind(0) loses)."""
    low, _high = _ephemeral_range()
    rng = random.Random()
    ports: list[int] = []
    socks: list[socket.socket] = []
    try:
        while len(ports) < n:
            port = rng.randrange(10_000, max(low, 10_001 + n))
            if port in ports:
                continue
            s = socket.socket()
            socks.append(s)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
        return ports
    finally:
        for s in socks:
            s.close()


@dataclass
class Program:
    popen: subprocess.Popen[str]
    ready: dict[str, Any]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return int(self.popen.returncode)


@dataclass
class ShieldMesh:
    mesh: Mesh
    ports: dict[str, int]  # the in-process orders server's ports, by kind
    sidecar_ports: dict[str, int]  # ports of the sidecar-fronted orders (interop)
    programs: list[Program] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.mesh.root

    def workload(self, service: str) -> Path:
        return self.root / "workloads" / service

    def records(self, service: str) -> list[dict[str, Any]]:
        """The shielded service's records (a sidecar of the same service writes its own file)."""
        return self.mesh.records(f"{service}.shield")

    def wait_record(self, service: str, pred: Any, timeout: float = 15) -> dict[str, Any]:
        return self.mesh.wait_record(f"{service}.shield", pred, timeout)

    def config(self, service: str, name: str | None = None, **sections: Any) -> Path:
        assert self.mesh.cas is not None
        doc: dict[str, Any] = {
            "service": service,
            "cas": {"url": str(self.mesh.cas.ready["url"]), "ca": str(self.mesh.ca_pem)},
            "platform": {"in_process": str(self.root / "platforms" / "p1")},
            "records": {"file": str(self.root / f"{service}.shield.records.jsonl")},
            **sections,
        }
        path = self.root / f"{name or service}.shield.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def run(
        self,
        service: str,
        env: dict[str, str],
        *,
        config: Path | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> tuple[int, dict[str, Any] | None, str]:
        """Run the service's program under `netshield run` to completion: exit status, its JSON
        output line, its stderr."""
        done = subprocess.run(
            netshield_cmd(
                "run", "--config", str(config or self.config(service)), "--", *ENTRY.split()
            ),
            cwd=cwd or self.workload(service),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        line = next((ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("{")), None)
        return done.returncode, json.loads(line) if line else None, done.stderr

    def start(
        self,
        service: str,
        env: dict[str, str],
        *,
        config: Path | None = None,
        cwd: Path | None = None,
        shielded: bool = True,
        name: str = "",
    ) -> Program:
        """Start the service's program (under `netshield run` unless `shielded` is False) and
        wait for its own "app-ready" line."""
        err = self.root / f"{name or service}.program.stderr"
        argv = (
            netshield_cmd(
                "run", "--config", str(config or self.config(service)), "--", *ENTRY.split()
            )
            if shielded
            else ["python3", "app.py"]
        )
        if not shielded:
            argv[0] = netshield_cmd()[0]  # the venv's interpreter (aiohttp)
        popen = subprocess.Popen(
            argv,
            cwd=cwd or self.workload(service),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE,
            stderr=err.open("w"),
            text=True,
        )
        assert popen.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(popen.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                line = popen.stdout.readline()
                if not line:
                    break
                with contextlib.suppress(ValueError):
                    ready = json.loads(line)
                    if ready.get("event") == "app-ready":
                        program = Program(popen, ready, err)
                        self.programs.append(program)
                        return program
            if popen.poll() is not None:
                break
        popen.kill()
        raise AssertionError(f"{service} did not start: {err.read_text(errors='replace')}")

    def stop_all(self) -> None:
        for program in reversed(self.programs):
            program.stop()
        self.mesh.stop_all()


def ports_env(ports: dict[str, int], **extra: str) -> dict[str, str]:
    return {"APP_PORTS": json.dumps(ports), **extra}


def make_shield_mesh(
    root: Path, *, policy_extra: str = "", addresses: list[str] | None = None
) -> ShieldMesh:
    """Workloads: orders runs server.py, frontend and intruder run client.py; orders' registry
    addresses are the in-process server's ports and the sidecar-fronted orders' inbound port."""
    numbers = free_ports(len(SERVER_KINDS) * 2 + 1)
    ports = dict(zip(SERVER_KINDS, numbers[: len(SERVER_KINDS)], strict=True))
    sidecar_ports = dict(zip(SERVER_KINDS, numbers[len(SERVER_KINDS) : -1], strict=True))
    sidecar_ports["inbound"] = numbers[-1]
    addresses = addresses or [f"127.0.0.1:{p}" for p in ports.values()] + [
        f"127.0.0.1:{sidecar_ports['inbound']}"
    ]
    mesh = make_mesh(root, policy_extra=policy_extra)
    programs = {"orders": "server.py", "frontend": "client.py", "intruder": "client.py"}
    measurements = {}
    for service, program in programs.items():
        shutil.copy(PROGRAMS / program, mesh.root / "workloads" / service / "app.py")
        measurements[service] = measure(mesh.root / "workloads" / service, ENTRY.split())
    embedded = mesh.root / "workloads" / "frontend-embedded"  # starts the shield itself
    embedded.mkdir()
    shutil.copy(PROGRAMS / "embedded.py", embedded / "app.py")
    shutil.copy(PROGRAMS / "client.py", embedded / "client.py")
    measurements["frontend-embedded"] = measure(embedded, [sys.executable, "app.py"])
    mesh.measurements = measurements
    mesh.layout.policy.write_text(
        mesh_policy(
            measurements,
            extra=policy_extra,
            overrides={
                "orders": {"addresses": addresses},
                "frontend": {
                    "measurements": [measurements["frontend"], measurements["frontend-embedded"]]
                },
            },
        )
    )
    return ShieldMesh(mesh=mesh, ports=ports, sidecar_ports=sidecar_ports)


__all__ = [
    "SERVER_KINDS",
    "Program",
    "ShieldMesh",
    "free_ports",
    "make_shield_mesh",
    "ports_env",
    "start",
]
