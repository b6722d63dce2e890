"""A link between network namespaces cut and restored while sidecars talk across it.

Hosts (tests/netns_lab.py; 10.77.0.0/24 inside the lab's own namespaces): the CAS (.10), A (.1)
with the frontend sidecar, B (.2) with the orders sidecar in front of a streaming echo service.
While a checksummed transfer runs from A to B, B's link to the bridge goes down for a few
seconds: the live connection survives (TCP retransmits through the cut), every byte arrives
intact, and its records on both sides say CLOSED with the full byte count. A connection opened
while the link is down fails with CONNECT_TIMEOUT on A's record; once the link is back, new
connections pass again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.mesh_support import ENTRY, make_mesh
from tests.netns_lab import Lab, have_root_tools, records, wait_record

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(have_root_tools() is not None, reason=str(have_root_tools())),
]

ECHO = r"""
import json, socket, sys, threading
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print(json.dumps({"event": "ready"}), flush=True)
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""

# Sends `size` random bytes at `rate` bytes/s while reading the echo; prints the outcome.
TRANSFER = r"""
import hashlib, json, os, socket, sys, threading, time
port, size, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
payload = os.urandom(size)
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    def send():
        step = 16384
        for i in range(0, size, step):
            s.sendall(payload[i:i + step])
            time.sleep(step / rate)
        s.shutdown(socket.SHUT_WR)
    sender = threading.Thread(target=send)
    sender.start()
    got = hashlib.sha256()
    n = 0
    while chunk := s.recv(65536):
        got.update(chunk)
        n += len(chunk)
    sender.join()
    ok = got.digest() == hashlib.sha256(payload).digest()
    print(json.dumps({"bytes": n, "intact": ok}))
except OSError as err:
    print(json.dumps({"error": type(err).__name__}))
"""

ECHO_PORT = 8080


def _netshield(*args: str) -> list[str]:
    return [sys.executable, "-m", "netshield", *args]


def test_a_link_cut_and_restored_loses_no_byte_and_new_connections_recover() -> None:
    root = Path(tempfile.mkdtemp(prefix="netshield-netns-faults-"))
    root.chmod(0o755)
    lab = Lab(root)
    try:
        hosts = {n: lab.add_host(n, o) for n, o in (("cas", 10), ("a", 1), ("b", 2))}
        mesh = make_mesh(root / "mesh")
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
                f"{hosts['cas'].ip}:8443",
                "--counter",
                str(root / "cas.counter"),
            ),
        )
        lab.start(hosts["b"], "echo", [sys.executable, "-c", ECHO, str(ECHO_PORT)])

        def sidecar(host: str, service: str, **sections: object) -> dict[str, object]:
            doc = {
                "service": service,
                "cas": {"url": str(cas.ready["url"]), "ca": str(mesh.ca_pem)},
                "platform": {"in_process": str(mesh.root / "platforms" / "p1")},
                "workload": {"path": str(mesh.root / "workloads" / service), "cmd": ENTRY},
                "admin": {"listen": "127.0.0.1:0"},
                "records": {"file": str(root / f"{host}.records.jsonl")},
                **sections,
            }
            path = root / f"{host}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            return lab.start(
                hosts[host], f"sidecar-{host}", _netshield("sidecar", "--config", str(path))
            ).ready

        sidecar(
            "b",
            "orders",
            inbound={"listen": "0.0.0.0:15001", "upstream": f"127.0.0.1:{ECHO_PORT}"},
        )
        ready_a = sidecar(
            "a",
            "frontend",
            outbound=[
                {"service": "orders", "listen": "127.0.0.1:0", "address": f"{hosts['b'].ip}:15001"}
            ],
            limits={"connect_timeout": "2s"},
        )
        listen = ready_a["listen"]
        assert isinstance(listen, dict)
        port = str(listen["outbound:orders"]).rsplit(":", 1)[1]

        def transfer(size: int, rate: float) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [*hosts["a"].enter, sys.executable, "-c", TRANSFER, port, str(size), str(rate)],
                stdout=subprocess.PIPE,
                text=True,
            )

        size = 6 * 2**20
        live = transfer(size, rate=1.5 * 2**20)  # ~4 s of sending, across the cut
        time.sleep(1.0)
        bridge_port = f"p{lab.tag}b"[:15]
        lab._in_switch("ip", "link", "set", bridge_port, "down")  # B is cut off
        cut_at = time.monotonic()
        time.sleep(0.5)
        during = transfer(1024, rate=2**20)
        during_out, _ = during.communicate(timeout=60)
        time.sleep(3.0)
        lab._in_switch("ip", "link", "set", bridge_port, "up")  # ... and back
        cut_for = time.monotonic() - cut_at
        live_out, _ = live.communicate(timeout=120)
        assert json.loads(live_out) == {"bytes": size, "intact": True}
        assert "error" in json.loads(during_out) or json.loads(during_out)["bytes"] == 0
        refused = wait_record(
            root / "a.records.jsonl", lambda r: r["close_reason"] == "CONNECT_TIMEOUT"
        )
        assert "did not accept the connection within 2 s" in refused["detail"]
        after = transfer(64 * 1024, rate=16 * 2**20)
        after_out, _ = after.communicate(timeout=60)
        assert json.loads(after_out) == {"bytes": 64 * 1024, "intact": True}
        for side in ("a", "b"):
            recs = records(root / f"{side}.records.jsonl")
            big = [r for r in recs if r["decision"] == "allow" and r["bytes_in"] == size]
            assert len(big) == 1 and big[0]["close_reason"] == "CLOSED", recs
            assert big[0]["bytes_out"] == size
        print(
            f"\n[fault] link cut for {cut_for:.1f} s: {size // 2**20} MiB transfer intact across it; "
            "a connection opened meanwhile: CONNECT_TIMEOUT; after the restore: passes"
        )
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)
