"""Backpressure through the relay pair: a reader that stops reading stops the writer, and the
relay process's memory stays bounded however much the writer pushes.

The client and the slow backend are threads with blocking sockets, so only the relays buffer
in this process's memory; RSS is read from /proc/self/status.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
import threading
import time

import pytest

from netshield.net import streams
from tests.test_relay import relay_pair
from tests.test_tls_pki import Pki

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class SlowBackend(threading.Thread):
    """Accepts one connection, reads nothing until `resume` is set, then reads and hashes all."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.resume = threading.Event()
        self.digest = hashlib.sha256()
        self.received = 0

    def run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            self.resume.wait(60)
            buf = bytearray(MiB)
            while n := conn.recv_into(buf):
                self.digest.update(memoryview(buf)[:n])
                self.received += n
        self.listener.close()


class Sender(threading.Thread):
    """Pushes `total` bytes (distinct 1 MiB chunks), half-closes, waits for the EOF back."""

    def __init__(self, port: int, total: int) -> None:
        super().__init__(daemon=True)
        self.port, self.total = port, total
        self.sent = 0
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port)) as sock:
                chunk = bytearray(b"\xa5" * MiB)
                for i in range(self.total // MiB):
                    struct.pack_into("!Q", chunk, (i * 4096) % (MiB - 8), i)
                    sock.sendall(chunk)
                    self.digest.update(chunk)
                    self.sent += len(chunk)
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(60)
                assert sock.recv(1) == b""
        except BaseException as exc:
            self.error = exc


async def push_through_paused_reader(pki: Pki, total: int) -> tuple[int, int]:
    """(bytes sent when the writer stalled, peak RSS growth) for `total` bytes."""
    backend = SlowBackend()
    backend.start()
    async with relay_pair(pki, backend.port) as pair:
        baseline = rss()
        sender = Sender(pair.a_port, total)
        sender.start()
        peak = baseline
        last, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < 0.5:  # until the writer is stuck for 0.5 s
            await asyncio.sleep(0.02)
            peak = max(peak, rss())
            if sender.sent != last:
                last, last_change = sender.sent, time.monotonic()
            assert sender.is_alive(), sender.error
        stalled_at = sender.sent
        backend.resume.set()
        while sender.is_alive() or backend.is_alive():
            await asyncio.sleep(0.02)
            peak = max(peak, rss())
        await pair.wait_results(1)
    assert sender.error is None, sender.error
    assert backend.received == total
    assert backend.digest.digest() == sender.digest.digest()
    return stalled_at, peak - baseline


def test_a_paused_reader_stalls_the_writer_and_bounds_memory(pki: Pki) -> None:
    stalled_at, growth = asyncio.run(push_through_paused_reader(pki, 256 * MiB))
    assert stalled_at < 128 * MiB  # socket buffers and the relays' bounded queues, no more
    assert growth < 48 * MiB, f"RSS grew by {growth / MiB:.0f} MiB"


def test_without_write_limits_the_relay_would_buffer_everything(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Negative twin: with a huge high-water mark the same measurement sees the memory grow."""
    monkeypatch.setattr(streams, "HIGH_WATER", 1024 * MiB)
    monkeypatch.setattr(streams, "LOW_WATER", 512 * MiB)
    stalled_at, growth = asyncio.run(push_through_paused_reader(pki, 128 * MiB))
    assert stalled_at == 128 * MiB  # nothing held the writer back
    assert growth > 64 * MiB


@pytest.mark.slow
def test_one_gib_to_a_paused_reader_keeps_memory_bounded(pki: Pki) -> None:
    stalled_at, growth = asyncio.run(push_through_paused_reader(pki, 1024 * MiB))
    assert stalled_at < 128 * MiB
    assert growth < 48 * MiB, f"RSS grew by {growth / MiB:.0f} MiB"
