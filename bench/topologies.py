"""The set-ups the benchmark compares, all in one topology:

    load generator --plain--> outbound proxy --mutual TLS 1.3--> inbound proxy --plain--> backend
         core A                  core A                              core B             core B

Each side of the mesh has its own core (as if it were its own one-core host): the load generator
and the outbound proxy share core A, the inbound proxy and the backend share core B.

- `direct`: no proxy; the load generator talks to the backend (what the network alone costs).
- `netshield`: two `netshield sidecar` processes attested at a real CAS, records on (a
  hash-chained file), metrics on (admin listener), resumption as the variant says.
- `haproxy`: Debian's haproxy, two processes (nbthread 1), `mode tcp`, TLS on both hops.
- `stunnel`: Debian's stunnel4, a client and a server process.

All use mutual TLS 1.3 with ECDSA P-256 certificates and require the client certificate.
Without `+resume`, session resumption is off: HAProxy `no-ssl-reuse`, `no-tls-tickets` and
`tune.ssl.cachesize 0`; stunnel `sessionResume = no` and `options = NO_TICKET`; netshield
`tls.resumption: false`. The `+resume` variants turn it on.

To add a set-up: subclass `Topology`, set `name`, start the two processes in `start`, and add it
to `TOPOLOGIES`; workloads name the set-ups they run on (workloads.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import yaml
from procs import BenchError, Proc, free_port, json_ready, start

ROOT = Path(__file__).resolve().parent.parent
TD = "bench.netshield.test"
ENTRY = "python3 app.py"


@dataclass
class Env:
    """What every set-up shares: a work directory, the two cores, the backend, certificates."""

    workdir: Path
    core_a: int | None
    core_b: int | None
    backend_port: int
    netshield: list[str]  # how to run the netshield CLI
    _pki: Path | None = None
    _mesh: Mesh | None = None

    def pki(self) -> Path:
        """ECDSA P-256 certificates for the C proxies: ca.pem, {client,server}.{pem,key,crt}."""
        if self._pki is None:
            self._pki = make_pki(self.workdir / "pki")
        return self._pki

    def mesh(self) -> Mesh:
        if self._mesh is None:
            self._mesh = Mesh.create(self)
        return self._mesh

    def stop(self) -> None:
        if self._mesh is not None:
            self._mesh.stop()


@dataclass
class Topology:
    """One set-up: its processes by side, and the port the load generator connects to."""

    name: ClassVar[str]
    description: ClassVar[str]
    resume: bool = False
    outbound: Proc | None = None
    inbound: Proc | None = None
    entry: int = 0

    @property
    def label(self) -> str:
        return self.name + ("+resume" if self.resume else "")

    def start(self, env: Env) -> None:
        raise NotImplementedError

    def processes(self) -> dict[str, Proc]:
        return {
            side: proc
            for side, proc in (("outbound", self.outbound), ("inbound", self.inbound))
            if proc is not None
        }

    def stop(self) -> None:
        for proc in self.processes().values():
            proc.stop()

    def version(self) -> str:
        return ""


class Direct(Topology):
    name = "direct"
    description = "no proxy: load generator to backend"

    def start(self, env: Env) -> None:
        self.entry = env.backend_port


class Netshield(Topology):
    name = "netshield"
    description = (
        "netshield sidecars (attested at a CAS, records and metrics on), one mutual-TLS "
        "connection per connection (tunnels off)"
    )
    tunnels: ClassVar[bool] = False

    def start(self, env: Env) -> None:
        mesh = env.mesh()
        suffix = ("-tunnel" if self.tunnels else "") + ("-resume" if self.resume else "")
        self.inbound = mesh.sidecar(
            f"orders{suffix}",
            "orders",
            env.core_b,
            inbound={
                "listen": "127.0.0.1:0",
                "upstream": f"127.0.0.1:{env.backend_port}",
            },
            tls={"resumption": self.resume},
            tunnels={"enabled": self.tunnels},
        )
        inbound_addr = self.inbound.ready["listen"]["inbound"]
        self.outbound = mesh.sidecar(
            f"frontend{suffix}",
            "frontend",
            env.core_a,
            outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": inbound_addr}],
            tls={"resumption": self.resume},
            tunnels={"enabled": self.tunnels},
        )
        self.entry = int(str(self.outbound.ready["listen"]["outbound:orders"]).rsplit(":", 1)[1])

    def version(self) -> str:
        import netshield

        return f"netshield {getattr(netshield, '__version__', '')}".strip()


class NetshieldTunnel(Netshield):
    name = "netshield-tunnel"
    description = (
        "netshield sidecars as above, connections carried as streams of HTTP/2 CONNECT "
        "tunnels between them (the default)"
    )
    tunnels = True


class Haproxy(Topology):
    name = "haproxy"
    description = "HAProxy, mode tcp, one thread per process"

    def start(self, env: Env) -> None:
        exe = shutil.which("haproxy")
        if exe is None:
            raise BenchError("haproxy is not installed (apt-get install haproxy)")
        pki = env.pki()
        tag = "haproxy-resume" if self.resume else "haproxy"
        inner, self.entry = free_port(), free_port()
        common = (
            "global\n  nbthread 1\n  maxconn 8000\n"
            + ("" if self.resume else "  tune.ssl.cachesize 0\n")
            + "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n"
            "  timeout server 300s\n"
        )
        tls = f"ca-file {pki / 'ca.pem'} verify required ssl-min-ver TLSv1.3"
        inbound_cfg = env.workdir / f"{tag}-inbound.cfg"
        inbound_cfg.write_text(
            common
            + f"listen in\n  bind 127.0.0.1:{inner} ssl crt {pki / 'server.crt'} {tls}"
            + ("" if self.resume else " no-tls-tickets")
            + f"\n  server backend 127.0.0.1:{env.backend_port}\n"
        )
        outbound_cfg = env.workdir / f"{tag}-outbound.cfg"
        outbound_cfg.write_text(
            common + f"listen out\n  bind 127.0.0.1:{self.entry}\n"
            f"  server in 127.0.0.1:{inner} ssl crt {pki / 'client.crt'} {tls}"
            + ("" if self.resume else " no-ssl-reuse no-tls-tickets")
            + "\n"
        )
        self.inbound = start(
            f"{tag}-inbound",
            [exe, "-db", "-f", str(inbound_cfg)],
            workdir=env.workdir,
            core=env.core_b,
            port=inner,
        )
        self.outbound = start(
            f"{tag}-outbound",
            [exe, "-db", "-f", str(outbound_cfg)],
            workdir=env.workdir,
            core=env.core_a,
            port=self.entry,
        )

    def version(self) -> str:
        out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0] if out else ""


class Stunnel(Topology):
    name = "stunnel"
    description = "stunnel4, a client and a server process"

    def start(self, env: Env) -> None:
        exe = shutil.which("stunnel4") or shutil.which("stunnel")
        if exe is None:
            raise BenchError("stunnel4 is not installed (apt-get install stunnel4)")
        pki = env.pki()
        inner, self.entry = free_port(), free_port()
        common = "foreground = yes\npid =\ndebug = 3\nsyslog = no\n"
        tls = f"CAfile = {pki / 'ca.pem'}\nverifyChain = yes\nsslVersionMin = TLSv1.3\n" + (
            "" if self.resume else "options = NO_TICKET\nsessionResume = no\n"
        )
        server = env.workdir / "stunnel-inbound.conf"
        server.write_text(
            f"{common}[in]\naccept = 127.0.0.1:{inner}\nconnect = 127.0.0.1:{env.backend_port}\n"
            f"cert = {pki / 'server.pem'}\nkey = {pki / 'server.key'}\n{tls}"
        )
        client = env.workdir / "stunnel-outbound.conf"
        client.write_text(
            f"{common}[out]\nclient = yes\naccept = 127.0.0.1:{self.entry}\n"
            f"connect = 127.0.0.1:{inner}\ncert = {pki / 'client.pem'}\n"
            f"key = {pki / 'client.key'}\n{tls}"
        )
        self.inbound = start(
            "stunnel-inbound", [exe, str(server)], workdir=env.workdir, core=env.core_b, port=inner
        )
        self.outbound = start(
            "stunnel-outbound",
            [exe, str(client)],
            workdir=env.workdir,
            core=env.core_a,
            port=self.entry,
        )

    def version(self) -> str:
        out = subprocess.run(["stunnel", "-version"], capture_output=True, text=True, check=False)
        lines = [line for line in (out.stdout + out.stderr).splitlines() if "stunnel" in line]
        return lines[0].strip() if lines else ""


TOPOLOGIES: dict[str, type[Topology]] = {
    cls.name: cls for cls in (Direct, Netshield, NetshieldTunnel, Haproxy, Stunnel)
}


def make_topology(label: str) -> Topology:
    """`netshield`, `haproxy+resume`, ...: the set-up a label names."""
    name, _, variant = label.partition("+")
    if name not in TOPOLOGIES or variant not in ("", "resume"):
        raise BenchError(f"unknown set-up {label!r} (known: {', '.join(TOPOLOGIES)}, +resume)")
    return TOPOLOGIES[name](resume=variant == "resume")


# --- certificates for the C proxies ----------------------------------------------------------


def make_pki(directory: Path) -> Path:
    """A throw-away mesh CA and two ECDSA P-256 leaves shaped like netshield's (SPIFFE ids)."""
    from netshield.identity import SpiffeId
    from netshield.pki.ca import create_root_ca, issue_certificate
    from netshield.pki.certext import AttestationClaims
    from netshield.pki.keys import certs_pem, generate_key, private_key_pem

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca = create_root_ca("bench mesh CA", now=now)
    (directory / "ca.pem").write_bytes(ca.bundle_pem())
    for name, service in (("client", "frontend"), ("server", "orders")):
        key = generate_key()
        cert = issue_certificate(
            ca,
            public_key=key.public_key(),
            spiffe_id=SpiffeId.for_service(TD, service),
            now=now,
            lifetime=timedelta(hours=12),
            claims=AttestationClaims("00" * 32, 1, 1, "bench"),
        )
        chain, key_pem = certs_pem([cert]), private_key_pem(key)
        (directory / f"{name}.pem").write_bytes(chain)
        (directory / f"{name}.key").write_bytes(key_pem)
        (directory / f"{name}.crt").write_bytes(chain + key_pem)  # HAProxy: cert and key
    return directory


