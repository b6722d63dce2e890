"""Processes the benchmark starts: pinned to a core, waited for, measured from /proc, stopped.

`Proc.cpu_seconds()` is utime + stime of the whole process from /proc/PID/stat (threads that
already exited included, which matters for stunnel's thread per connection); `rss_mb()` is
VmRSS. Every process is started by the benchmark itself and stopped by it, by its own pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """Something the benchmark needs did not work; the message says what to do."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    ready: dict[str, Any]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds so far, two ways: utime + stime from /proc/PID/stat (clock ticks, all
        threads including exited ones) and the scheduler's nanosecond runtime of the live
        threads (/proc/PID/task/*/schedstat). `cpu_delta` picks the right one."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = (int(fields[11]) + int(fields[12])) / CLK_TCK
        ns = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ns += int((task / "schedstat").read_text().split()[0])
        return ticks, ns / 1e9

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def cpu_delta(before: tuple[float, float], after: tuple[float, float]) -> float:
    """CPU seconds between two `cpu_seconds` readings: the scheduler's nanosecond count, unless
    threads exited in between (stunnel's per-connection threads), then the tick count."""
    ticks, precise = after[0] - before[0], after[1] - before[1]
    return precise if precise >= ticks - 2.5 / CLK_TCK else ticks


def pinned(core: int | None) -> Callable[[], None] | None:
    """A preexec_fn pinning the child (and every thread it starts) to `core`."""
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def start(
    name: str,
    cmd: Sequence[str],
    *,
    workdir: Path,
    core: int | None,
    ready: Callable[[str], dict[str, Any] | None] | None = None,
    port: int | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> Proc:
    """Start `cmd` pinned to `core`; wait until `ready(line)` accepts a stdout line, or until
    `port` accepts connections. stderr (and stdout after the ready line) go to a log file."""
    log = workdir / f"{name}.log"
    popen = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE if ready else log.open("ab"),
        stderr=log.open("ab"),
        stdin=subprocess.DEVNULL,
        preexec_fn=pinned(core),  # noqa: PLW1509 - affinity must be set before exec
        env={**os.environ, **(env or {})},
        cwd=workdir,
    )
    deadline = time.monotonic() + timeout
    found: dict[str, Any] | None = None
    if ready is not None:
        assert popen.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(popen.stdout, selectors.EVENT_READ)
        while found is None and time.monotonic() < deadline and popen.poll() is None:
            if sel.select(timeout=0.2):
                line = popen.stdout.readline()
                if not line:
                    break
                found = ready(line.decode(errors="replace"))
        sel.close()
    elif port is not None:
        while time.monotonic() < deadline and popen.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                found = {"port": port}
                break
            time.sleep(0.05)
    if found is None:
        popen.kill()
        popen.wait()
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise BenchError(f"{name} did not start ({' '.join(cmd)}):\n{tail}")
    return Proc(name, popen, found, log)


def json_ready(event: str | None = "ready") -> Callable[[str], dict[str, Any] | None]:
    """A ready test for programs that print one JSON line (netshield, nsload serve)."""

    def check(line: str) -> dict[str, Any] | None:
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        if event is None or doc.get("event") == event:
            return doc
        return None

    return check


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
