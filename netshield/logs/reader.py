"""Reading connection logs: lines and records from files (plain or .gz), rotated sets, or stdin.

The reusable record-reading API (for `netshield logs`, `explain`, `--verify` and a live view):
`open_log` opens a path (``-`` is standard input, ``*.gz`` is decompressed on the fly),
`log_files` lists a log with its rotated files oldest first, `lines_of` splits a byte stream into
`RawLine`s and `records_of` turns them into `Entry`s (record + chain link + where it came from).
`netshield.logs.follow.Follower` yields the same `RawLine`s from a file that is still growing.

Guarantees: memory is constant in the size of the input (one line at a time, and a line is cut at
`MAX_LINE` bytes: the rest of an overlong line is skipped, never buffered); a line that is not a
record (bad JSON, a wrong field, an overlong line) is skipped and counted in `ReadStats.corrupt`,
a last line without a newline that does not parse in `ReadStats.truncated`; nothing here raises
for bad content. I/O errors (a missing file) raise OSError for the caller to report.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from netshield.logs.chain import Link, link_from
from netshield.record import ConnectionRecord

MAX_LINE = 1024 * 1024
"""Lines longer than this are not records: they are skipped (and counted) without buffering."""
STDIN = "-"
_ROTATED = re.compile(r"\.(\d{1,6})(\.gz)?")


@dataclass(frozen=True, slots=True)
class RawLine:
    """One line of a log, without its newline."""

    data: bytes  # the line's bytes (for an overlong line: only its first bytes)
    source: str  # the file it came from ("-" for stdin)
    lineno: int  # 1-based, within `source`
    terminated: bool = True  # False: the input ended before a newline
    overlong: bool = False  # longer than MAX_LINE: `data` is cut, the line is not a record


@dataclass(frozen=True, slots=True)
class Entry:
    """A record read from a log, with its chain link (None: an unchained line) and its line."""

    record: ConnectionRecord
    link: Link | None
    line: RawLine


@dataclass
class ReadStats:
    """What a read saw: lines, records, and lines skipped because they are not records."""

    lines: int = 0
    records: int = 0
    corrupt: int = 0
    truncated: int = 0
    first_problem: str | None = None  # where and why the first skipped line was skipped

    @property
    def skipped(self) -> int:
        return self.corrupt + self.truncated

    def skip(self, line: RawLine, why: str, *, truncated: bool = False) -> None:
        if truncated:
            self.truncated += 1
        else:
            self.corrupt += 1
        if self.first_problem is None:
            self.first_problem = f"{line.source}:{line.lineno}: {why}"

    def describe(self) -> str:
        """One line for stderr, e.g. "read 1200 lines: 1197 records, 2 corrupt, 1 truncated"."""
        text = f"read {self.lines} lines: {self.records} records"
        if self.corrupt:
            text += f", {self.corrupt} corrupt line{'s' if self.corrupt != 1 else ''} skipped"
        if self.truncated:
            text += f", {self.truncated} truncated line{'s' if self.truncated != 1 else ''} skipped"
        if self.first_problem:
            text += f" (first: {self.first_problem})"
        return text


def lines_of(stream: BinaryIO, source: str, *, max_line: int = MAX_LINE) -> Iterator[RawLine]:
    """The lines of a byte stream, at most `max_line` bytes of each held at a time."""
    readline = stream.readline
    lineno = 0
    while True:
        chunk = readline(max_line + 1)
        if not chunk:
            return
        lineno += 1
        if chunk.endswith(b"\n"):
            yield RawLine(chunk[:-1], source, lineno)
        elif len(chunk) <= max_line:
            yield RawLine(chunk, source, lineno, terminated=False)
        else:
            more = chunk
            while more and not more.endswith(b"\n"):
                more = readline(max_line)
            yield RawLine(chunk[:256], source, lineno, terminated=bool(more), overlong=True)


def parse_line(line: RawLine, stats: ReadStats) -> Entry | None:
    """The record on `line`, or None (counted in `stats`) if it is not one."""
    stats.lines += 1
    if line.overlong:
        stats.skip(line, f"longer than {MAX_LINE} bytes")
        return None
    if not line.data.strip():
        stats.skip(line, "empty line", truncated=not line.terminated)
        return None
    try:
        data = json.loads(line.data)
    except (ValueError, RecursionError) as err:
        why = f"not a record: not JSON ({err})" if isinstance(err, ValueError) else "not a record"
        stats.skip(line, why[:160], truncated=not line.terminated)
        return None
    try:
        record = ConnectionRecord.from_dict(data)
    except (ValueError, TypeError) as err:
        why = str(err) if isinstance(err, ValueError) else "not a record"
        stats.skip(line, why.splitlines()[0][:160], truncated=not line.terminated)
        return None
    stats.records += 1
    return Entry(record, link_from(data), line)


def records_of(lines: Iterable[RawLine], stats: ReadStats) -> Iterator[Entry]:
    """The records among `lines`; the rest are counted in `stats`."""
    for line in lines:
        entry = parse_line(line, stats)
        if entry is not None:
            yield entry


@contextlib.contextmanager
def open_log(path: str | Path) -> Iterator[BinaryIO]:
    """Open a log for reading: ``-`` is standard input, a ``.gz`` file is decompressed."""
    if str(path) == STDIN:
        yield sys.stdin.buffer
        return
    if str(path).endswith(".gz"):
        with gzip.open(path, "rb") as stream:
            yield stream  # type: ignore[misc]  # GzipFile is a BinaryIO
        return
    with open(path, "rb") as stream:
        yield stream


def log_files(path: str | Path, *, rotated: bool = True) -> list[str]:
    """`path` and, with `rotated`, its rotated files (FILE.N[.gz] ... FILE.1), oldest first.

    Every existing FILE.N is listed, gaps included: a missing middle file then shows as a break
    in the hash chain instead of going unnoticed. FILE itself need not exist if rotated ones do.
    """
    if str(path) == STDIN or not rotated:
        return [str(path)]
    base = Path(path)
    found: list[tuple[int, str]] = []
    with contextlib.suppress(OSError):
        for sibling in base.parent.iterdir():
            if not sibling.name.startswith(base.name):
                continue
            match = _ROTATED.fullmatch(sibling.name[len(base.name) :])
            if match:
                found.append((int(match.group(1)), str(sibling)))
    older = [name for _, name in sorted(found, reverse=True)]
    return [*older, str(path)] if base.exists() or not older else older


def read_records(
    paths: Iterable[str | Path],
    stats: ReadStats,
    *,
    on_open: Callable[[str], None] | None = None,
) -> Iterator[Entry]:
    """Every record of every path, in order (OSError if a path cannot be opened)."""
    for path in paths:
        if on_open is not None:
            on_open(str(path))
        with open_log(path) as stream:
            yield from records_of(lines_of(stream, str(path)), stats)


__all__ = [
    "MAX_LINE",
    "STDIN",
    "Entry",
    "RawLine",
    "ReadStats",
    "lines_of",
    "log_files",
    "open_log",
    "parse_line",
    "read_records",
    "records_of",
]