# --- the netshield mesh: trust domain, CAS, sidecars -----------------------------------------


@dataclass
class Mesh:
    env: Env
    root: Path
    cas: Proc
    procs: list[Proc] = field(default_factory=list)

    @classmethod
    def create(cls, env: Env, native_services: dict[str, object] | None = None) -> Mesh:
        """A trust domain, a platform, the frontend and orders workloads and a CAS whose policy
        lets frontend call orders (and names `native_services`, for WAF routes)."""
        from netshield.attestation.measurement import measure
        from netshield.attestation.platform import create_platform, save_platform
        from netshield.pki.ca import load_ca
        from netshield.trustdomain import Layout, create_trust_domain

        root = env.workdir / "mesh"
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
        for svc in ("frontend", "orders"):
            wl = root / "workloads" / svc
            wl.mkdir(parents=True)
            (wl / "app.py").write_text(f"print('{svc}')\n")
            measurements[svc] = measure(wl, ENTRY.split())
        policy = {
            "trust_domain": TD,
            "certificates": {"lifetime": "1h", "min_epoch": 1},
            "platforms": {"min_tcb": 1},
            "services": {
                "frontend": {"measurements": [measurements["frontend"]]},
                "orders": {
                    "measurements": [measurements["orders"]],
                    "allowed_callers": ["frontend"],
                },
            },
        }
        if native_services:
            policy["native_services"] = native_services
        layout.policy.write_text(yaml.safe_dump(policy, sort_keys=False))
        cas = start(
            "cas",
            [
                *env.netshield,
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
            workdir=env.workdir,
            core=env.core_b,
            ready=json_ready(),
        )
        return cls(env, root, cas, [cas])

    def sidecar(self, name: str, service: str, core: int | None, **sections: object) -> Proc:
        doc = {
            "service": service,
            "cas": {
                "url": str(self.cas.ready["url"]),
                "ca": str(self.root / "td" / "cas" / "mesh-ca.pem"),
            },
            "platform": {"in_process": str(self.root / "platforms" / "p1")},
            "workload": {"path": str(self.root / "workloads" / service), "cmd": ENTRY},
            "admin": {"listen": "127.0.0.1:0"},
            "records": {"file": str(self.root / f"{name}.records.jsonl")},
            "limits": {"max_connections": 4096},
            **sections,
        }
        path = self.root / f"{name}.sidecar.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        proc = start(
            name,
            [*self.env.netshield, "sidecar", "--config", str(path)],
            workdir=self.env.workdir,
            core=core,
            ready=json_ready(),
        )
        self.procs.append(proc)
        return proc

    def records(self, name: str) -> Path:
        return self.root / f"{name}.records.jsonl"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def netshield_command() -> list[str]:
    """The netshield CLI of this checkout (its virtualenv's, else `python -m netshield`)."""
    venv = ROOT / ".venv" / "bin" / "netshield"
    if venv.exists():
        return [str(venv)]
    return [sys.executable, "-m", "netshield"]
