"""The outbound tunnels of one sidecar, per destination sidecar: which tunnel a new stream takes.

Responsibility: keep the live tunnels per key (the destination's identity and address and the
credentials they were opened with) and hand out one with room, opening at most one new tunnel
per key at a time and at most `max_per_peer` in all; remember destinations that do not speak
tunnels (they get one connection per stream for a while, then are asked again).
Guarantees: concurrent callers for one key share one dial: the caller that dials gets what the
dial returned, the callers that waited get the new tunnel, or None when it did not bring one
(then each goes its own way, one connection per stream, as without tunnels). A tunnel leaves the
pool when it closes or drains (GOAWAY, lifetime, a credential swap); streams already on it
finish there. Nothing here does I/O itself: the dial is the caller's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from netshield.reasons import Reason
from netshield.tunnel.link import Tunnel

__all__ = ["Full", "TunnelPool"]

T = TypeVar("T")


class Full:
    """Every tunnel to the destination is full and `max_per_peer` are open."""

    __slots__ = ("open", "streams")

    def __init__(self, open_: int, streams: int) -> None:
        self.open = open_
        self.streams = streams


@dataclass
class _Peer:
    tunnels: list[Tunnel] = field(default_factory=list)
    dialing: asyncio.Future[bool] | None = None  # True once it brought a tunnel
    direct_until: float = 0.0


class TunnelPool:
    """Tunnels by destination key; see the module docstring."""

    def __init__(self) -> None:
        self._peers: dict[Hashable, _Peer] = {}

    def __iter__(self) -> Iterator[Tunnel]:
        for peer in list(self._peers.values()):
            yield from list(peer.tunnels)

    def __len__(self) -> int:
        return sum(len(p.tunnels) for p in self._peers.values())

    async def acquire(
        self,
        key: Hashable,
        dial: Callable[[], Awaitable[Tunnel | T]],
        *,
        max_per_peer: int,
    ) -> Tunnel | T | Full | None:
        """A tunnel with room for one more stream; see the module docstring for the rest."""
        loop = asyncio.get_running_loop()
        peer = self._peers.setdefault(key, _Peer())
        while True:
            if peer.direct_until > loop.time():
                return None
            for tunnel in peer.tunnels:
                if tunnel.has_room():
                    return tunnel
            if peer.dialing is not None:
                if not await asyncio.shield(peer.dialing):
                    return None  # the dial brought no tunnel: go direct
                continue
            live = [t for t in peer.tunnels if not t.draining]
            if len(live) >= max_per_peer:
                return Full(len(live), sum(t.open_count for t in live))
            return await self._dial(peer, dial)

    async def _dial(self, peer: _Peer, dial: Callable[[], Awaitable[Tunnel | T]]) -> Tunnel | T:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        peer.dialing = done
        brought = False
        try:
            result = await dial()
            if isinstance(result, Tunnel):
                self._keep(peer, result)
                brought = True
            return result
        finally:
            peer.dialing = None
            done.set_result(brought)

    def _keep(self, peer: _Peer, tunnel: Tunnel) -> None:
        peer.tunnels.append(tunnel)

        def gone(_closed: asyncio.Future[Reason]) -> None:
            if tunnel in peer.tunnels:
                peer.tunnels.remove(tunnel)

        tunnel.closed.add_done_callback(gone)

    def go_direct(self, key: Hashable, seconds: float) -> None:
        """The destination does not speak tunnels: no dial for it during `seconds`."""
        peer = self._peers.setdefault(key, _Peer())
        peer.direct_until = asyncio.get_running_loop().time() + seconds

    def retire(self, keep: Callable[[Hashable], bool]) -> list[Tunnel]:
        """Take out of service the tunnels whose key `keep` refuses (they finish their streams
        where they are); the list of them, for the caller to drain."""
        retired: list[Tunnel] = []
        for key, peer in list(self._peers.items()):
            if keep(key):
                continue
            retired += peer.tunnels
            peer.tunnels = []
            if peer.dialing is None:
                del self._peers[key]
        return retired
