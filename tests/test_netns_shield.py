"""The proof of issue 16: between two hosts (network namespaces joined by a bridge), an
unmodified HTTP client and server under the in-process shield put no plaintext on any interface
of either host, loopback included; the same programs in the sidecar deployment put it on both
hosts' loopback (the hop the in-process shield removes) and nowhere else.

Hosts (10.77.0.0/24, inside the lab's own namespaces): cas .10 the CAS; a .1 frontend (the
client, requests); b .2 orders (the server, http.server and friends: tests/shield_programs).
tcpdump runs on `lo` and `eth0` of a and b for each deployment, with no filter.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mesh_support import ENTRY
from tests.netns_lab import (
    Capture,
    Host,
    Lab,
    have_root_tools,
    records,
    start_capture,
    tcp_payloads,
    tls_record_types,
)
from tests.shield_support import SERVER_KINDS, ShieldMesh, make_shield_mesh

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(have_root_tools() is not None, reason=str(have_root_tools())),
]

CAS_PORT = 8443
SHIELD_PORTS = dict(zip(SERVER_KINDS, range(8080, 8085), strict=True))  # on b, all interfaces
PLAIN_PORTS = dict(zip(SERVER_KINDS, range(9080, 9085), strict=True))  # on b's loopback
SIDECAR_INBOUND = 8443
SIDECAR_OUTBOUND = 15101


def _netshield(*args: str) -> list[str]:
    return [sys.executable, "-m", "netshield", *args]


@pytest.fixture(scope="module")
def lab_world() -> Iterator[tuple[Lab, ShieldMesh, dict[str, Host], str]]:
    root = Path(tempfile.mkdtemp(prefix="netshield-netns-shield-"))
    lab = Lab(root)
    try:
        hosts = {
            name: lab.add_host(name, octet) for name, octet in (("cas", 10), ("a", 1), ("b", 2))
        }
        b = hosts["b"].ip
        addresses = [f"{b}:{port}" for port in SHIELD_PORTS.values()] + [f"{b}:{SIDECAR_INBOUND}"]
        sm = make_shield_mesh(root / "mesh", addresses=addresses)
        cas = lab.start(
            hosts["cas"],
            "cas",
            _netshield(
                "cas",
                "serve",
                "--policy",
                str(sm.mesh.layout.policy),
                "--state",
                str(sm.mesh.layout.cas_state),
                "--listen",
                f"{hosts['cas'].ip}:{CAS_PORT}",
                "--counter",
                str(root / "cas.counter"),
            ),
        )
        yield lab, sm, hosts, str(cas.ready["url"])
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


def _config(sm: ShieldMesh, cas_url: str, service: str, kind: str, **sections: Any) -> Path:
    doc: dict[str, Any] = {
        "service": service,
        "cas": {"url": cas_url, "ca": str(sm.mesh.ca_pem)},
        "platform": {"in_process": str(sm.root / "platforms" / "p1")},
        "records": {"file": str(sm.root / f"{service}-{kind}.records.jsonl")},
        **sections,
    }
    path = sm.root / f"{service}-{kind}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _env(**values: str) -> list[str]:
    return [f"{key}={value}" for key, value in values.items()]


def _captures(lab: Lab, hosts: dict[str, Host], kind: str) -> dict[str, Capture]:
    return {
        f"{name}/{iface}": start_capture(
            lab, hosts[name], "", f"{kind}-{name}-{iface}", interface=iface
        )
        for name in ("a", "b")
        for iface in ("lo", "eth0")
    }


def _client(
    host: Host, sm: ShieldMesh, argv: list[str], target: str, ports: dict[str, int], marker: str
) -> dict[str, Any]:
    out = host.run(
        "env",
        "-C",
        str(sm.workload("frontend")),
        "PYTHONUNBUFFERED=1",
        *_env(
            APP_MODE="requests",
            APP_TARGET=target,
            APP_PORTS=json.dumps(ports),
            APP_MARKER=marker,
        ),
        *argv,
        timeout=60,
    )
    line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    return result


def _where(captures: dict[str, Capture], marker: str) -> dict[str, bool]:
    """Which interfaces carried the marker in the clear (anywhere in the captured bytes)."""
    found = {}
    for where, capture in captures.items():
        capture.stop()
        raw = capture.path.read_bytes()
        found[where] = marker.encode() in raw
    return found


def test_the_in_process_shield_puts_no_plaintext_on_any_interface_and_sidecars_put_it_on_loopback(
    lab_world: tuple[Lab, ShieldMesh, dict[str, Host], str],
) -> None:
    lab, sm, hosts, cas_url = lab_world
    a, b = hosts["a"], hosts["b"]

    # --- the in-process shield on both hosts ---------------------------------------------------
    server_config = _config(sm, cas_url, "orders", "shield")
    lab.start(
        b,
        "orders-shield",
        [
            "env",
            "-C",
            str(sm.workload("orders")),
            *_env(APP_HOST="0.0.0.0", APP_PORTS=json.dumps(SHIELD_PORTS)),
            *_netshield("run", "--config", str(server_config), "--", *ENTRY.split()),
        ],
        ready_event="app-ready",
    )
    client_config = _config(sm, cas_url, "frontend", "shield")
    captures = _captures(lab, hosts, "shield")
    marker = f"PLAINTEXT-MARKER-{secrets.token_hex(8)}"
    reply = _client(
        a,
        sm,
        _netshield("run", "--config", str(client_config), "--", *ENTRY.split()),
        b.ip,
        SHIELD_PORTS,
        marker,
    )
    assert reply["ok"] and marker in reply["reply"], reply
    eth0 = capture_payloads(captures["a/eth0"])
    found = _where(captures, marker)
    assert found == {"a/lo": False, "a/eth0": False, "b/lo": False, "b/eth0": False}
    assert 23 in tls_record_types(eth0)  # the request did cross the wire: as TLS records
    client_records = records(sm.root / "frontend-shield.records.jsonl")
    assert client_records and all(r["proxy"] == "in-process" for r in client_records)
    assert {r["dst"] for r in client_records} == {f"{b.ip}:{SHIELD_PORTS['http']}"}

    # --- the sidecar deployment: the same programs beside sidecars -----------------------------
    lab.start(
        b,
        "orders-plain",
        [
            "env",
            "-C",
            str(sm.workload("orders")),
            *_env(APP_HOST="127.0.0.1", APP_PORTS=json.dumps(PLAIN_PORTS)),
            sys.executable,
            "app.py",
        ],
        ready_event="app-ready",
    )
    sidecar_b = _sidecar_config(
        sm,
        cas_url,
        "orders",
        inbound={
            "listen": f"0.0.0.0:{SIDECAR_INBOUND}",
            "upstream": f"127.0.0.1:{PLAIN_PORTS['http']}",
        },
    )
    sidecar_a = _sidecar_config(
        sm,
        cas_url,
        "frontend",
        outbound=[
            {
                "service": "orders",
                "listen": f"127.0.0.1:{SIDECAR_OUTBOUND}",
                "address": f"{b.ip}:{SIDECAR_INBOUND}",
            }
        ],
    )
    lab.start(b, "sidecar-b", _netshield("sidecar", "--config", str(sidecar_b)))
    lab.start(a, "sidecar-a", _netshield("sidecar", "--config", str(sidecar_a)))
    captures = _captures(lab, hosts, "sidecar")
    marker = f"PLAINTEXT-MARKER-{secrets.token_hex(8)}"
    reply = _client(
        a,
        sm,
        [sys.executable, "app.py"],
        "127.0.0.1",
        {**PLAIN_PORTS, "http": SIDECAR_OUTBOUND},
        marker,
    )
    assert reply["ok"] and marker in reply["reply"], reply
    found = _where(captures, marker)
    assert found == {"a/lo": True, "a/eth0": False, "b/lo": True, "b/eth0": False}


def capture_payloads(capture: Capture) -> list[bytes]:
    capture.stop()
    return tcp_payloads(capture.path.read_bytes())


def _sidecar_config(sm: ShieldMesh, cas_url: str, service: str, **sections: Any) -> Path:
    doc: dict[str, Any] = {
        "service": service,
        "cas": {"url": cas_url, "ca": str(sm.mesh.ca_pem)},
        "platform": {"in_process": str(sm.root / "platforms" / "p1")},
        "workload": {"path": str(sm.workload(service)), "cmd": ENTRY},
        "admin": {"listen": "127.0.0.1:0"},
        "records": {"file": str(sm.root / f"{service}-sidecar.records.jsonl")},
        **sections,
    }
    path = sm.root / f"{service}-sidecar.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
