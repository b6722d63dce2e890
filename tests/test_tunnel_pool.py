"""The outbound tunnel pool: one dial shared by concurrent callers, the per-peer limit, peers
that do not tunnel, tunnels retired after a credential swap. Real tunnels over loopback TLS."""

from __future__ import annotations

import asyncio

import pytest

from netshield.tunnel.link import Tunnel
from netshield.tunnel.pool import Full, TunnelPool
from netshield.tunnel.protocol import TunnelSettings
from tests.test_tls_pki import Pki
from tests.tunnel_support import Sink, serve_tcp, tunnel_pair


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def test_concurrent_callers_share_one_dial_and_one_tunnel(pki: Pki) -> None:
    async def main() -> None:
        server, port = await serve_tcp(Sink)
        async with tunnel_pair(pki, port) as ends:
            pool = TunnelPool()
            dials = 0

            async def dial() -> Tunnel:
                nonlocal dials
                dials += 1
                await asyncio.sleep(0.05)
                return ends.client

            got = await asyncio.gather(
                *(pool.acquire("k", dial, max_per_peer=4) for _ in range(10))
            )
            assert dials == 1 and all(t is ends.client for t in got)
            assert list(pool) == [ends.client] and len(pool) == 1
            # a closed tunnel leaves the pool; the next caller dials again
            ends.client.abort()
            await ends.client.closed
            assert len(pool) == 0
        server.close()

    asyncio.run(main())


def test_a_dial_without_a_tunnel_goes_to_the_dialer_and_the_waiters_go_direct() -> None:
    async def main() -> None:
        pool = TunnelPool()

        async def dial() -> str:
            await asyncio.sleep(0.05)
            return "an ordinary connection"

        first = asyncio.create_task(pool.acquire("k", dial, max_per_peer=4))
        await asyncio.sleep(0)
        others = await asyncio.gather(*(pool.acquire("k", dial, max_per_peer=4) for _ in range(3)))
        assert await first == "an ordinary connection"
        assert others == [None, None, None]
        assert len(pool) == 0

    asyncio.run(main())


def test_a_peer_marked_direct_is_not_dialled_until_the_mark_expires() -> None:
    async def main() -> None:
        pool = TunnelPool()
        calls: list[str] = []

        async def dial() -> str:
            calls.append("dial")
            return "conn"

        pool.go_direct("k", 0.2)
        assert await pool.acquire("k", dial, max_per_peer=1) is None
        assert calls == []
        await asyncio.sleep(0.25)
        assert await pool.acquire("k", dial, max_per_peer=1) == "conn"
        assert calls == ["dial"]

    asyncio.run(main())


def test_full_tunnels_at_the_per_peer_limit_are_reported_not_dialled(pki: Pki) -> None:
    async def main() -> None:
        server, port = await serve_tcp(Sink)
        settings = TunnelSettings(max_streams=1)
        async with tunnel_pair(pki, port, settings=settings) as ends:
            pool = TunnelPool()

            async def dial() -> Tunnel:
                return ends.client

            tunnel = await pool.acquire("k", dial, max_per_peer=1)
            assert tunnel is ends.client
            await ends.open()  # its one stream
            full = await pool.acquire("k", dial, max_per_peer=1)
            assert isinstance(full, Full) and (full.open, full.streams) == (1, 1)
        server.close()

    asyncio.run(main())


def test_retired_tunnels_take_no_new_streams_and_the_next_caller_dials_a_fresh_one(
    pki: Pki,
) -> None:
    async def main() -> None:
        server, port = await serve_tcp(Sink)
        async with tunnel_pair(pki, port) as old, tunnel_pair(pki, port) as new:
            pool = TunnelPool()
            handed = iter([old.client, new.client])

            async def dial() -> Tunnel:
                return next(handed)

            assert await pool.acquire(("svc", "gen-1"), dial, max_per_peer=4) is old.client
            retired = pool.retire(lambda key: key == ("svc", "gen-2"))
            assert retired == [old.client] and len(pool) == 0
            assert await pool.acquire(("svc", "gen-2"), dial, max_per_peer=4) is new.client
        server.close()

    asyncio.run(main())
