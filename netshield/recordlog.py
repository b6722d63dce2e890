"""Where connection records go: a JSON-lines file and/or standard output.

`RecordSink.write` turns a record into one line and hands it to the kernel with one `os.write`
per target, straight away: nothing is buffered in the process, so a crash loses only the records
of connections that were still open. The file is opened with O_APPEND (created 0640, less if the
umask says so), so several writers (two sidecars, a restarted one) interleave whole lines.
Writes are synchronous: a line is a few hundred bytes, cheaper than a thread hop.

Guarantees: `write` never raises for an I/O failure (a full disk, a closed stdout): it counts the
record as dropped and logs once per outage, so the data plane keeps running; records are never
written to the diagnostic log. `close` is idempotent and never closes standard output.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

from netshield.record import ConnectionRecord

log = logging.getLogger("netshield.records")

FILE_MODE = 0o640
STDOUT_FD = 1


class _Target:
    """One destination: a file descriptor, whether we own it, and whether it is failing."""

    def __init__(self, name: str, fd: int, *, owned: bool) -> None:
        self.name, self.fd, self.owned = name, fd, owned
        self.failing = False

    def emit(self, data: bytes) -> bool:
        try:
            view = memoryview(data)
            while view:  # a regular file takes it in one write; a pipe may take less
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError as err:
            if not self.failing:
                log.warning("cannot write connection records to %s: %s", self.name, err)
            self.failing = True
            return False
        if self.failing:
            log.warning("writing connection records to %s again", self.name)
        self.failing = False
        return True


class RecordSink:
    """Writes each record as one line to `file` (appending) and/or to standard output.

    Opening the file raises OSError (a missing directory, no permission). `written` counts
    records, `dropped` the (record, target) writes that failed.
    """

    def __init__(
        self, file: Path | None = None, *, stdout: bool = False, stdout_fd: int = STDOUT_FD
    ):
        self._targets: list[_Target] = []
        self._closed = False
        self.path = file
        self.written = 0
        self.dropped = 0
        if file is not None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._targets.append(_Target(str(file), os.open(file, flags, FILE_MODE), owned=True))
        if stdout:
            self._targets.append(_Target("standard output", stdout_fd, owned=False))

    def write(self, record: ConnectionRecord) -> None:
        """Write the record now (one line, one write per target)."""
        if self.closed:
            raise ValueError("write to a closed RecordSink")
        data = (record.to_json() + "\n").encode("ascii")
        for target in self._targets:
            if not target.emit(data):
                self.dropped += 1
        self.written += 1

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the file (not standard output). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for target in self._targets:
            if target.owned:
                os.close(target.fd)

    def __enter__(self) -> RecordSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["FILE_MODE", "RecordSink"]
