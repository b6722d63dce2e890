"""The shared backend: the CAS state in one PostgreSQL database (psycopg 3 with a pool).

Several CAS replicas may use one database at the same time; that is what this backend is for.
The tables are those of `sql` in the connection's ``search_path`` schema (``public`` unless the
URL sets ``options=-csearch_path=NAME``), so one database can hold several states.

Guarantees:
- Chained writes (those that append to the audit chain) are serialized across every process
  on the database, so the chain stays one chain: under ``chain_lock="advisory"`` (the default)
  each takes a transaction-scoped advisory lock keyed by the schema first; under
  ``"serializable"`` each runs at SERIALIZABLE isolation and is retried when PostgreSQL
  reports a conflict (`RETRY_LIMIT` attempts). ``bench/cas_bench.py`` measures both.
- Other writes (nonces) are single statements whose ``WHERE`` clause makes a racing second
  consume see the first one's row: a nonce is used once at any replica.
- Reads run in a REPEATABLE READ, READ ONLY transaction: one consistent snapshot (a read of
  one statement runs alone: a statement sees one snapshot anyway).
- Every chained commit sends ``NOTIFY netshield_audit``; `PostgresBackend.wait_for_change`
  wakes on those of other processes (a burst of them is one wake-up), or on its timeout, so
  other replicas learn of new audit entries at once, and by polling if a notification is lost.
- The password never appears in `location`, a ``repr``, a log line or an error message; a
  database that cannot be reached, or that lost its tables, is a
  `StateError(STATE_UNAVAILABLE)` naming the redacted URL.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from netshield.cas.store.backend import CHAIN_LOCKS, ChainLock
from netshield.cas.store.model import state_error
from netshield.cas.store.sql import SqlStateTx, schema

T = TypeVar("T")

log = logging.getLogger("netshield.cas.store")

CHANNEL = "netshield_audit"
LOCK_CLASS = 0x6E73  # "ns": the advisory lock's first key; the second is the schema's hash
RETRY_LIMIT = 30
COALESCE = 0.05  # seconds of further notifications folded into one wake-up
CONNECT_TIMEOUT = 10.0
RESTORE_ADVICE = (
    "restore the newest dump of the database (or point --database at the newest copy) and "
    "never start the CAS on an old one"
)

SCHEMA = schema(seq="BIGINT", issued_order_column="ord BIGINT GENERATED ALWAYS AS IDENTITY,")

# Conflicts a retried transaction resolves: a racing writer took the next audit seq,
# revocation seq or policy version, or the snapshot went stale.
_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
_RETRYABLE_UNIQUE = {"audit_pkey", "revocations_pkey", "revocations_kind_target_key"}
_RETRYABLE_UNIQUE |= {"policies_pkey", "meta_pkey", "checkpoints_pkey", "checkpoint_signers_pkey"}


class PostgresTx(SqlStateTx):
    placeholder: ClassVar[str] = "%s"
    schema: ClassVar[str] = SCHEMA
    issued_order: ClassVar[str] = "ord"

    def table_names(self) -> set[str]:
        rows = self._all(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        return {str(r[0]) for r in rows}


def redacted(params: dict[str, Any]) -> str:
    """``postgresql://user@host:port/dbname`` (and the options), never the password."""
    user = params.get("user") or ""
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or user
    text = f"postgresql://{user + '@' if user else ''}{host}:{port}/{dbname}"
    if params.get("options"):
        text += f" (options {params['options']})"
    return text


def url_has_password(url: str) -> bool:
    """True if the URL itself carries a password (it must come from a file or the environment)."""
    try:
        return bool(conninfo_to_dict(url).get("password"))
    except psycopg.ProgrammingError:
        return False


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _RETRYABLE):
        return True
    if isinstance(exc, pg_errors.UniqueViolation):
        return exc.diag.constraint_name in _RETRYABLE_UNIQUE
    return False


