"""WAF routes speak HTTP/1.1 as clients use it: keep-alive to the caller and a pooled keep-alive
upstream, pipelining, chunked bodies, 100-continue, limits, smuggling shapes refused and never
forwarded, deadlines, trailers dropped; every request is inspected (ModSecurity + CRS from
Debian's packages) off the event loop, and its verdict lands in the connection record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest

from netshield.waf.engine import Engine, load_engine
from netshield.waf.settings import WafSettings
from tests.waf_support import Caller, get, post, running_route

CRS = WafSettings(engine="crs")
ATTACK = "/search?id=1%27%20UNION%20SELECT%20password%20FROM%20users--"


@pytest.fixture(scope="module")
def crs() -> Iterator[Engine]:
    engine = load_engine(CRS)
    yield engine
    engine.close()


async def test_keep_alive_serves_many_requests_on_one_connection_over_one_pooled_upstream(
    crs: Engine,
) -> None:
    async with running_route(CRS, crs) as route:
        caller = await Caller.connect(route.port)
        for i in range(3):
            await caller.send(get(f"/item/{i}?name=O%27Brien"))
            status, headers, body = await caller.response()
            assert status == 200 and body == f"ok GET /item/{i}?name=O%27Brien 0\n".encode()
            assert headers.get("connection") != "close"
        second = await Caller.connect(route.port)  # another caller reuses the idle upstream
        await second.send(get("/again"))
        assert (await second.response())[0] == 200
        assert len({s.peer_port for s in route.service.seen}) == 1
        assert [s.path_qs for s in route.service.seen][-1] == "/again"
        caller.close()
        second.close()
        records = await route.wait_records(2)
        assert records[0].waf is not None and records[0].waf.request_count == 3
        assert [r.status for r in records[0].waf.requests] == [200, 200, 200]


async def test_connection_close_is_honoured_after_the_response(crs: Engine) -> None:
    async with running_route(CRS, crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(get("/once", close=True))
        status, headers, _ = await caller.response()
        assert status == 200 and headers["connection"] == "close"
        assert await caller.closed()


async def test_pipelined_requests_are_each_inspected_and_answered_in_order(crs: Engine) -> None:
    async with running_route(CRS, crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(get("/first") + get(ATTACK) + get("/third"))
        statuses = [(await caller.response())[0] for _ in range(3)]
        assert statuses == [200, 403, 200]
        assert [s.path_qs for s in route.service.seen] == ["/first", "/third"]
        caller.close()
        (record,) = await route.wait_records(1)
        assert record.reason == "WAF_BLOCKED" and record.waf is not None
        actions = [(r.request_id.rsplit("-", 1)[1], r.action) for r in record.waf.requests]
        assert actions == [("1", "pass"), ("2", "block"), ("3", "pass")]


async def test_an_attack_split_across_chunks_is_seen_and_never_forwarded(crs: Engine) -> None:
    head = (
        b"POST /form HTTP/1.1\r\nHost: native.test\r\nUser-Agent: t/1\r\nAccept: */*\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def chunked(*parts: bytes) -> bytes:
        return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"

    async with running_route(CRS, crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(head + chunked(b"q=1' UNION SEL", b"ECT password FROM users--"))
        assert (await caller.response())[0] == 403
        await caller.send(head + chunked(b"name=O'Br", b"ien&city=Cork"))
        status, _, body = await caller.response()
        assert status == 200 and body == b"ok POST /form 22\n"
        (seen,) = route.service.seen
        assert seen.body == b"name=O'Brien&city=Cork" and seen.headers["Content-Length"] == "22"
        assert "Transfer-Encoding" not in seen.headers


async def test_expect_100_continue_is_answered_before_the_body_and_refused_when_too_large(
    crs: Engine,
) -> None:
    settings = replace(CRS, max_body=1000)
    async with running_route(settings, crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(
            b"POST /up HTTP/1.1\r\nHost: native.test\r\nUser-Agent: t/1\r\nAccept: */*\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n"
        )
        assert (await caller.response())[0] == 100
        await caller.send(b"hello")
        assert (await caller.response())[0] == 200
        assert "Expect" not in route.service.seen[0].headers
        big = await Caller.connect(route.port)
        await big.send(
            b"POST /up HTTP/1.1\r\nHost: native.test\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5000\r\n\r\n"
        )
        assert (await big.response())[0] == 413  # no 100 Continue: the body is not wanted
        assert await big.closed()
        assert len(route.service.seen) == 1


@pytest.mark.parametrize(
    ("data", "status", "rule"),
    [
        (get("/", extra="X-Big: " + "a" * 20_000 + "\r\n"), 431, "NS-920110"),
        (post("/up", b"a" * 2000), 413, "NS-920120"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "NS-920140",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
            400,
            "NS-920140",
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400, "NS-920140"),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400, "NS-920140"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "NS-920150"),
        (b"GET http://elsewhere.test/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "NS-920150"),
    ],
    ids=["431", "413", "te-cl", "cl-cl", "obs-fold", "bare-lf", "two-hosts", "absolute-form"],
)
async def test_refused_requests_get_their_status_are_recorded_and_never_forwarded(
    crs: Engine, data: bytes, status: int, rule: str
) -> None:
    async with running_route(replace(CRS, max_body=1000), crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(get("/before") + data)
        assert (await caller.response())[0] == 200
        got, _, body = await caller.response()
        assert got == status and b"request id" in body
        assert await caller.closed()
        assert [s.path_qs for s in route.service.seen] == ["/before"]
        (record,) = await route.wait_records(1)
        assert record.reason == "HTTP_REFUSED" and record.decision == "deny"
        assert record.waf is not None and record.waf.rule_ids == (rule,)


async def test_a_request_not_sent_whole_within_the_deadline_gets_408(crs: Engine) -> None:
    settings = replace(CRS, request_timeout=timedelta(seconds=1))
    async with running_route(settings, crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        assert (await caller.response())[0] == 408
        (record,) = await route.wait_records(1)
        assert record.close_reason == "REQUEST_TIMEOUT" and route.service.seen == []
        idle = await Caller.connect(route.port)  # an idle keep-alive connection is not a timeout
        await idle.send(get("/"))
        assert (await idle.response())[0] == 200
        await asyncio.sleep(1.5)
        await idle.send(get("/still-there"))
        assert (await idle.response())[0] == 200


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(crs: Engine) -> None:
    settings = replace(CRS, keepalive_timeout=timedelta(seconds=1))
    async with running_route(settings, crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(get("/"))
        assert (await caller.response())[0] == 200
        assert await caller.closed(timeout=20)
        (record,) = await route.wait_records(1)
        assert record.close_reason == "IDLE_TIMEOUT" and record.decision == "allow"


async def test_trailers_never_reach_the_service(crs: Engine) -> None:
    async with running_route(CRS, crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(
            b"POST /t HTTP/1.1\r\nHost: native.test\r\nUser-Agent: t/1\r\nAccept: */*\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Admin: yes\r\n\r\n"
        )
        assert (await caller.response())[0] == 200
        (seen,) = route.service.seen
        assert seen.body == b"hi" and "X-Admin" not in seen.headers


async def test_chunked_responses_are_relayed_chunked_and_the_connection_kept(crs: Engine) -> None:
    async with running_route(CRS, crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(get("/chunked") + get("/after"))
        status, headers, body = await caller.response()
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert body == b"one two three"
        assert (await caller.response())[0] == 200


async def test_detect_mode_forwards_and_records_what_block_mode_refuses(crs: Engine) -> None:
    async with running_route(replace(CRS, mode="detect"), crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(get(ATTACK, close=True))
        assert (await caller.response())[0] == 200
        (record,) = await route.wait_records(1)
        assert record.decision == "allow" and record.waf is not None
        assert record.waf.action == "detect" and "942100" in record.waf.rule_ids
        assert route.service.seen[0].path_qs.startswith("/search?id=1")


async def test_mode_off_forwards_without_rules_but_keeps_the_http_checks() -> None:
    async with running_route(replace(CRS, mode="off"), None) as route:
        caller = await Caller.connect(route.port)
        await caller.send(get(ATTACK) + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert [(await caller.response())[0] for _ in range(2)] == [200, 400]
        (record,) = await route.wait_records(1)
        assert record.waf is not None and record.waf.requests[0].rule_ids == ()


async def test_the_record_holds_each_requests_verdict_with_request_id_score_and_where(
    crs: Engine,
) -> None:
    async with running_route(CRS, crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(get(ATTACK))
        status, _, body = await caller.response()
        caller.close()
        (record,) = await route.wait_records(1)
        assert record.waf is not None
        (request,) = record.waf.requests
        assert status == 403 and f"request id {request.request_id}".encode() in body
        assert request.request_id.startswith(record.conn_id)
        assert request.action == "block" and request.anomaly_score >= 5
        assert ("942100", "ARGS:id") in request.matched and request.path == "/search"
        assert record.waf.engine == "crs" and record.waf.mode == "block"


async def test_response_inspection_blocks_a_data_leak_only_when_turned_on() -> None:
    on = replace(CRS, inspect_responses=True)
    engine = load_engine(on)
    try:
        async with running_route(on, engine) as route:
            caller = await Caller.connect(route.port)
            await caller.send(get("/leak"))
            status, _, body = await caller.response()
            assert status == 403 and b"mysql" not in body
            (record,) = await route.wait_records(1)
            assert record.waf is not None and any(r.startswith("95") for r in record.waf.rule_ids)
    finally:
        engine.close()
    async with running_route(CRS, load_engine(CRS)) as route:
        caller = await Caller.connect(route.port)
        await caller.send(get("/leak"))
        status, _, body = await caller.response()
        assert status == 200 and b"mysql" in body


async def test_a_second_connection_keeps_flowing_while_a_1_mib_body_is_inspected(
    crs: Engine,
) -> None:
    body = b"comment=" + b"lorem ipsum dolor sit amet " * (1024 * 1024 // 27)
    body = (body + b"." * 1024)[: 1024 * 1024]
    assert len(body) == CRS.max_body  # 1 MiB, the default limit
    async with running_route(CRS, crs) as route:
        pinger = await Caller.connect(route.port)
        await pinger.send(get("/warm"))
        await pinger.response()
        big = await Caller.connect(route.port)
        inspected = asyncio.ensure_future(_send_and_answer(big, post("/big", body)))
        rounds = 0
        gaps: list[float] = []
        while not inspected.done():
            t0 = time.monotonic()
            await pinger.send(get(f"/ping/{rounds}"))
            assert (await pinger.response())[0] == 200
            gaps.append(time.monotonic() - t0)
            rounds += 1
        status, inspect_seconds = await inspected
        print(
            f"\n1 MiB body inspected in {inspect_seconds:.2f} s; meanwhile {rounds} ping-pong "
            f"round trips on a second connection (slowest {max(gaps) * 1000:.1f} ms)"
        )
        assert status == 200
        # Inspection on the event loop would allow no round trip until it finished.
        assert rounds >= 3 and max(gaps) < inspect_seconds


async def _send_and_answer(caller: Caller, data: bytes) -> tuple[int, float]:
    t0 = time.monotonic()
    await caller.send(data)
    status = (await caller.response(timeout=120))[0]
    return status, time.monotonic() - t0


async def test_verdicts_are_counted_in_the_metrics_by_action_and_rule(crs: Engine) -> None:
    async with running_route(CRS, crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(get("/fine") + get(ATTACK))
        assert [(await caller.response())[0] for _ in range(2)] == [200, 403]
        caller.close()
        await route.wait_records(1)
        text = route.rt.metrics.render().decode()
    assert 'netshield_waf_requests_total{action="block",engine="crs"} 1.0' in text
    assert 'netshield_waf_requests_total{action="pass",engine="crs"} 1.0' in text
    assert 'netshield_waf_rule_matches_total{rule="942100"} 1.0' in text


async def test_a_pooled_connection_the_service_closed_is_not_reused(crs: Engine) -> None:
    async with running_route(CRS, crs) as route:
        caller = await Caller.connect(route.port)
        await caller.send(get("/one"))
        assert (await caller.response())[0] == 200
        pool = next(iter(route.rt.http.pools.values()))
        (idle,) = list(pool._idle)
        idle.writer.transport.abort()  # as if the service had closed it while it sat idle
        await asyncio.sleep(0.1)
        await caller.send(get("/two"))
        assert (await caller.response())[0] == 200
        assert [s.path_qs for s in route.service.seen] == ["/one", "/two"]
        assert len({s.peer_port for s in route.service.seen}) == 2  # a fresh connection
