"""Native routes end to end: a real CAS and sidecar process, `python3 -m http.server` as the
native service, and curl as the caller. ModSecurity with the OWASP CRS (installed by
scripts/test) blocks an SQL injection before any byte of it reaches the native service, and
lets the benign request with an apostrophe through."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mesh_support import Mesh, Proc, make_mesh, roundtrip

pytestmark = pytest.mark.slow


class HttpServer:
    """`python3 -m http.server` on a free loopback port; its access log is its stderr."""

    def __init__(self, root: Path) -> None:
        (root / "www").mkdir()
        (root / "www" / "index.html").write_text("hello from the native service\n")
        self.log = root / "native.access.log"
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
                str(root / "www"),
            ],
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
        )
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (...) ..."
        self.port = int(line.split(" port ")[1].split()[0])

    def access_log(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.wait(timeout=10)


@pytest.fixture
def native_mesh(tmp_path: Path) -> Iterator[tuple[Mesh, HttpServer, Proc]]:
    server = HttpServer(tmp_path)
    extra = f"native_services:\n  legacy:\n    address: 127.0.0.1:{server.port}\n    waf: true\n"
    mesh = make_mesh(tmp_path, policy_extra=extra)
    try:
        mesh.start_cas()
        frontend = mesh.start_sidecar(
            "frontend", outbound=[{"service": "legacy", "listen": "127.0.0.1:0"}]
        )
        yield mesh, server, frontend
    finally:
        mesh.stop_all()
        server.stop()


def curl(url: str) -> tuple[int, str]:
    out = subprocess.run(
        ["curl", "-sS", "--path-as-is", "-m", "20", "-w", "\n%{http_code}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def test_native_route_blocks_sql_injection_and_passes_the_benign_request(
    native_mesh: tuple[Mesh, HttpServer, Proc],
) -> None:
    mesh, server, frontend = native_mesh
    host, port = frontend.addr("outbound:legacy")
    base = f"http://{host}:{port}"

    status, body = curl(f"{base}/index.html?author=O%27Reilly")
    assert status == 200 and "hello from the native service" in body
    allowed = mesh.wait_record("frontend", lambda r: r["decision"] == "allow")
    assert allowed["dst"] == f"127.0.0.1:{server.port}" and allowed["reason"] == "OK"
    waf = allowed["waf"]
    assert waf["action"] == "pass" and waf["engine"] == "crs" and waf["request_count"] == 1
    assert waf["requests"][0]["action"] == "pass" and waf["requests"][0]["status"] == 200
    assert allowed["bytes_out"] > 0

    status, body = curl(f"{base}/?id=1'%20OR%20'1'='1")
    blocked = mesh.wait_record("frontend", lambda r: r["decision"] == "deny")
    (request,) = blocked["waf"]["requests"]
    assert status == 403 and f"request id {request['request_id']}" in body
    assert "942100" not in body  # the caller learns less than the record says
    assert blocked["reason"] == "WAF_BLOCKED" and "942100" in blocked["detail"]
    assert blocked["waf"]["action"] == "block" and "942100" in blocked["waf"]["rule_ids"]
    assert {"rule_id": "942100", "where": "ARGS:id"} in request["matched"]
    assert request["anomaly_score"] >= 5 and request["status"] == 403
    assert blocked["bytes_in"] == 0

    time.sleep(0.3)
    log = server.access_log()
    assert "GET /index.html?author=O%27Reilly" in log
    assert "id=1" not in log and log.count("GET ") == 1


def test_a_malformed_request_on_a_native_route_is_refused_and_never_forwarded(
    native_mesh: tuple[Mesh, HttpServer, Proc],
) -> None:
    mesh, server, frontend = native_mesh
    answer = roundtrip(frontend.addr("outbound:legacy"), b"\x16\x03\x01 not http\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"request id" in answer
    rec = mesh.wait_record("frontend", lambda r: r["reason"] == "HTTP_REFUSED")
    assert rec["waf"]["rule_ids"] == ["NS-920100"] and rec["waf"]["action"] == "refuse"
    time.sleep(0.3)
    assert "GET" not in server.access_log() and "code 400" not in server.access_log()


def test_a_sidecar_whose_crs_rules_cannot_load_refuses_to_start(tmp_path: Path) -> None:
    from tests.support import netshield_cmd

    extra = "native_services:\n  legacy:\n    address: 127.0.0.1:9\n    waf: true\n"
    mesh = make_mesh(tmp_path, policy_extra=extra)
    try:
        mesh.start_cas()
        config = mesh.sidecar_config(
            "frontend",
            outbound=[{"service": "legacy", "listen": "127.0.0.1:0"}],
            waf={"engine": "crs", "rules": str(tmp_path / "no-crs-here")},
        )
        done = subprocess.run(
            netshield_cmd("sidecar", "--config", str(config)),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        mesh.stop_all()
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "no OWASP Core Rule Set under" in done.stderr and '"event": "ready"' not in done.stdout
