"""Transparent capture between hosts (issue 4): network namespaces joined by veth pairs to a
bridge, plain socket services that know nothing about TLS, sidecars under their own uid with
`netshield iptables install` in their namespace, and tcpdump on the wire.

Hosts (10.77.0.0/24, all inside the lab's own namespaces):
  cas .10  the CAS
  a   .1   frontend: a plain client + a sidecar (uid 1337), transparent, strict
  b   .2   orders: a plain server on :8080 + a sidecar (uid 1337), transparent inbound for 8080
  c   .3   no sidecar: an attacker, and plain servers :9090 (the native service "legacy") and :9999
  d   .4   intruder: a plain client + a sidecar (uid 1337), transparent, permissive
  p   .5   a "pod": a namespace held by a sleeping process and joined with nsenter by the
           iptables init step, the sidecar and the service (as Kubernetes runs them)
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.mesh_support import ENTRY, TD, Mesh, make_mesh
from tests.netns_lab import (
    SIDECAR_UID,
    Host,
    Lab,
    Proc,
    client,
    have_root_tools,
    records,
    start_capture,
    start_server,
    tls_record_types,
    wait_record,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(have_root_tools() is not None, reason=str(have_root_tools())),
]

SERVICE_PORT = 8080
NATIVE_PORT = 9090
OUTSIDE_PORT = 9999
CAS_PORT = 8443


@dataclass
class World:
    lab: Lab
    mesh: Mesh
    hosts: dict[str, Host]
    cas_url: str
    orders_log: Path  # every byte that reached B's plain service
    native_log: Path
    outside_log: Path
    sidecars: dict[str, Proc]

    def record_file(self, host: str) -> Path:
        return self.lab.root / f"records-{host}" / "records.jsonl"


def _netshield(*args: str) -> list[str]:
    return [sys.executable, "-m", "netshield", *args]


def _policy_overrides(ips: dict[str, str], ip6s: dict[str, str]) -> dict[str, dict[str, object]]:
    return {
        "orders": {
            "addresses": [f"{ips['b']}:{SERVICE_PORT}", f"[{ip6s['b']}]:{SERVICE_PORT}"],
            "allowed_callers": ["frontend"],
        },
        "frontend": {"addresses": [f"{ips['a']}:{SERVICE_PORT}"]},
    }


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="netshield-netns-"))
    root.chmod(0o755)  # the sidecars run as uid 1337 and read their files here
    lab = Lab(root)
    try:
        hosts = {
            name: lab.add_host(name, octet)
            for name, octet in (("cas", 10), ("a", 1), ("b", 2), ("c", 3), ("d", 4))
        }
        hosts["p"] = lab.add_host("p", 5, pod=True)
        ips = {name: host.ip for name, host in hosts.items()}
        ip6s = {name: host.ip6 for name, host in hosts.items()}
        native = f'native_services:\n  legacy:\n    address: "{ips["c"]}:{NATIVE_PORT}"\n    waf: false\n'
        mesh = make_mesh(root / "mesh", overrides=_policy_overrides(ips, ip6s), policy_extra=native)
        for path in [root / "mesh", *(root / "mesh").rglob("*")]:
            os.chown(path, SIDECAR_UID, SIDECAR_UID)  # platform key (0600) and workloads
        cas = lab.start(
            hosts["cas"],
            "cas",
            _netshield(
                "cas",
                "serve",
                "--policy",
                str(mesh.layout.policy),
                "--state",
                str(mesh.layout.cas_state),
                "--listen",
                f"{ips['cas']}:{CAS_PORT}",
                "--counter",
                str(root / "cas.counter"),
            ),
        )
        _server, orders_log = start_server(lab, hosts["b"], SERVICE_PORT, "from-orders")
        _server, native_log = start_server(lab, hosts["c"], NATIVE_PORT, "from-legacy")
        _server, outside_log = start_server(lab, hosts["c"], OUTSIDE_PORT, "from-outside")
        yield World(
            lab, mesh, hosts, str(cas.ready["url"]), orders_log, native_log, outside_log, {}
        )
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


def install_capture(host: Host, *, inbound_ports: str) -> None:
    """What Istio's init container does: the NAT rules, before the sidecar starts."""
    out = host.run(
        *_netshield(
            "iptables", "install", "--proxy-uid", str(SIDECAR_UID), "--inbound-ports", inbound_ports
        )
    )
    assert "installed capture rules" in out


