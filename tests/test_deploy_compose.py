"""The compose demo mesh, for real: `docker-compose up` (built on localbase:bookworm from the
container lab) tells the same story as `netshield demo`, and every outcome is in the connection
records and the CAS audit log. Needs root and Docker; always runs in CI."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
LAB_SETUP = REPO.parent / "shared" / "tools" / "container-lab" / "setup.sh"
COMPOSE_DIR = REPO / "deploy" / "compose"
STORY_TIMEOUT = 240


def run(args: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("the container lab needs root")
    assert LAB_SETUP.exists(), f"{LAB_SETUP} is missing (CI runs with shared/ beside the clone)"
    proc = run(["bash", str(LAB_SETUP)], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]


class Compose:
    def __init__(self, project: str) -> None:
        self.project = project
        # an image tag of this run's own: runs from other checkouts build theirs concurrently
        self.env = {
            **os.environ,
            "BASE_IMAGE": "localbase:bookworm",
            "NETSHIELD_IMAGE": f"netshield-test-{project}:latest",
        }
        self.env.pop("DOCKER_BUILDKIT", None)  # the lab's docker CLI has no buildx

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run(
            ["docker-compose", "-p", self.project, *args],
            timeout=timeout,
            cwd=COMPOSE_DIR,
            env=self.env,
        )

    def container(self, service: str) -> str:
        return self("ps", "-q", service).stdout.strip()


@pytest.fixture(scope="module")
def mesh(lab: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    compose = Compose(f"nstest{os.getpid()}")
    assert compose("config", "-q").returncode == 0  # the file is valid for compose v1
    try:
        built = compose("build", timeout=1500)
        assert built.returncode == 0, built.stderr[-3000:]
        up = compose("up", "-d", timeout=600)
        assert up.returncode == 0, up.stderr[-3000:]
        story = compose.container("story")
        waited = run(["docker", "wait", story], timeout=STORY_TIMEOUT)
        run(["docker", "wait", compose.container("attacker")], timeout=STORY_TIMEOUT)
        logs = compose("logs", "--no-color", timeout=60).stdout
        assert waited.returncode == 0, logs[-6000:]
        out = tmp_path_factory.mktemp("compose")
        copied = run(["docker", "cp", f"{story}:/records", str(out)], timeout=60)
        assert copied.returncode == 0, copied.stderr
        probes = {name: probe(compose, name) for name in PROBED}
        audit = compose(  # the operator's credential is on the story's volume alone
            "run", "--rm", "--no-deps", "-T", "--entrypoint", "netshield", "story", "cas",
            "audit", "--cas", "https://cas:8443", "--admin", "/operator", "--json",
            timeout=120,
        )  # fmt: skip
        assert audit.returncode == 0, audit.stderr
        health = run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}", compose.container("orders-sidecar")],
            timeout=30,
        )  # fmt: skip
        yield {
            "exit": int(waited.stdout.strip()),
            "logs": logs,
            "story": compose("logs", "--no-color", "story", timeout=60).stdout,
            "records": out / "records",
            "audit": [json.loads(line) for line in audit.stdout.splitlines() if line.strip()],
            "health": health.stdout.strip(),
            "probes": probes,
        }
    finally:
        compose("down", "-v", "-t", "2", "--remove-orphans", timeout=300)


SERVICES = ("orders", "frontend", "intruder")
SIDECARS = tuple(f"{s}-sidecar" for s in SERVICES)
PROBED = (*SIDECARS, *SERVICES, "legacy")
PROBE = COMPOSE_DIR / "probe.py"


def probe(compose: Compose, service: str) -> dict[str, Any]:
    """deploy/compose/probe.py run inside a running container of `service`, as its own user."""
    with PROBE.open() as script:
        proc = run(
            ["docker", "exec", "-i", compose.container(service), "python3", "-", *SERVICES],
            timeout=120,
            stdin=script,
        )
    assert proc.returncode == 0, f"{service}: {proc.stderr[-2000:]}"
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def records(mesh: dict[str, Any], service: str) -> list[dict[str, Any]]:
    path = mesh["records"] / f"{service}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_docker_compose_up_tells_the_story_and_the_narrator_exits_zero(
    mesh: dict[str, Any],
) -> None:
    assert mesh["exit"] == 0, mesh["story"]
    steps = [line for line in mesh["story"].splitlines() if "| [" in line]
    assert len(steps) == 11 and all("| [ok]" in line for line in steps), mesh["story"]
    for code in (
        "PEER_NOT_AUTHORIZED",
        "TLS_HANDSHAKE_FAILED",
        "PEER_CERT_UNTRUSTED",
        "MEASUREMENT_NOT_ALLOWED",
        "TCB_OUT_OF_DATE",
        "PEER_REVOKED",
        "WAF_BLOCKED",
    ):
        assert code in mesh["story"], code
    assert "netshield logs /records/orders.jsonl" in mesh["story"]
    assert "Traceback" not in mesh["logs"]


def test_transparent_capture_carries_the_allowed_call_as_mutual_tls(mesh: dict[str, Any]) -> None:
    assert "installed capture rules" in mesh["logs"]  # the init steps ran
    allowed = [
        r for r in records(mesh, "frontend") if r["decision"] == "allow" and r["waf"] is None
    ]
    out = [r for r in allowed if r["direction"] == "outbound"]
    assert out and all(r["original_dst"].endswith(":8080") for r in out)  # dialled orders:8080
    assert all(r["peer_identity"].endswith("/svc/orders") for r in allowed)
    # the calls travelled as streams of one tunnel between the two sidecars (on by default)
    tunnels = {r.get("tunnel_id") for r in out} - {None}
    assert tunnels, "no call went through a tunnel"
    inbound = [r for r in records(mesh, "orders") if r["decision"] == "allow"]
    assert inbound and {r["tls_version"] for r in inbound} == {"TLSv1.3"}
    assert all(r["peer_identity"].endswith("/svc/frontend") for r in inbound)
    assert tunnels <= {r.get("tunnel_id") for r in inbound}  # both sidecars name the same tunnel
    # the sidecar image's health check turned healthy: it holds an attested certificate
    assert mesh["health"] == "healthy"


def test_every_denial_is_in_the_connection_records(mesh: dict[str, Any]) -> None:
    intruder = [r for r in records(mesh, "intruder") if r["decision"] == "deny"]
    assert [r["reason"] for r in intruder] == ["PEER_NOT_AUTHORIZED"]
    assert intruder[0]["bytes_in"] == intruder[0]["bytes_out"] == 0
    orders = records(mesh, "orders")
    denied = {r["reason"]: r for r in orders if r["decision"] == "deny"}
    assert set(denied) == {"TLS_HANDSHAKE_FAILED", "PEER_CERT_UNTRUSTED"}  # the attacker
    assert all(r["bytes_out"] == 0 and r["peer_identity"] is None for r in denied.values())
    revoked = [r for r in orders if r["close_reason"] == "PEER_REVOKED"]
    calls = [r for r in revoked if r["direction"] == "inbound"]
    assert len(calls) == 1 and calls[0]["decision"] == "allow"  # allowed, then cut off
    # the tunnel that carried it was cut too, with the same reason
    assert all(
        r.get("tunnel_id") == calls[0].get("tunnel_id") for r in revoked if r is not calls[0]
    )
    # the SQL injection to the native service was stopped at frontend's WAF route (ModSecurity
    # + CRS), and the attacker's XSS at frontend's ingress WAF route
    frontend = [r for r in records(mesh, "frontend") if r["decision"] == "deny"]
    assert sorted(r["reason"] for r in frontend) == ["WAF_BLOCKED", "WAF_BLOCKED"]
    egress = [r for r in frontend if r["listener"] != "ingress:orders"]
    assert "942100" in egress[0]["waf"]["rule_ids"] and egress[0]["waf"]["engine"] == "crs"
    assert egress[0]["original_dst"].endswith(":8080")
    ingress = [r for r in frontend if r["listener"] == "ingress:orders"]
    assert ingress and ingress[0]["direction"] == "inbound" and ingress[0]["waf"]["rule_ids"]


def test_the_tampered_workload_and_the_old_platform_are_refused_at_attestation(
    mesh: dict[str, Any],
) -> None:
    denials = [e["data"] for e in mesh["audit"] if e["event"] == "attest.deny"]
    reasons = {d["reason"] for d in denials}
    assert {"MEASUREMENT_NOT_ALLOWED", "TCB_OUT_OF_DATE"} <= reasons
    old = [d for d in denials if d["reason"] == "TCB_OUT_OF_DATE"]
    assert {d["platform_id"] for d in old} == {"p-old-firmware"}
    allowed = {e["data"]["service"] for e in mesh["audit"] if e["event"] == "attest.allow"}
    assert allowed == {"orders", "frontend", "intruder"}
    revokes = [e["data"] for e in mesh["audit"] if e["event"] == "revoke"]
    assert [(r["kind"], r["service"]) for r in revokes] == [("instance", "frontend")]
    # the attacker saw its own refusals from its sidecars' admin APIs (`netshield wait`)
    attacker = [line for line in mesh["logs"].splitlines() if line.startswith("attacker")]
    assert any("MEASUREMENT_NOT_ALLOWED" in line for line in attacker), attacker
    assert any("TCB_OUT_OF_DATE" in line for line in attacker), attacker


def test_no_sidecar_or_service_container_can_read_a_private_key_or_mint_an_identity(
    mesh: dict[str, Any],
) -> None:
    for name, found in mesh["probes"].items():
        # every private key of the mesh is on its own volume, in the one container that uses it
        assert found["keys"] == [], (name, found)
        # a certificate minted here (no mesh CA key: a self-made CA) is refused by orders
        assert found["minted"].startswith("refused"), (name, found)
    attacker = [line for line in mesh["story"].splitlines() if "looks for the mesh CA" in line]
    assert attacker and "| [ok]" in attacker[0], mesh["story"]  # the attacker's container too


def test_sidecars_get_quotes_of_their_own_workload_only(mesh: dict[str, Any]) -> None:
    for service in SERVICES:
        found = mesh["probes"][f"{service}-sidecar"]["attest"]
        assert found[service] == "OK", found  # the legitimate call keeps working
        for other in set(SERVICES) - {service}:  # the platform measured this container's code
            assert found[other] == "MEASUREMENT_NOT_ALLOWED", (service, other, found)
    for service in (*SERVICES, "legacy"):  # app containers do not even reach the platform
        assert set(mesh["probes"][service]["attest"].values()) == {"no platform socket"}
