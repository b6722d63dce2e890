"""Idle keep-alive connections to one service behind a WAF route, reused across requests and
callers.

Guarantees: a connection is handed to one request at a time (taken out of the pool while in
use); a connection that the service closed, or that sat idle longer than `idle_timeout`, is
never handed out; at most `max_idle` idle connections are kept, the oldest closed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Upstream:
    """One connection to the service (plain TCP, or mesh mTLS for ingress routes)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: Any = None  # the verified PeerInfo of a mesh connection
    reused: bool = False
    idle_since: float = field(default_factory=time.monotonic)
    served: int = 0

    def usable(self, now: float, idle_timeout: float) -> bool:
        return (
            not self.writer.transport.is_closing()
            and not self.reader.at_eof()
            and now - self.idle_since < idle_timeout
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class UpstreamPool:
    def __init__(self, *, max_idle: int = 32, idle_timeout: float = 30.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: deque[Upstream] = deque()
        self.opened = 0
        self.reuses = 0

    def take(self) -> Upstream | None:
        """The most recently used idle connection that is still usable, or None."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now, self.idle_timeout):
                conn.reused = True
                self.reuses += 1
                return conn
            conn.close()
        return None

    def give_back(self, conn: Upstream) -> None:
        conn.idle_since = time.monotonic()
        conn.served += 1
        self._idle.append(conn)
        while len(self._idle) > self.max_idle:
            self._idle.popleft().close()

    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


__all__ = ["Upstream", "UpstreamPool"]