def start_sidecar(
    w: World,
    host: str,
    service: str,
    *,
    mode: str = "strict",
    service_ports: list[int] | None = None,
) -> Proc:
    records_dir = w.lab.root / f"records-{host}"
    records_dir.mkdir(exist_ok=True)
    os.chown(records_dir, SIDECAR_UID, SIDECAR_UID)
    mesh_root = w.mesh.root
    doc = {
        "service": service,
        "cas": {"url": w.cas_url, "ca": str(w.mesh.ca_pem)},
        "platform": {"in_process": str(mesh_root / "platforms" / "p1")},
        "workload": {"path": str(mesh_root / "workloads" / service), "cmd": ENTRY},
        "admin": {"listen": "127.0.0.1:0"},
        "records": {"file": str(records_dir / "records.jsonl")},
        "transparent": {"mode": mode, "service_ports": service_ports or []},
    }
    config = w.lab.root / f"sidecar-{host}.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = w.lab.start(
        w.hosts[host],
        f"sidecar-{host}",
        _netshield("sidecar", "--config", str(config)),
        uid=SIDECAR_UID,
    )
    w.sidecars[host] = proc
    return proc


@pytest.fixture(scope="module")
def meshed(world: World) -> World:
    """A, B and D with capture rules and sidecars (after the plaintext control test ran)."""
    install_capture(world.hosts["b"], inbound_ports=str(SERVICE_PORT))
    install_capture(world.hosts["a"], inbound_ports="")
    install_capture(world.hosts["d"], inbound_ports="")
    start_sidecar(world, "b", "orders", service_ports=[SERVICE_PORT])
    start_sidecar(world, "a", "frontend", mode="strict")
    start_sidecar(world, "d", "intruder", mode="permissive")
    return world


def _marker() -> str:
    return f"PLAINTEXT-MARKER-{secrets.token_hex(8)}"


def _between(a: Host, b: Host) -> str:
    return f"tcp and host {a.ip} and host {b.ip}"


# --- the control: without sidecars, the wire shows everything ------------------------------------


def test_without_sidecars_the_marker_crosses_the_wire_in_plaintext(world: World) -> None:
    a, b = world.hosts["a"], world.hosts["b"]
    marker = _marker()
    capture = start_capture(world.lab, b, _between(a, b), "control")
    answer = client(a, b.ip, SERVICE_PORT, marker)
    payloads = capture.stop()
    assert answer == f"ANSWER from-orders to {marker}\n"
    wire = b"".join(payloads)
    assert marker.encode() in wire and b"ANSWER from-orders" in wire
    assert not tls_record_types(payloads)


# --- point 4: transparent mTLS between hosts -----------------------------------------------------


def test_unmodified_service_reaches_its_peer_and_the_wire_carries_only_tls(meshed: World) -> None:
    w = meshed
    a, b = w.hosts["a"], w.hosts["b"]
    marker = _marker()
    capture = start_capture(w.lab, b, _between(a, b), "mesh")
    answer = client(a, b.ip, SERVICE_PORT, marker)
    payloads = capture.stop()
    assert answer == f"ANSWER from-orders to {marker}\n"
    wire = b"".join(payloads)
    # the capture saw this conversation: a TLS handshake and encrypted application data ...
    assert {22, 23} <= tls_record_types(payloads)
    assert len(wire) > 2 * len(marker)
    # ... and neither the request nor the answer in plaintext
    assert marker.encode() not in wire
    assert b"ANSWER" not in wire and b"from-orders" not in wire
    out = wait_record(w.record_file("a"), lambda r: r["direction"] == "outbound")
    inn = wait_record(w.record_file("b"), lambda r: r["direction"] == "inbound")
    assert out["decision"] == inn["decision"] == "allow"
    assert out["original_dst"] == inn["original_dst"] == f"{b.ip}:{SERVICE_PORT}"
    assert out["peer_identity"] == f"spiffe://{TD}/svc/orders"
    assert inn["peer_identity"] == f"spiffe://{TD}/svc/frontend"
    assert inn["dst"] == f"127.0.0.1:{SERVICE_PORT}" and inn["tls_version"] == "TLSv1.3"
    assert inn["src"].startswith(f"{a.ip}:")


