"""The compose mesh with PostgreSQL and two CAS replicas, for real: `docker-compose -f
docker-compose.yml -f docker-compose.replicas.yml` (built on localbase:bookworm). A sidecar
attests through the one name `cas`; with the first replica killed, the operator revokes it
through the same name, the sidecar learns it from the second replica, and the audit log is one
intact chain. Needs root and Docker; always runs in CI. (The whole demo story also passes on
this variant: `docker-compose -f docker-compose.yml -f docker-compose.replicas.yml up`.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.test_deploy_compose import Compose, lab, run  # noqa: F401 - the lab fixture

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.postgres]

FILES = ("-f", "docker-compose.yml", "-f", "docker-compose.replicas.yml")
DEADLINE = 180.0


class Replicated(Compose):
    def __call__(self, *args: str, timeout: float = 300):  # type: ignore[no-untyped-def]
        return super().__call__(*FILES, *args, timeout=timeout)


def health(compose: Compose, service: str) -> str:
    proc = run(
        ["docker", "inspect", "-f", "{{.State.Health.Status}}", compose.container(service)],
        timeout=30,
    )
    return proc.stdout.strip()


def until(check: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def operator(compose: Compose, *args: str) -> str:
    """A `netshield cas ...` command as the operator: the story container (in the frontend
    app's network namespace) holds the admin credential."""
    proc = compose(
        "run", "--rm", "--no-deps", "-T", "--entrypoint", "netshield", "story", "cas", *args,
        "--cas", "https://cas:8443", "--admin", "/operator", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def replicated(lab: None) -> Iterator[Compose]:  # noqa: F811
    compose = Replicated(f"nsrepl{int(time.time()) % 100000}")
    assert compose("config", "-q").returncode == 0
    try:
        built = compose("build", "postgres", "cas", timeout=1500)
        assert built.returncode == 0, built.stderr[-3000:]
        up = compose("up", "-d", "orders-sidecar", "cas-2", "frontend", timeout=600)
        assert up.returncode == 0, up.stderr[-3000:]
        until(lambda: health(compose, "orders-sidecar") == "healthy", "orders-sidecar healthy")
        until(lambda: health(compose, "cas-2") == "healthy", "cas-2 healthy")
        yield compose
    finally:
        compose("down", "-v", "-t", "2", "--remove-orphans", timeout=300)


def test_two_replicas_serve_one_database_and_the_mesh_fails_over(replicated: Compose) -> None:
    compose = replicated
    ready = [
        json.loads(line.split("|", 1)[1])
        for line in compose("logs", "--no-color", "cas", "cas-2").stdout.splitlines()
        if '"event": "ready"' in line
    ]
    assert len(ready) == 2
    assert {r["database"] for r in ready} == {"postgresql://netshield@postgres:5432/netshield"}
    assert len({r["state_id"] for r in ready}) == 1  # one state, two replicas

    # the first replica goes away; the name `cas` now reaches the second one alone
    assert compose("kill", "cas").returncode == 0
    entries = [json.loads(line) for line in operator(compose, "audit", "--json").splitlines()]
    orders = [
        e for e in entries if e["event"] == "attest.allow" and e["data"]["service"] == "orders"
    ]
    assert orders, entries
    serial = orders[-1]["data"]["serial"]
    operator(compose, "revoke", "--serial", serial, "--note", "replica failover test")

    # the orders sidecar, whose feed was at either replica, learns it from the survivor
    def learned() -> bool:
        logs = compose("logs", "--no-color", "orders-sidecar").stdout
        return f"certificate {serial} is revoked" in logs

    until(learned, "the orders sidecar to learn the revocation")
    verdict = operator(compose, "audit", "--verify")
    assert "audit log intact" in verdict
    assert "Traceback" not in compose("logs", "--no-color").stdout
