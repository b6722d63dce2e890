"""SIGTERM on the CAS with feed long-polls and streams pending: every reader gets its answer, the
process exits 0 without waiting for them, and nothing but log lines reaches stderr (no traceback)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from netshield.tls.material import cas_client_context
from tests.support import Domain, cas_subprocess, make_domain

pytestmark = pytest.mark.slow

POLLS = 8


@pytest.fixture
def domain(tmp_path: Path) -> Domain:
    return make_domain(tmp_path)


def hold_feed(url: str, ca_pem: bytes) -> asyncio.Task[list[int]]:
    """Long-polls and a stream held open; the task ends when all are answered or ended."""
    ctx = cas_client_context(ca_pem=ca_pem)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=0))

    async def poll() -> int:
        async with session.get(f"{url}/v1/feed", params={"since": "999999", "wait": "30"}) as r:
            await r.json()
            return r.status

    async def stream() -> int:
        async with session.get(f"{url}/v1/feed/stream", params={"since": "0"}) as r:
            async for _line in r.content:
                pass
            return r.status

    async def all_of() -> list[int]:
        try:
            return list(await asyncio.gather(*(poll() for _ in range(POLLS)), stream()))
        finally:
            await session.close()

    return asyncio.create_task(all_of())


async def test_sigterm_with_pending_long_polls_exits_without_waiting_for_them_or_a_traceback(
    domain: Domain,
) -> None:
    with cas_subprocess(domain) as cas:
        readers = hold_feed(cas.url, domain.ca_pem)
        await asyncio.sleep(1.0)  # the requests reach the CAS and wait there
        assert not readers.done()  # the twin: without a stop they are still waiting
        started = time.monotonic()
        cas.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(cas.proc.wait, 20)
        took = time.monotonic() - started
        statuses = await asyncio.wait_for(readers, 10)
    stderr = (domain.root / "cas.stderr").read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "Lock is not acquired" not in stderr, stderr
    assert statuses == [200] * (POLLS + 1)  # every long-poll answered, the stream ended cleanly
    print(
        f"\nthe CAS stopped {took:.2f} s after SIGTERM with {POLLS} long-polls and a stream pending"
    )
    # the long-polls wait 30 s: a CAS that waited for them would take that long (or be killed)
    assert took < 15, f"the CAS took {took:.2f} s to stop"
