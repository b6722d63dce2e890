"""`netshield logs --verify`: check the connection log's hash chain (see `netshield.logs.chain`).

`ChainVerifier` is fed every line of the log, oldest file first (`reader.log_files`), and says
where the chain breaks and what that most likely means: records missing (deleted; the sequence
number jumps), records out of order (reordered; it goes back), or a changed line (edited; the
sequence is right but the hash is not). Lines that are not chained records (bad JSON, a record
without a chain, a torn write) are problems too: the log is audit evidence.

What a chain cannot show by itself: records removed from the very end of the newest file (or an
edit of the newest record), and records removed from the start of the oldest file kept (that is
what retention does). `head` is what to compare with a copy kept elsewhere (e.g. the records the
sidecar also sent to standard output, or a head noted earlier).

Pure: lines in, a result out; at most `max_problems` problems are kept (all are counted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from netshield.logs.chain import GENESIS, Link, line_hash, link_from
from netshield.logs.reader import RawLine
from netshield.record import ConnectionRecord


@dataclass(frozen=True, slots=True)
class ChainProblem:
    source: str
    lineno: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.lineno}: {self.message}"


@dataclass
class VerifyResult:
    lines: int = 0
    records: int = 0
    problem_count: int = 0
    problems: list[ChainProblem] = field(default_factory=list)
    first: Link | None = None  # the first chained line's link
    head: tuple[int, str] | None = None  # (seq, sha256) of the last chained line
    files: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.problem_count == 0

    def report(self) -> list[str]:
        """What `netshield logs --verify` prints."""
        where = f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}"
        if self.records == 0 and self.problem_count == 0:
            return [f"connection log: no records in {where} (nothing to verify)"]
        if self.problem_count:
            out = [
                f"connection log BROKEN: {self.problem_count} problem"
                f"{'s' if self.problem_count != 1 else ''} in {self.lines} lines ({where}):"
            ]
            out += [f"  {p}" for p in self.problems]
            if self.problem_count > len(self.problems):
                out.append(f"  ... and {self.problem_count - len(self.problems)} more")
            return out
        assert self.first is not None and self.head is not None
        if self.first.seq == 0 and self.first.prev == GENESIS:
            start = "complete from the first record"
        else:
            start = (
                f"starts at seq {self.first.seq}: the {self.first.seq} earlier records are not in "
                "these files (rotated away by retention)"
            )
        return [
            f"connection log intact: {self.records} records in {where}, hash chain unbroken "
            f"(seq {self.first.seq}..{self.head[0]}, {start})",
            f"head: seq {self.head[0]} sha256:{self.head[1]} (keep it elsewhere: the chain "
            "cannot show records cut from the end)",
        ]


class ChainVerifier:
    def __init__(self, *, max_problems: int = 50) -> None:
        self.result = VerifyResult()
        self._max = max_problems
        self._prev_hash: str | None = None  # hash of the line before; None: unknown/none
        self._prev_where = ""
        self._last_seq: int | None = None  # seq of the last chained line
        self._prev_chained = False
        self._started = False

    def _problem(self, line: RawLine, message: str) -> None:
        self.result.problem_count += 1
        if len(self.result.problems) < self._max:
            self.result.problems.append(ChainProblem(line.source, line.lineno, message))

    def begin_file(self, name: str) -> None:
        self.result.files.append(name)

    def feed(self, line: RawLine) -> None:
        self.result.lines += 1
        where = f"{line.source}:{line.lineno}"
        link = self._check_line(line)
        if link is not None:
            self._check_link(line, link)
            self._last_seq = link.seq
        self._prev_chained = link is not None
        self._prev_hash = None if line.overlong else line_hash(line.data)
        self._prev_where = where
        self._started = True

    def _check_line(self, line: RawLine) -> Link | None:
        """The line's link if it is a chained record; else record the problem and None."""
        if line.overlong:
            self._problem(line, "not a record: the line is longer than any record")
            return None
        try:
            data = json.loads(line.data)
            ConnectionRecord.from_dict(data)
        except (ValueError, RecursionError, TypeError) as err:
            torn = "" if line.terminated else " (no newline: a torn write?)"
            why = str(err).splitlines()[0][:120] if isinstance(err, ValueError) else "not a record"
            self._problem(line, f"not a record{torn}: {why}")
            return None
        link = link_from(data)
        self.result.records += 1
        if link is None:
            self._problem(
                line,
                "a record without a hash chain (written before chaining, or its "
                "chain field was removed)",
            )
        return link

    def _check_link(self, line: RawLine, link: Link) -> None:
        if self.result.first is None:
            self.result.first = link
        self.result.head = (link.seq, line_hash(line.data))
        if not self._started or self._prev_hash is None:
            return  # the start of what we have (or after an overlong line): nothing to compare
        expected = self._last_seq + 1 if self._last_seq is not None else None
        if link.prev != self._prev_hash:
            if expected is None or (not self._prev_chained and link.seq == expected):
                self._problem(
                    line,
                    f"the line before it ({self._prev_where}) is not the one "
                    "this record chained to (inserted, edited or removed lines)",
                )
            elif link.seq > expected:
                gap = link.seq - expected
                span = f"seq {expected}" if gap == 1 else f"seq {expected}..{link.seq - 1}"
                self._problem(
                    line,
                    f"{gap} record{'s' if gap != 1 else ''} missing before "
                    f"this one ({span}): deleted",
                )
            elif link.seq < expected:
                self._problem(
                    line,
                    f"out of order: seq {link.seq} comes after seq "
                    f"{self._last_seq}: records reordered (or duplicated)",
                )
            else:
                self._problem(
                    line,
                    f"the record before it ({self._prev_where}, seq "
                    f"{self._last_seq}) was changed: its hash is not the one this "
                    "record chained to (edited)",
                )
        elif self._prev_chained and expected is not None and link.seq != expected:
            self._problem(
                line,
                f"seq {link.seq} follows seq {self._last_seq} although the "
                "hash matches (a writer lost count)",
            )


__all__ = ["ChainProblem", "ChainVerifier", "VerifyResult"]