def test_host_without_sidecar_is_refused_and_no_plaintext_reaches_the_service(
    meshed: World,
) -> None:
    w = meshed
    b, c = w.hosts["b"], w.hosts["c"]
    before = w.orders_log.read_bytes()
    marker = _marker()
    answer = client(c, b.ip, SERVICE_PORT, marker)
    assert "from-orders" not in answer
    rec = wait_record(
        w.record_file("b"), lambda r: r["decision"] == "deny" and r["src"].startswith(c.ip)
    )
    assert rec["reason"] == "TLS_HANDSHAKE_FAILED"
    assert rec["original_dst"] == f"{b.ip}:{SERVICE_PORT}"
    assert w.orders_log.read_bytes() == before  # not one byte reached the service
    assert marker.encode() not in w.orders_log.read_bytes()


def _intruder_cert(w: World) -> tuple[Path, Path]:
    """A genuine mesh certificate for `intruder` (as if stolen from its sidecar)."""
    cert, key = w.mesh.mint("intruder", "intruder")
    return Path(cert), Path(key)


def test_caller_the_policy_does_not_allow_is_denied_and_both_sides_record_it(
    meshed: World,
) -> None:
    w = meshed
    b, c, d = w.hosts["b"], w.hosts["c"], w.hosts["d"]
    before = w.orders_log.read_bytes()
    # the intruder's own sidecar refuses the call before dialling
    answer = client(d, b.ip, SERVICE_PORT, _marker())
    assert "from-orders" not in answer
    mine = wait_record(
        w.record_file("d"),
        lambda r: r["decision"] == "deny" and r["original_dst"] == f"{b.ip}:{SERVICE_PORT}",
    )
    assert mine["reason"] == "PEER_NOT_AUTHORIZED"
    assert "services.orders.allowed_callers" in mine["detail"]
    # an intruder that bypasses its sidecar with a genuine mesh certificate meets B's check
    cert, key = _intruder_cert(w)
    done = subprocess.run(
        [
            *c.enter,
            "openssl",
            "s_client",
            "-connect",
            f"{b.ip}:{SERVICE_PORT}",
            "-tls1_3",
            "-CAfile",
            str(w.mesh.ca_pem),
            "-cert",
            str(cert),
            "-key",
            str(key),
        ],
        input=b"SELECT secrets\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert b"from-orders" not in done.stdout
    theirs = wait_record(
        w.record_file("b"),
        lambda r: r["decision"] == "deny" and r["reason"] == "PEER_NOT_AUTHORIZED",
    )
    assert theirs["peer_identity"] == f"spiffe://{TD}/svc/intruder"
    assert theirs["original_dst"] == f"{b.ip}:{SERVICE_PORT}"
    assert "add `intruder` there" in theirs["detail"]
    assert w.orders_log.read_bytes() == before


def test_ipv6_destination_is_recovered_and_carried_over_mutual_tls(meshed: World) -> None:
    """IP6T_SO_ORIGINAL_DST on both ends: A dials B's IPv6 address, ip6tables redirects."""
    w = meshed
    a, b = w.hosts["a"], w.hosts["b"]
    marker = _marker()
    capture = start_capture(w.lab, b, f"tcp and host {a.ip6} and host {b.ip6}", "mesh6")
    answer = client(a, b.ip6, SERVICE_PORT, marker)
    payloads = capture.stop()
    assert answer == f"ANSWER from-orders to {marker}\n"
    assert {22, 23} <= tls_record_types(payloads)
    assert marker.encode() not in b"".join(payloads)
    target = f"[{b.ip6}]:{SERVICE_PORT}"
    out = wait_record(w.record_file("a"), lambda r: r["original_dst"] == target)
    inn = wait_record(w.record_file("b"), lambda r: r["original_dst"] == target)
    assert out["decision"] == inn["decision"] == "allow"
    assert out["peer_identity"] == f"spiffe://{TD}/svc/orders"
    assert inn["src"].startswith(f"[{a.ip6}]:")


# --- point 2: destinations outside the mesh, native services -------------------------------------


def test_strict_mode_refuses_a_destination_outside_the_mesh(meshed: World) -> None:
    w = meshed
    a, c = w.hosts["a"], w.hosts["c"]
    before = w.outside_log.read_bytes()
    answer = client(a, c.ip, OUTSIDE_PORT, _marker())
    assert "from-outside" not in answer
    rec = wait_record(w.record_file("a"), lambda r: r["original_dst"] == f"{c.ip}:{OUTSIDE_PORT}")
    assert rec["decision"] == "deny" and rec["reason"] == "DESTINATION_NOT_IN_MESH"
    assert "transparent.mode is strict" in rec["detail"]
    assert w.outside_log.read_bytes() == before


def test_permissive_mode_passes_a_destination_outside_the_mesh_through_and_records_it(
    meshed: World,
) -> None:
    w = meshed
    c, d = w.hosts["c"], w.hosts["d"]
    marker = _marker()
    answer = client(d, c.ip, OUTSIDE_PORT, marker)
    assert answer == f"ANSWER from-outside to {marker}\n"
    rec = wait_record(w.record_file("d"), lambda r: r["original_dst"] == f"{c.ip}:{OUTSIDE_PORT}")
    assert rec["decision"] == "allow" and rec["reason"] == "DESTINATION_NOT_IN_MESH"
    assert rec["peer_identity"] is None and rec["bytes_in"] == len(marker) + 1


def test_native_service_is_recognised_from_the_registry_and_passed_through(
    meshed: World,
) -> None:
    w = meshed
    a, c = w.hosts["a"], w.hosts["c"]
    marker = _marker()
    answer = client(a, c.ip, NATIVE_PORT, marker)  # A is strict, yet a native service is known
    assert answer == f"ANSWER from-legacy to {marker}\n"
    rec = wait_record(w.record_file("a"), lambda r: r["original_dst"] == f"{c.ip}:{NATIVE_PORT}")
    assert rec["decision"] == "allow" and rec["reason"] == "OK"
    assert "native_services.legacy" in rec["detail"] and "waf off" in rec["detail"]


# --- point 3: only redirected connections, only to the local service -----------------------------


def test_capture_ports_dialled_directly_are_refused(meshed: World) -> None:
    w = meshed
    a, b, c = w.hosts["a"], w.hosts["b"], w.hosts["c"]
    answer = client(a, "127.0.0.1", 15001, _marker())  # loopback: not redirected
    assert "ANSWER" not in answer
    rec = wait_record(
        w.record_file("a"),
        lambda r: r["reason"] == "DESTINATION_UNKNOWN" and r["decision"] == "deny",
    )
    assert "without being redirected" in rec["detail"]
    before = w.orders_log.read_bytes()
    answer = client(c, b.ip, 15006, _marker())  # B's inbound capture port itself
    assert "ANSWER" not in answer
    rec = wait_record(
        w.record_file("b"),
        lambda r: r["reason"] == "DESTINATION_UNKNOWN" and r["src"].startswith(c.ip),
    )
    assert rec["decision"] == "deny"
    assert w.orders_log.read_bytes() == before


# --- point 5: sidecar and service as separate processes in one shared namespace ------------------


def test_pod_style_shared_namespace_captures_the_same_way(meshed: World) -> None:
    """The pod's namespace belongs to a pause-like process; the init step, the sidecar and the
    service each join it with nsenter, as containers of a Kubernetes pod (or compose services
    with network_mode: service:...) do."""
    w = meshed
    p, b = w.hosts["p"], w.hosts["b"]
    assert p.holder is not None and p.enter[0] == "nsenter"
    install_capture(p, inbound_ports="")
    sidecar = start_sidecar(w, "p", "frontend")
    sidecar_ns = os.readlink(f"/proc/{sidecar.popen.pid}/ns/net")
    assert sidecar_ns == os.readlink(f"/proc/{p.holder.pid}/ns/net")
    marker = _marker()
    capture = start_capture(w.lab, b, _between(p, b), "pod")
    answer = client(p, b.ip, SERVICE_PORT, marker)
    payloads = capture.stop()
    assert answer == f"ANSWER from-orders to {marker}\n"
    wire = b"".join(payloads)
    assert {22, 23} <= tls_record_types(payloads)
    assert marker.encode() not in wire and b"ANSWER" not in wire
    out = wait_record(w.record_file("p"), lambda r: r["direction"] == "outbound")
    assert out["decision"] == "allow" and out["original_dst"] == f"{b.ip}:{SERVICE_PORT}"
    assert records(w.record_file("b"))  # B saw it as an ordinary mesh call
