"""The admin API served on a real loopback port: every endpoint, /readyz 200 and 503 with a
reason code, /identity without credentials, errors in the house JSON shape, idempotent close."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from netshield.netaddr import HostPort
from netshield.record import ConnectionRecord, rfc3339
from netshield.sidecar.admin import AdminProviders, AdminServer
from netshield.sidecar.metrics import SidecarMetrics


@dataclass
class State:
    ready: tuple[bool, str] = (False, "NO_CREDENTIALS")
    identity: dict[str, Any] | None = None
    connections: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False
    metrics: SidecarMetrics = field(default_factory=SidecarMetrics)

    def status(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("agent state is broken")
        return {"renewals": 2, "last_error": None, "not_after": datetime(2030, 1, 1, tzinfo=UTC)}

    def providers(self) -> AdminProviders:
        return AdminProviders(
            ready=lambda: self.ready,
            metrics=self.metrics.render,
            connections=lambda: self.connections,
            identity=lambda: self.identity,
            status=self.status,
        )


@pytest.fixture
async def served() -> AsyncIterator[tuple[State, str]]:
    state = State()
    server = await AdminServer.start(state.providers(), HostPort("127.0.0.1", 0))
    assert server.address.host == "127.0.0.1" and server.address.port > 0
    try:
        yield state, f"http://{server.address}"
    finally:
        await server.close()


async def get(url: str) -> tuple[int, str, Any]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        text = await resp.text()
        body = await resp.json() if resp.content_type == "application/json" else text
        return resp.status, resp.headers.get("Content-Type", ""), body


async def test_healthz_answers_while_the_process_runs_even_when_not_ready(
    served: tuple[State, str],
) -> None:
    _, base = served
    assert (await get(base + "/healthz"))[::2] == (200, {"status": "ok"})


async def test_readyz_is_503_with_the_reason_code_until_ready(served: tuple[State, str]) -> None:
    state, base = served
    status, _, body = await get(base + "/readyz")
    assert status == 503 and body["ready"] is False
    assert body["error"]["reason"] == "NO_CREDENTIALS" and body["error"]["hint"]
    state.ready = (False, "listeners not bound yet")
    status, _, body = await get(base + "/readyz")
    assert status == 503 and body["error"]["reason"] == "NOT_READY"
    assert "listeners not bound yet" in body["error"]["message"]
    state.ready = (True, "")
    status, _, body = await get(base + "/readyz")
    assert status == 200 and body == {"ready": True}


async def test_metrics_are_prometheus_text(served: tuple[State, str]) -> None:
    state, base = served
    state.metrics.connection_opened("inbound")
    state.metrics.connection_closed(
        ConnectionRecord(
            ts=rfc3339(datetime.now(UTC)),
            conn_id="c1",
            direction="inbound",
            listener="inbound",
            src="a",
            dst="b",
            decision="allow",
            reason="OK",
            detail="d",
        )
    )
    status, content_type, text = await get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert (
        'netshield_connections_total{decision="allow",direction="inbound",reason="OK"} 1.0' in text
    )


async def test_connections_lists_live_connections(served: tuple[State, str]) -> None:
    state, base = served
    assert (await get(base + "/connections"))[::2] == (200, [])
    live = {
        "conn_id": "01jabcdefghjkmnp",
        "direction": "inbound",
        "src": "10.0.0.7:5000",
        "dst": "127.0.0.1:8080",
        "peer_identity": "spiffe://acme/svc/frontend",
        "started": "2025-01-31T12:00:00.000Z",
        "bytes_in": 4,
        "bytes_out": 0,
    }
    state.connections = [live]
    assert (await get(base + "/connections"))[::2] == (200, [live])


async def test_identity_is_503_without_credentials_and_the_facts_with_them(
    served: tuple[State, str],
) -> None:
    state, base = served
    status, _, body = await get(base + "/identity")
    assert status == 503 and body["error"]["reason"] == "NO_CREDENTIALS"
    state.identity = {
        "spiffe_id": "spiffe://acme/svc/orders",
        "serial": "1f3a",
        "not_after": datetime(2030, 1, 1, tzinfo=UTC),
        "measurement": "ab" * 32,
        "epoch": 1,
        "policy_version": 3,
    }
    status, _, body = await get(base + "/identity")
    assert status == 200 and body["spiffe_id"] == "spiffe://acme/svc/orders"
    assert body["not_after"] == "2030-01-01T00:00:00+00:00"


async def test_status_is_served_and_a_provider_failure_is_a_json_500_with_an_incident(
    served: tuple[State, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, base = served
    status, _, body = await get(base + "/status")
    assert status == 200 and body["renewals"] == 2
    state.fail = True
    with caplog.at_level(logging.ERROR, logger="netshield.sidecar.admin"):
        status, _, body = await get(base + "/status")
    assert status == 500 and body["error"]["reason"] == "INTERNAL"
    assert "agent state is broken" not in str(body)  # internals stay in the log
    incident = body["error"]["message"].split("incident ")[1].rstrip(")")
    assert incident in caplog.text


async def test_unknown_path_and_wrong_method_get_the_json_error_shape(
    served: tuple[State, str],
) -> None:
    _, base = served
    status, _, body = await get(base + "/nope")
    assert status == 404 and body["error"]["reason"] == "NOT_FOUND"
    async with aiohttp.ClientSession() as session, session.post(base + "/healthz") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["reason"] == "METHOD_NOT_ALLOWED"


async def test_close_is_idempotent_and_stops_listening() -> None:
    server = await AdminServer.start(State().providers(), HostPort("127.0.0.1", 0))
    url = f"http://{server.address}/healthz"
    assert (await get(url))[0] == 200
    await server.close()
    await server.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(url)


async def test_a_taken_port_fails_to_start_with_os_error() -> None:
    first = await AdminServer.start(State().providers(), HostPort("127.0.0.1", 0))
    try:
        with pytest.raises(OSError):
            await AdminServer.start(State().providers(), first.address)
    finally:
        await first.close()
