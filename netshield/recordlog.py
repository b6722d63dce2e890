"""Where connection records go: a hash-chained JSON-lines file (rotated by size) and/or stdout.

`RecordSink.write` turns a record into one line and hands it to the kernel with one `os.write`
per target, straight away: nothing is buffered in the process, so a crash loses only the records
of connections that were still open. The file is opened with O_APPEND (created 0640, less if the
umask says so), so several writers (two sidecars, a restarted one) interleave whole lines.

Hash chain (`netshield.logs.chain`): every line carries ``"chain": {"seq", "prev"}``, the SHA-256
of the line before it, so `netshield logs --verify` detects a deleted, edited or reordered record.
The chain continues across rotation, restarts and several writers: each write takes an exclusive
`flock` on the file and, when the file is not where this sink left it (another writer appended,
the file was rotated, moved or truncated), re-reads the last line before chaining to it. A torn
last line (a crash mid-write) is ended with a newline inside the same single write.

Rotation: with ``max_bytes > 0`` a write that would take the file past `max_bytes` first renames
FILE to FILE.1 (FILE.1 to FILE.2, ..., keeping `keep` rotated files; older ones are deleted) and
starts a new FILE whose first line chains to FILE.1's last. External rotation works without a
signal: before each write the sink checks that FILE still names its file and reopens it if
logrotate moved it (``create`` mode) or truncated it (``copytruncate``, which can lose the
records written between its copy and its truncate).

Guarantees: `write` never raises for an I/O failure (a full disk, a closed stdout): it counts the
record as dropped and logs once per outage, so the data plane keeps running (the sidecar's
documented choice: keep proxying, count the lost records in `netshield_records_dropped_total`);
a record the disk had room for only part of is cut off again, so the file holds whole lines
that still chain. Records are never written to the diagnostic log. `close` is idempotent and
never closes standard output.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from netshield.logs.chain import Link, chained_line, link_of, next_link
from netshield.record import ConnectionRecord

log = logging.getLogger("netshield.records")

FILE_MODE = 0o640
STDOUT_FD = 1
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
"""`records.max_bytes` in the sidecar config: rotate at 100 MiB (0 turns built-in rotation off)."""
DEFAULT_KEEP = 10
"""`records.keep`: rotated files kept (FILE.1 ... FILE.10); older ones are deleted."""
TAIL_LIMIT = 1024 * 1024
"""How far back the sink looks for the last line to chain to (a record is well under this)."""
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_SETTLE_ATTEMPTS = 16


def rotated_path(path: Path, index: int) -> Path:
    """FILE.index: where rotation keeps older records (1 is the newest)."""
    return path.with_name(f"{path.name}.{index}")


@dataclass(frozen=True)
class Tail:
    """The end of a log file: its last complete line, and bytes after it without a newline."""

    last_line: bytes | None  # without its newline
    fragment: bytes | None  # a torn last line (no newline), or None
    last_link: Link | None  # the chain link of `last_line`, if it has one

    @property
    def chain_to(self) -> bytes | None:
        """The line the next record must chain to."""
        return self.fragment if self.fragment is not None else self.last_line


def read_tail(fd: int, size: int, limit: int = TAIL_LIMIT) -> Tail:
    """The last line (and torn fragment) of the first `size` bytes of `fd`, reading backwards."""
    buf, pos = b"", size
    while pos > 0 and len(buf) <= limit:
        step = min(65536, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        end = buf.rfind(b"\n")
        if end > 0 and buf.rfind(b"\n", 0, end) >= 0:
            break
    if len(buf) > limit and pos > 0:
        log.warning("the last line of the connection log is over %d bytes: chain restarts", limit)
        return Tail(None, None, None)
    end = buf.rfind(b"\n")
    fragment = buf[end + 1 :] if end + 1 < len(buf) else None
    if end < 0:
        return Tail(None, fragment, None)
    start = buf.rfind(b"\n", 0, end) + 1
    line = buf[start:end]
    return Tail(line, fragment, link_of(line))


def _tail_of(path: Path) -> Tail | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return read_tail(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a regular file takes it in one write; a pipe may take less
        view = view[os.write(fd, view) :]


class _Target:
    """Standard output: a file descriptor we do not own, and whether it is failing."""

    def __init__(self, name: str, fd: int) -> None:
        self.name, self.fd = name, fd
        self.failing = False

    def emit(self, data: bytes) -> bool:
        try:
            _write_all(self.fd, data)
        except OSError as err:
            _trouble(self, err)
            return False
        _recovered(self)
        return True


def _trouble(target: _Target | _ChainedFile, err: OSError) -> None:
    if not target.failing:
        log.warning("cannot write connection records to %s: %s", target.name, err)
    target.failing = True


def _recovered(target: _Target | _ChainedFile) -> None:
    if target.failing:
        log.warning("writing connection records to %s again", target.name)
    target.failing = False


class _ChainedFile:
    """The records file: chained lines, one locked write each, rotation by size."""

    def __init__(self, path: Path, *, max_bytes: int, keep: int) -> None:
        self.path, self.name = path, str(path)
        self.max_bytes, self.keep = max_bytes, keep
        self.fd = os.open(path, _OPEN_FLAGS, FILE_MODE)
        st = os.fstat(self.fd)
        self.ident = (st.st_dev, st.st_ino)
        self.failing = False
        self.rotations = 0
        self._rotation_failing = False
        self._end = -1  # where our last write ended; -1: unknown, re-read the tail
        self._last_line: bytes | None = None
        self._last_link: Link | None = None
        self._needs_newline = False

    # --- the file may have moved under us --------------------------------------------------------
    def _current(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self.ident

    def _reopen(self) -> None:
        fd = os.open(self.path, _OPEN_FLAGS, FILE_MODE)
        os.close(self.fd)
        st = os.fstat(fd)
        self.fd, self.ident, self._end = fd, (st.st_dev, st.st_ino), -1

    def _resync(self, size: int) -> None:
        """Find the line to chain to: the end of this file, or (empty) the newest rotated one."""
        if size > 0:
            tail = read_tail(self.fd, size)
            self._last_line, self._last_link = tail.chain_to, tail.last_link
            self._needs_newline = os.pread(self.fd, 1, size - 1) != b"\n"
            return
        self._needs_newline = False
        before = _tail_of(rotated_path(self.path, 1))
        if before is None or before.chain_to is None:
            return  # keep what we wrote last (None: a new chain)
        ours = self._last_link.seq if self._last_link is not None else -1
        theirs = before.last_link.seq if before.last_link is not None else -1
        if self._last_line is None or theirs > ours:
            self._last_line, self._last_link = before.chain_to, before.last_link

    # --- rotation ----------------------------------------------------------------------------------
    def _rotate(self) -> bool:
        """Shift FILE.i to FILE.i+1 (dropping the oldest), FILE to FILE.1; False if it failed."""
        try:
            extra = self.keep + 1
            while rotated_path(self.path, extra).exists():  # left by a larger `keep` before
                rotated_path(self.path, extra).unlink()
                extra += 1
            for index in range(self.keep - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(rotated_path(self.path, index), rotated_path(self.path, index + 1))
            os.rename(self.path, rotated_path(self.path, 1))
        except OSError as err:
            if not self._rotation_failing:
                log.warning("cannot rotate %s (writing on without rotating): %s", self.path, err)
            self._rotation_failing = True
            return False
        self._rotation_failing = False
        self.rotations += 1
        return True

    # --- writing -------------------------------------------------------------------------------------
    def write(self, record: ConnectionRecord) -> tuple[bytes, bool]:
        """Chain and append the record; (the line, whether it reached the file)."""
        try:
            line = self._write(record)
        except OSError as err:
            _trouble(self, err)
            self._end = -1
            return chained_line(record, next_link(self._last_line, self._last_link)), False
        _recovered(self)
        return line, True

    def _write(self, record: ConnectionRecord) -> bytes:
        for _ in range(_SETTLE_ATTEMPTS):
            if not self._current():
                self._reopen()
            fd = self.fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if not self._current():
                    continue  # moved while we waited for the lock
                size = os.fstat(fd).st_size
                if size != self._end:
                    self._resync(size)
                link = next_link(self._last_line, self._last_link)
                line = chained_line(record, link)
                data = b"\n" + line if self._needs_newline else line
                if self.max_bytes and size > 0 and size + len(data) > self.max_bytes:  # noqa: SIM102
                    if self._rotate():
                        continue  # the next round opens the new file and chains to FILE.1
                try:
                    _write_all(fd, data)
                except OSError:
                    with contextlib.suppress(OSError):  # a full disk took part of the line:
                        os.ftruncate(fd, size)  # drop the record whole, leave no torn line
                    raise
                self._end = size + len(data)
                self._last_line, self._last_link = line[:-1], link
                self._needs_newline = False
                return line
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        raise OSError(f"{self.path} kept moving while writing a record")

    def close(self) -> None:
        os.close(self.fd)


class RecordSink:
    """Writes each record as one chained line to `file` (appending) and/or to standard output.

    `max_bytes` > 0 rotates the file by size, keeping `keep` rotated files (see the module doc).
    Opening the file raises OSError (a missing directory, no permission). `written` counts
    records, `dropped` the (record, target) writes that failed.
    """

    def __init__(
        self,
        file: Path | None = None,
        *,
        stdout: bool = False,
        stdout_fd: int = STDOUT_FD,
        max_bytes: int = 0,
        keep: int = DEFAULT_KEEP,
    ):
        if max_bytes < 0 or keep < 1:
            raise ValueError("RecordSink needs max_bytes >= 0 (0: no rotation) and keep >= 1")
        self._closed = False
        self.path = file
        self.written = 0
        self.dropped = 0
        self._file = _ChainedFile(file, max_bytes=max_bytes, keep=keep) if file else None
        self._stdout = _Target("standard output", stdout_fd) if stdout else None
        self._last_line: bytes | None = None  # the chain of a stdout-only sink
        self._last_link: Link | None = None

    @property
    def rotations(self) -> int:
        """How often this sink rotated the file."""
        return self._file.rotations if self._file else 0

    def write(self, record: ConnectionRecord) -> None:
        """Write the record now (one line, one write per target)."""
        if self.closed:
            raise ValueError("write to a closed RecordSink")
        if self._file is not None:
            line, ok = self._file.write(record)
            if not ok:
                self.dropped += 1
        else:
            link = next_link(self._last_line, self._last_link)
            line = chained_line(record, link)
            self._last_line, self._last_link = line[:-1], link
        if self._stdout is not None and not self._stdout.emit(line):
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
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> RecordSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_MAX_BYTES",
    "FILE_MODE",
    "RecordSink",
    "Tail",
    "read_tail",
    "rotated_path",
]