class PostgresBackend:
    """The CAS state in a PostgreSQL database; create with `PostgresBackend.open`."""

    def __init__(
        self, pool: ConnectionPool, conninfo: str, location: str, chain_lock: ChainLock
    ) -> None:
        self._pool: ConnectionPool | None = pool
        self._conninfo = conninfo
        self._location = location
        self.chain_lock = chain_lock
        self._listener: psycopg.Connection[Any] | None = None
        self._token = secrets.token_hex(8)  # marks this process's own notifications
        self.retries = 0  # transactions run again after a conflict (a plain count, for metrics)
        self._listen_lock = threading.Lock()
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"PostgresBackend({self._location!r}, chain_lock={self.chain_lock!r})"

    @property
    def location(self) -> str:
        return self._location

    @property
    def home(self) -> str:
        return self._location

    @property
    def marker_key(self) -> str:
        return self._location

    @property
    def restore_advice(self) -> str:
        return RESTORE_ADVICE

    @property
    def shared(self) -> bool:
        return True

    @classmethod
    def open(
        cls,
        url: str,
        *,
        password: str | None = None,
        chain_lock: ChainLock = "advisory",
        pool_size: int = 8,
    ) -> PostgresBackend:
        """Connect (``password`` overrides libpq's PGPASSWORD / .pgpass); StateError if not."""
        if chain_lock not in CHAIN_LOCKS:
            raise ValueError(f"chain_lock must be one of {CHAIN_LOCKS}")
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise state_error(f"--database: not a PostgreSQL URL ({exc})") from None
        shown = redacted(params)
        extra: dict[str, Any] = {"application_name": "netshield-cas"}
        if password is not None:
            extra["password"] = password
        extra.setdefault("connect_timeout", str(int(CONNECT_TIMEOUT)))
        conninfo = make_conninfo(url, **extra)
        try:
            with psycopg.connect(conninfo, autocommit=True) as probe:
                info = probe.info
                shown = redacted(
                    {
                        "user": info.user,
                        "host": info.host,
                        "port": str(info.port),
                        "dbname": info.dbname,
                        "options": params.get("options"),
                    }
                )
        except psycopg.Error as exc:
            raise state_error(
                f"cannot connect to the CAS database {shown}: {_first_line(exc)}",
                hint="Check --database, that PostgreSQL runs and that the password (from "
                "--database-password-file or PGPASSWORD) is right.",
            ) from None
        pool: ConnectionPool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max(pool_size, 1),
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            open=False,
            name="netshield-cas",
            timeout=CONNECT_TIMEOUT,
        )
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except PoolTimeout:
            pool.close()
            raise state_error(f"cannot connect to the CAS database {shown}: timed out") from None
        return cls(pool, conninfo, shown, chain_lock)

    def _require_pool(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError("the CAS store is closed")
        return self._pool

    def _unavailable(self, exc: BaseException) -> Exception:
        return state_error(
            f"the CAS database {self._location} failed: {_first_line(exc)}",
            hint="Check that PostgreSQL runs and is reachable; the CAS retries on the next call.",
        )

    def read(self, work: Callable[[PostgresTx], T], *, snapshot: bool = True) -> T:
        pool = self._require_pool()
        try:
            with pool.connection() as conn:
                if not snapshot:  # one statement: its own snapshot, no round trips around it
                    return work(PostgresTx(conn))
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    result = work(PostgresTx(conn))
                except BaseException:
                    _rollback(conn)
                    raise
                conn.execute("COMMIT")
                return result
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._unavailable(exc) from None

    def write(self, work: Callable[[PostgresTx], T], *, chained: bool) -> T:
        pool = self._require_pool()
        serializable = chained and self.chain_lock == "serializable"
        begin = "BEGIN ISOLATION LEVEL SERIALIZABLE" if serializable else "BEGIN"
        for attempt in range(1, RETRY_LIMIT + 1):
            try:
                with pool.connection() as conn:
                    conn.execute(begin)
                    try:
                        if chained and not serializable:
                            conn.execute(
                                "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))",
                                (LOCK_CLASS,),
                            )
                        result = work(PostgresTx(conn))
                        if chained:
                            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._token))
                        conn.execute("COMMIT")
                    except BaseException:
                        _rollback(conn)
                        raise
                    return result
            except psycopg.Error as exc:
                if _retryable(exc) and attempt < RETRY_LIMIT:
                    self.retries += 1
                    time.sleep(random.uniform(0, 0.002 * attempt))  # noqa: S311 - jitter
                    continue
                raise self._unavailable(exc) from None
            except PoolTimeout as exc:
                raise self._unavailable(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_for_change(self, timeout: float) -> None:
        """Return when a chained write committed anywhere on this database, or after timeout."""
        with self._listen_lock:
            if self._closed.is_set():
                return
            try:
                if self._listener is None or self._listener.closed:
                    self._listener = psycopg.connect(self._conninfo, autocommit=True)
                    self._listener.execute(f"LISTEN {CHANNEL}")
                deadline = time.monotonic() + timeout
                while not self._others_wrote(max(deadline - time.monotonic(), 0.0)):
                    if time.monotonic() >= deadline:
                        return
                for _ in self._listener.notifies(timeout=COALESCE):
                    pass  # a burst of commits is one change for the followers
            except psycopg.Error as exc:
                log.warning("CAS database notifications lost (%s); polling", _first_line(exc))
                with contextlib.suppress(psycopg.Error):
                    if self._listener is not None:
                        self._listener.close()
                self._listener = None
                self._closed.wait(min(timeout, 1.0))

    def _others_wrote(self, timeout: float) -> bool:
        """True once another process's chained commit is notified; False after ``timeout``."""
        assert self._listener is not None
        for notify in self._listener.notifies(timeout=timeout, stop_after=1):
            return notify.payload != self._token
        return False

    def close(self) -> None:
        """Close the pool and the notification connection; idempotent."""
        self._closed.set()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(psycopg.Error):
                listener.close()


def _rollback(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute("ROLLBACK")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
