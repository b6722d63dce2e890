"""The monotonic counter: a witness of the CAS audit head kept OUTSIDE the state directory.

It stands in for a hardware monotonic counter (TPM NV counter, SGX monotonic counter): a value
that only moves forward and that an adversary who restores an old copy of the state directory
(AM7.1) does not restore with it. The counter holds ``(seq, head)``, the sequence number and
hash of the newest audit entry; the store compares it with its log at every start.

Guarantees: `MonotonicCounter.advance` never moves the value backwards nor rewrites history at
the same sequence number (it raises `StateError` instead); a write is atomic and durable (temp
file, fsync, rename, directory fsync), so a crash leaves the old or the new value, never a torn
one. The file is created 0600 in a 0700 directory. It holds no secrets. Thread-safe within one
process; one CAS process per state directory is the store's job (it holds a lock file).

`MonotonicCounter.witness` is the variant for a database that several CAS replicas write: the
counter keeps the newest head this replica wrote or saw, a value behind it is no news (another
writer went further), and the read-compare-write holds an ``flock`` so that replicas sharing
one counter file never move it back.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from netshield.errors import StateError
from netshield.reasons import Reason

COUNTER_FORMAT = "netshield-counter/1"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_STATE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_UNREADABLE_HINT = (
    "The monotonic counter file is damaged; restore it from the machine's backup, or move it "
    "away and start with --adopt-counter only if the state directory is known to be the newest."
)


@dataclass(frozen=True, slots=True)
class CounterValue:
    """The audit head a counter witnessed: entry ``seq`` (0 = empty log) with hash ``head``."""

    seq: int
    head: str


def default_counter_dir() -> Path:
    """``${XDG_STATE_HOME:-~/.local/state}/netshield`` (a relative XDG_STATE_HOME is ignored)."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "netshield"


def default_counter_path(state_id: str) -> Path:
    """``${XDG_STATE_HOME:-~/.local/state}/netshield/cas-<state_id>.counter``.

    ``state_id`` comes from the database, which an adversary may edit, so it must be a UUID
    (no path tricks).
    """
    if not _STATE_ID.fullmatch(state_id):
        raise StateError(
            f"state id {state_id!r} is not a UUID: the CAS database was edited; "
            "restore the state directory from the newest backup",
            hint="Restore the newest state; never start the CAS on an edited copy.",
        )
    return default_counter_dir() / f"cas-{state_id}.counter"


class MonotonicCounter:
    """A file-backed monotonic counter at ``path`` (absent file = never written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MonotonicCounter({str(self.path)!r})"

    def read(self) -> CounterValue | None:
        """The current value, or None if the counter file does not exist.

        Raises `StateError` naming the file if it exists but is unreadable or not a counter.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(
                f"cannot read the monotonic counter {self.path}: {exc.strerror}",
                hint=_UNREADABLE_HINT,
                reason=Reason.STATE_UNAVAILABLE,
            ) from None
        return self._parse(raw)

    def _parse(self, raw: bytes) -> CounterValue:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            obj = None
        if (
            isinstance(obj, dict)
            and set(obj) == {"format", "seq", "head"}
            and obj["format"] == COUNTER_FORMAT
            and isinstance(obj["seq"], int)
            and not isinstance(obj["seq"], bool)
            and obj["seq"] >= 0
            and isinstance(obj["head"], str)
            and _HEX64.fullmatch(obj["head"])
        ):
            return CounterValue(obj["seq"], obj["head"])
        raise StateError(
            f"the monotonic counter {self.path} is not a {COUNTER_FORMAT} file",
            hint=_UNREADABLE_HINT,
            reason=Reason.STATE_UNAVAILABLE,
        )

    def advance(self, value: CounterValue) -> None:
        """Store ``value``; StateError if it is behind the current value or contradicts it."""
        if value.seq < 0 or not _HEX64.fullmatch(value.head):
            raise ValueError("a counter value is a seq >= 0 and a 64-hex head hash")
        with self._lock:
            current = self.read()
            if current is not None:
                if value.seq < current.seq:
                    raise StateError(
                        f"refusing to move the monotonic counter {self.path} back from "
                        f"{current.seq} to {value.seq}: another process writes this state; "
                        "run one CAS per state directory"
                    )
                if value.seq == current.seq:
                    if value.head != current.head:
                        raise StateError(
                            f"refusing to record a different head for entry {value.seq} in the "
                            f"monotonic counter {self.path}: another process writes this state; "
                            "run one CAS per state directory"
                        )
                    return
            self._write(value)

    def witness(self, value: CounterValue) -> CounterValue:
        """Keep the newer of ``value`` and the current value, and return what is kept.

        StateError if the counter holds a different head for the same sequence number (the
        database forked: another copy was written).
        """
        if value.seq < 0 or not _HEX64.fullmatch(value.head):
            raise ValueError("a counter value is a seq >= 0 and a 64-hex head hash")
        with self._lock:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_path = self.path.with_name(self.path.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                current = self.read()
                if current is not None and value.seq == current.seq and value.head != current.head:
                    raise StateError(
                        f"the monotonic counter {self.path} recorded a different audit entry "
                        f"{value.seq}: the database was replaced by another copy",
                        reason=Reason.STATE_ROLLED_BACK,
                    )
                if current is not None and value.seq <= current.seq:
                    return current
                self._write(value)
                return value
            finally:
                os.close(fd)

    def _write(self, value: CounterValue) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = json.dumps({"format": COUNTER_FORMAT, "seq": value.seq, "head": value.head})
        tmp = directory / f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body.encode("ascii") + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
