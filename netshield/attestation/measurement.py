"""Workload measurement: the stand-in for MRENCLAVE.

A measurement is a lower-case hex SHA-256 over a canonical, unambiguous encoding of a workload:
the format tag, every regular file and symlink under the workload's path (sorted by relative
path, each with its kind, permission bits and content digest) and the entry command.

Guarantees:

- `measurement_of` is pure and deterministic: the same entries (in any order) and command give
  the same value on any machine and in any directory.
- Any change of a relative path, a kind, a mode (``st_mode & 0o7777``), a file's content, a
  symlink's target or the command (including splitting or joining arguments) changes the value:
  the encoding is a canonical JSON document, so no two different inputs encode alike.
- `scan_tree` never follows symlinks below the named path (a symlink is measured by its target
  text) and skips nothing: a file it cannot read, or a special file (fifo, socket, device) it
  cannot measure, is an error, never a silent omission. The named path itself is followed if it
  is a symlink (like ``find -H``), so ``netshield measure ./current`` measures what it points to.
- Empty directories and directory permissions are not part of the measurement (only files and
  symlinks are entries).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from netshield.errors import NetshieldError

MEASUREMENT_FORMAT = "netshield-measurement/1"

FileKind = Literal["file", "symlink"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
_SCAN_HINT = "netshield measures every file of the workload; check the path and its permissions"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One measured file or symlink.

    `relpath` is POSIX-style and relative to the measured path; `mode` is ``st_mode & 0o7777``;
    `digest` is the SHA-256 of the file's content, or of a symlink's target text.
    """

    relpath: str
    mode: int
    kind: FileKind
    digest: str

    def __post_init__(self) -> None:
        parts = self.relpath.split("/")
        if not self.relpath or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"relpath {self.relpath!r} is not a normalized relative POSIX path")
        if "\x00" in self.relpath:
            raise ValueError(f"relpath {self.relpath!r} contains a NUL character")
        if isinstance(self.mode, bool) or not isinstance(self.mode, int):
            raise ValueError(f"mode {self.mode!r} is not an int")
        if not 0 <= self.mode <= 0o7777:
            raise ValueError(f"mode {self.mode:#o} is outside 0..0o7777")
        if self.kind not in ("file", "symlink"):
            raise ValueError(f"kind {self.kind!r} is neither 'file' nor 'symlink'")
        if not _HEX64.fullmatch(self.digest):
            raise ValueError(f"digest {self.digest!r} is not a lower-case sha256 hex digest")


def measurement_of(entries: Iterable[FileEntry], cmd: Sequence[str]) -> str:
    """The measurement of `entries` (any order) and the entry command `cmd`.

    Raises ValueError if two entries share a relative path or `cmd` holds a non-string.
    """
    ordered = sorted(entries, key=lambda e: e.relpath)
    for before, after in itertools.pairwise(ordered):
        if before.relpath == after.relpath:
            raise ValueError(f"duplicate entry for {before.relpath!r}")
    if isinstance(cmd, str) or not all(isinstance(arg, str) for arg in cmd):
        raise ValueError("cmd must be a sequence of strings (one per argument)")
    document = {
        "format": MEASUREMENT_FORMAT,
        "entries": [[e.relpath, e.kind, e.mode, e.digest] for e in ordered],
        "cmd": list(cmd),
    }
    # ensure_ascii keeps non-UTF-8 file names (surrogate escapes) encodable and unambiguous.
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def scan_tree(path: Path) -> list[FileEntry]:
    """Every regular file and symlink at or below `path`, sorted by relative path.

    A file is measured as one entry named after it; a directory recursively, relative to itself.
    Raises NetshieldError (one line, naming the path) for a missing path, an unreadable file or
    directory, or a special file.
    """
    try:
        top = path.stat()
    except OSError as exc:
        raise _scan_error(path, exc) from exc
    if stat.S_ISREG(top.st_mode):
        # Follow a symlinked top-level file, but name the entry after what the operator typed.
        return [_file_entry(path, path.name or path.resolve().name, top.st_mode, follow=True)]
    if not stat.S_ISDIR(top.st_mode):
        raise _special_error(path, top.st_mode)
    entries: list[FileEntry] = []
    stack: list[tuple[Path, str]] = [(path, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as it:
                children = list(it)
        except OSError as exc:
            raise _scan_error(directory, exc) from exc
        for child in children:
            child_path = Path(child.path)
            relpath = prefix + child.name
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                raise _scan_error(child_path, exc) from exc
            if stat.S_ISDIR(st.st_mode):
                stack.append((child_path, relpath + "/"))
            elif stat.S_ISLNK(st.st_mode):
                entries.append(_symlink_entry(child_path, relpath, st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                entries.append(_file_entry(child_path, relpath, st.st_mode, follow=False))
            else:
                raise _special_error(child_path, st.st_mode)
    entries.sort(key=lambda e: e.relpath)
    return entries


def measure(path: Path, cmd: Sequence[str]) -> str:
    """The measurement of the workload at `path` started with `cmd`."""
    return measurement_of(scan_tree(path), cmd)


def _file_entry(path: Path, relpath: str, mode: int, *, follow: bool) -> FileEntry:
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        # Refuse a file swapped for a symlink between the directory scan and the open.
        flags |= getattr(os, "O_NOFOLLOW", 0)
    digest = hashlib.sha256()
    try:
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _special_error(path, st.st_mode)
            mode = st.st_mode
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise _scan_error(path, exc) from exc
    return FileEntry(relpath, stat.S_IMODE(mode), "file", digest.hexdigest())


def _symlink_entry(path: Path, relpath: str, mode: int) -> FileEntry:
    try:
        target = os.readlink(path)
    except OSError as exc:
        raise _scan_error(path, exc) from exc
    digest = hashlib.sha256(os.fsencode(target)).hexdigest()
    return FileEntry(relpath, stat.S_IMODE(mode), "symlink", digest)


def _scan_error(path: Path, exc: OSError) -> NetshieldError:
    what = exc.strerror or type(exc).__name__
    return NetshieldError(f"cannot measure {str(path)!r}: {what}", hint=_SCAN_HINT)


def _special_error(path: Path, mode: int) -> NetshieldError:
    kind = (
        "a fifo"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    return NetshieldError(
        f"cannot measure {str(path)!r}: it is {kind} (only regular files, directories "
        "and symlinks can be measured)",
        hint="move special files out of the workload's directory",
    )
