"""The embedded backend: one SQLite file per state directory, held by one process.

``<state_dir>/cas.db`` in WAL mode with ``synchronous=FULL``; write transactions are
``BEGIN IMMEDIATE``. `SqliteBackend.open` takes an exclusive ``flock`` on
``<state_dir>/cas.lock`` for as long as the backend is open, so one CAS process uses a state
directory at a time, and every chained writer is serialized by that alone.
`SqliteBackend.open_read_only` reads a stopped or running CAS's file without a lock, without
writing anything (no -wal or -shm files when there is no WAL), for the offline tools.

One connection (``check_same_thread=False``) behind one lock: calls from any thread are
serialized. Every failure to open is a `StateError` naming the file and the fix.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import ClassVar, TypeVar

from netshield.cas.store.model import state_error
from netshield.cas.store.sql import SqlStateTx, schema

T = TypeVar("T")

DB_NAME = "cas.db"
LOCK_NAME = "cas.lock"
RESTORE_ADVICE = (
    "restore the newest copy of the state directory and never start the CAS on an old one"
)

SCHEMA = schema(seq="INTEGER")  # INTEGER PRIMARY KEY: the rowid itself


class SqliteTx(SqlStateTx):
    schema: ClassVar[str] = SCHEMA
    issued_order: ClassVar[str] = "rowid"

    def table_names(self) -> set[str]:
        return {r[0] for r in self._all("SELECT name FROM sqlite_master WHERE type='table'")}


def _connect(db_path: Path, *, read_only: bool) -> sqlite3.Connection:
    if read_only:
        # Without a WAL file the database file is complete: open it immutable so SQLite creates
        # no -wal/-shm files. With one (a running or crashed CAS), read it through the WAL.
        wal = db_path.with_name(db_path.name + "-wal")
        mode = "mode=ro" if wal.exists() else "immutable=1"
        uri = f"file:{urllib.parse.quote(str(db_path))}?{mode}"
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0
        )
    else:
        conn = sqlite3.connect(
            str(db_path), isolation_level=None, check_same_thread=False, timeout=5.0
        )
    try:
        if not read_only:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


class SqliteBackend:
    """The CAS state in ``<state_dir>/cas.db``; create with `open` or `open_read_only`."""

    def __init__(self, state_dir: Path, conn: sqlite3.Connection, lock_fd: int | None) -> None:
        self.state_dir = state_dir
        self.db_path = state_dir / DB_NAME
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self.read_only = lock_fd is None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"SqliteBackend({str(self.db_path)!r})"

    @property
    def location(self) -> str:
        return str(self.db_path)

    @property
    def home(self) -> str:
        return str(self.state_dir)

    @property
    def marker_key(self) -> str:
        return str(self.state_dir.resolve())

    @property
    def restore_advice(self) -> str:
        return RESTORE_ADVICE

    @property
    def shared(self) -> bool:
        return False  # the flock keeps every other process out

    def wait_for_change(self, timeout: float) -> None:
        time.sleep(timeout)  # nobody else writes: nothing to wait for

    @classmethod
    def open(cls, state_dir: Path) -> SqliteBackend:
        """Lock ``state_dir`` (creating it 0700) and open or create its database file."""
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise state_error(
                f"cannot use the state directory {state_dir}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise state_error(
                f"{state_dir / LOCK_NAME} is locked: another CAS is using {state_dir}; "
                "stop it first (one CAS per state directory)"
            ) from None
        db_path = state_dir / DB_NAME
        try:
            conn = _connect(db_path, read_only=False)
        except sqlite3.Error as exc:
            os.close(lock_fd)
            raise state_error(
                f"{db_path} is not a readable CAS database ({exc}); {RESTORE_ADVICE}"
            ) from None
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(state_dir, conn, lock_fd)

    @classmethod
    def open_read_only(cls, state_dir: Path) -> SqliteBackend:
        """Read an existing CAS database without locking or writing; StateError otherwise."""
        db_path = Path(state_dir) / DB_NAME
        if not db_path.is_file():
            raise state_error(f"{db_path} does not exist")
        try:
            conn = _connect(db_path, read_only=True)
        except sqlite3.Error as exc:
            raise state_error(f"{db_path} is not a readable CAS database ({exc})") from None
        backend = cls(Path(state_dir), conn, None)
        try:
            if backend.read(lambda tx: tx.layout()) != "cas":
                raise state_error(f"{db_path} is not a CAS database (no meta table)")
        except BaseException:
            backend.close()
            raise
        return backend

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the CAS store is closed")
        return self._conn

    def read(self, work: Callable[[SqliteTx], T], *, snapshot: bool = True) -> T:
        with self._lock:
            conn = self._require_conn()
            if not self.read_only:
                return work(SqliteTx(conn))
            try:  # read-only (offline): anything SQLite cannot read is not a CAS database
                return work(SqliteTx(conn))
            except sqlite3.Error as exc:
                raise state_error(
                    f"{self.db_path} is not a readable CAS database ({exc})"
                ) from None

    def write(self, work: Callable[[SqliteTx], T], *, chained: bool) -> T:
        # One process holds the state directory's flock: the connection lock serializes
        # chained writers already, whatever ``chained`` says.
        with self._lock:
            conn = self._require_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(SqliteTx(conn))
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def close(self) -> None:
        """Close the database and release the state directory; idempotent."""
        with self._lock:
            if self._conn is None:
                return
            self._conn.close()
            self._conn = None
            if self._lock_fd is not None:
                with suppress(OSError):
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None
