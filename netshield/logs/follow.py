"""Following a log that is still being written (`netshield logs --follow`), across rotation.

`Follower.poll` yields the complete lines appended since the last call; `Follower.follow` polls
until told to stop. Rotation is noticed by the path naming another file (device, inode): the old
file is read to its end first, then rotated files that came and went between two polls
(FILE.j-1 ... FILE.1, found by the old file's inode at FILE.j), then the new FILE from its start.
A FILE that was missing when following began is read from its start when it appears, after the
rotated files written since then (it may have rotated before the first poll saw it).
The old file is also drained for `grace` seconds more, for a writer that wrote one more line
into it after the rename. A file that shrank, or no longer holds the last bytes read, was
truncated (copytruncate): reading restarts at its beginning. A missing FILE is waited for.

Guarantees: memory is bounded by `max_line` (a partial line is held until its newline; an
overlong one is cut like `reader.lines_of` does); no line of a rotated file is skipped as long as
rotated files live longer than one poll interval; I/O errors on the log are retried, never
raised from `poll`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from netshield.logs.reader import MAX_LINE, RawLine

CHUNK = 65536
MARKER = 64
MAX_ROTATED_SCAN = 1000
SNAPSHOT_ATTEMPTS = 5
MTIME_SLACK = 0.1  # seconds: a file written just after we looked may carry an earlier time


class _Open:
    """One open file being read: fd, identity, offset, partial line, line counter."""

    def __init__(self, path: Path, fd: int, *, at_end: bool) -> None:
        st = os.fstat(fd)
        self.path, self.fd = path, fd
        self.ident = (st.st_dev, st.st_ino)
        self.offset = st.st_size if at_end else 0
        self.pending = bytearray()
        self.discarding = False  # inside an overlong line: drop until its newline
        self.lineno = 0
        self.marker = b""  # the last bytes read, to notice a file rewritten in place
        if self.offset:
            with contextlib.suppress(OSError):
                self.marker = os.pread(fd, MARKER, self.offset - min(MARKER, self.offset))

    def rewritten(self) -> bool:
        """Whether the file no longer holds what we read: truncated, or truncated and rewritten."""
        try:
            size = os.fstat(self.fd).st_size
            if size < self.offset:
                return True
            start = self.offset - len(self.marker)
            return bool(self.marker) and os.pread(self.fd, len(self.marker), start) != self.marker
        except OSError:
            return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _open(path: Path, *, at_end: bool = False) -> _Open | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    return _Open(path, fd, at_end=at_end)


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Follower:
    """Lines appended to `path`; `from_start` also yields what is already there."""

    def __init__(
        self,
        path: str | Path,
        *,
        from_start: bool = False,
        max_line: int = MAX_LINE,
        grace: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_line = max_line
        self.grace = grace
        self._clock = clock
        self._waiting_since = wall()  # rotated files newer than this are news if FILE was missing
        self._current = _open(self.path, at_end=not from_start)
        self._retiring: list[tuple[_Open, float]] = []
        self.rotations = 0
        self.truncations = 0

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        for old, _ in self._retiring:
            old.close()
        self._retiring.clear()

    # --- reading -------------------------------------------------------------------------------
    def _read(self, f: _Open, *, final: bool = False) -> Iterator[RawLine]:
        """New complete lines of `f`; with `final`, also its last unterminated bytes."""
        while True:
            try:
                chunk = os.pread(f.fd, CHUNK, f.offset)
            except OSError:
                return
            if not chunk:
                break
            f.offset += len(chunk)
            f.marker = (f.marker + chunk)[-MARKER:]
            yield from self._split(f, chunk)
        if final and (f.pending or f.discarding):
            f.lineno += 1
            yield RawLine(
                bytes(f.pending[:256] if f.discarding else f.pending),
                str(f.path),
                f.lineno,
                terminated=False,
                overlong=f.discarding,
            )
            f.pending.clear()
            f.discarding = False

    def _split(self, f: _Open, chunk: bytes) -> Iterator[RawLine]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                rest = chunk[start:]
                if not f.discarding:
                    f.pending += rest
                    if len(f.pending) > self.max_line:
                        f.discarding = True
                        del f.pending[256:]
                return
            piece = chunk[start:end]
            start = end + 1
            f.lineno += 1
            if f.discarding or len(f.pending) + len(piece) > self.max_line:
                head = bytes((f.pending + piece)[:256])
                yield RawLine(head, str(f.path), f.lineno, overlong=True)
            elif f.pending:
                yield RawLine(bytes(f.pending) + piece, str(f.path), f.lineno)
            else:
                yield RawLine(piece, str(f.path), f.lineno)
            f.pending.clear()
            f.discarding = False

    def _rotated(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _snapshot(
        self, newer_than: float, old: tuple[int, int] | None
    ) -> tuple[list[_Open], _Open | None]:
        """Open the rotated files newer than the file `old` (modified at or after `newer_than`),
        oldest first, and the live FILE — retried until no rotation happened in between."""
        for attempt in range(SNAPSHOT_ATTEMPTS):
            opened: list[tuple[Path, _Open]] = []
            for index in range(1, MAX_ROTATED_SCAN + 1):
                candidate = self._rotated(index)
                f = _open(candidate)
                if f is None:
                    break
                try:  # file times come from the kernel's coarse clock, a tick behind ours
                    older = os.fstat(f.fd).st_mtime < newer_than - MTIME_SLACK
                except OSError:
                    older = True
                if f.ident == old or older:
                    f.close()
                    break
                opened.append((candidate, f))
            live = _open(self.path)
            steady = all(_ident(path) == f.ident for path, f in opened) and (
                live is None or _ident(self.path) == live.ident
            )
            if steady or attempt == SNAPSHOT_ATTEMPTS - 1:
                # rotating faster than we scan: read what we hold, each file once, oldest first
                # (an fd keeps its file's bytes wherever the file was renamed to since)
                seen: set[tuple[int, int] | None] = {live.ident} if live is not None else set()
                chosen: list[_Open] = []
                for _, f in reversed(opened):
                    if f.ident in seen:
                        f.close()
                        continue
                    seen.add(f.ident)
                    chosen.append(f)
                return chosen, live
            for _, f in opened:
                f.close()
            if live is not None:
                live.close()
        return [], _open(self.path)

    def _switch(self, newer_than: float, old: tuple[int, int] | None) -> Iterator[RawLine]:
        """Read the rotated files we have not seen, then make the live FILE current."""
        middle, live = self._snapshot(newer_than, old)
        for f in middle:
            yield from self._read(f, final=True)
            f.close()
        self._current = live
        if live is not None:
            yield from self._read(live)

    def poll(self) -> Iterator[RawLine]:
        """Every complete line written since the last poll, in order."""
        now = self._clock()
        for old, until in list(self._retiring):
            yield from self._read(old, final=now >= until)
            if now >= until:
                old.close()
                self._retiring.remove((old, until))
        current = self._current
        if current is None:
            if _ident(self.path) is not None:
                yield from self._switch(self._waiting_since, None)
            return
        if current.rewritten():  # truncated in place (copytruncate), maybe rewritten already
            self.truncations += 1
            current.offset, current.marker = 0, b""
            current.pending.clear()
            current.discarding = False
        yield from self._read(current)
        ident = _ident(self.path)
        if ident is None:
            return  # moved away and not yet recreated: keep reading the old one
        if ident != current.ident:
            self.rotations += 1
            yield from self._read(current)
            self._retiring.append((current, now + self.grace))
            try:
                newer_than = os.fstat(current.fd).st_mtime
            except OSError:
                newer_than = self._waiting_since
            yield from self._switch(newer_than, current.ident)
            return

    def follow(
        self,
        stop: Callable[[], bool],
        *,
        interval: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[RawLine]:
        """Poll every `interval` seconds until `stop()` is true."""
        while not stop():
            yield from self.poll()
            sleep(interval)


__all__ = ["Follower"]
