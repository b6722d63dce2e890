"""Relay bytes between two connected `Stream`s until both directions end, and say why it ended.

Responsibility: couple a downstream (who called) and an upstream (where the call goes) stream,
then supervise them: both directions finished, one side reset, no byte moved for the idle
timeout, a stop event, or a close from outside through a `RelayHandle` (revocation, drain,
credential expiry).
Guarantees: `relay` returns exactly one `RelayResult` whose `close_reason` is CLOSED, PEER_RESET
(downstream reset), UPSTREAM_RESET, a TLS stream's failure reason (TLS_STREAM_ERROR mid-stream;
the detail says which side), IDLE_TIMEOUT, the stop reason or the handle's reason; when it
returns, both streams are closed or closing (a graceful close that does not finish within
`close_grace` seconds becomes an abort). When the calling task is cancelled both streams are
aborted and `CancelledError` propagates. Counting is two plain ints kept by the streams; the
supervisor wakes a few times per idle timeout, never per chunk.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from netshield.net.streams import Stream
from netshield.reasons import Reason

MAX_IDLE_TICK = 15.0
"""The longest the supervisor sleeps between idle checks (seconds)."""


@dataclass
class RelayResult:
    """What a finished relay moved and why it ended (up = downstream -> upstream)."""

    bytes_up: int
    bytes_down: int
    close_reason: Reason
    detail: str = ""


class RelayHandle:
    """Close a live relay from outside with a reason; read its live byte counts."""

    def __init__(self) -> None:
        self.reason: Reason | None = None
        self._streams: tuple[Stream, Stream] | None = None
        self._wakeup: asyncio.Future[None] | None = None

    def close(self, reason: Reason) -> None:
        """End the relay with `reason` (the first reason given wins; later calls do nothing)."""
        if self.reason is None:
            self.reason = reason
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    @property
    def bytes_up(self) -> int:
        return 0 if self._streams is None else self._streams[0].bytes_read

    @property
    def bytes_down(self) -> int:
        return 0 if self._streams is None else self._streams[1].bytes_read

    def _attach(self, downstream: Stream, upstream: Stream, wakeup: asyncio.Future[None]) -> None:
        self._streams = (downstream, upstream)
        self._wakeup = wakeup
        if self.reason is not None:
            wakeup.set_result(None)


async def relay(
    downstream: Stream,
    upstream: Stream,
    *,
    idle_timeout: float,
    stop: asyncio.Event | None = None,
    stop_reason: Reason = Reason.DRAINED,
    handle: RelayHandle | None = None,
    close_grace: float = 1.0,
) -> RelayResult:
    """Relay until the connection ends; see the module docstring for the outcomes."""
    if idle_timeout <= 0:
        raise ValueError("idle_timeout must be positive")
    loop = asyncio.get_running_loop()
    handle = handle if handle is not None else RelayHandle()
    handle._attach(downstream, upstream, loop.create_future())
    stop_task: asyncio.Task[bool] | None = None
    if stop is not None:
        if stop.is_set():
            handle.close(stop_reason)
        else:
            stop_task = asyncio.create_task(stop.wait())
            stop_task.add_done_callback(
                lambda task: None if task.cancelled() else handle.close(stop_reason)
            )
    try:
        downstream.start_relay(upstream)
        upstream.start_relay(downstream)
        reason = await _supervise(downstream, upstream, handle, idle_timeout, close_grace)
    except asyncio.CancelledError:
        downstream.abort()
        upstream.abort()
        raise
    finally:
        if stop_task is not None:
            stop_task.cancel()
    detail = ""
    for stream in (downstream, upstream):
        if stream.failure is not None:
            detail = stream.failure.detail
            break
    return RelayResult(downstream.bytes_read, upstream.bytes_read, reason, detail)


async def _supervise(
    downstream: Stream,
    upstream: Stream,
    handle: RelayHandle,
    idle_timeout: float,
    close_grace: float,
) -> Reason:
    loop = asyncio.get_running_loop()
    tick = min(max(idle_timeout / 8, 0.005), MAX_IDLE_TICK)
    down_closed, up_closed = downstream.closed, upstream.closed
    wakeup = handle._wakeup
    assert wakeup is not None
    last_total = -1
    last_change = loop.time()
    while True:
        waiting = [f for f in (down_closed, up_closed, wakeup) if not f.done()]
        await asyncio.wait(waiting, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
        if handle.reason is not None:
            await _close_both(downstream, upstream, close_grace)
            return handle.reason
        if down_closed.done() and down_closed.result() is not Reason.CLOSED:
            upstream.abort()
            return _broken(down_closed.result(), Reason.PEER_RESET)
        if up_closed.done() and up_closed.result() is not Reason.CLOSED:
            downstream.abort()
            return _broken(up_closed.result(), Reason.UPSTREAM_RESET)
        if down_closed.done() and up_closed.done():
            return Reason.CLOSED
        total = downstream.bytes_read + upstream.bytes_read
        now = loop.time()
        if total != last_total:
            last_total, last_change = total, now
        elif now - last_change >= idle_timeout:
            await _close_both(downstream, upstream, close_grace)
            return Reason.IDLE_TIMEOUT


def _broken(reason: Reason, reset: Reason) -> Reason:
    """A stream that ended badly: a reset is named by its side, a TLS failure by its reason."""
    return reset if reason is Reason.PEER_RESET else reason


async def _close_both(downstream: Stream, upstream: Stream, grace: float) -> None:
    """Graceful close of both (TLS: close_notify), aborting what is not closed after `grace`."""
    streams = (downstream, upstream)
    for stream in streams:
        stream.close()
    pending = [s.closed for s in streams if not s.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=grace)
    for stream in streams:
        if not stream.closed.done():
            stream.abort()
