"""The two kinds of CAS database the store's behaviour tests run against, behind one helper.

`Backing` opens a `CasStore` on a SQLite state directory or on a fresh schema of the session's
throwaway PostgreSQL cluster, gives raw access to the tables (as an adversary with database
access would have), and saves and restores a copy (a copied directory, or ``pg_dump`` and
``psql``: a database restored from an older dump).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from netshield.cas.auditlog import canonical_json, entry_hash
from netshield.cas.counter import COUNTER_FORMAT, MonotonicCounter
from netshield.cas.store import CasStore
from netshield.pki.checkpoint import CheckpointSigner
from tests.pg_support import PgCluster


class RawPg:
    """A psycopg connection that takes the tests' ``?`` placeholders."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), params)  # type: ignore[call-overload]

    def close(self) -> None:
        self._conn.close()


@dataclass
class Backing:
    kind: str
    root: Path
    cluster: PgCluster | None = None
    schema: str = ""
    _saved: dict[str, Path] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def url(self) -> str:
        assert self.cluster is not None
        return self.cluster.url() + f"?options=-csearch_path%3D{self.schema}"

    @property
    def location(self) -> str:
        """How the store names its database in sentences."""
        if self.kind == "sqlite":
            return str(self.state_dir / "cas.db")
        assert self.cluster is not None
        return (
            f"postgresql://netshield@127.0.0.1:{self.cluster.port}/postgres "
            f"(options -csearch_path={self.schema})"
        )

    def open(
        self,
        *,
        now: datetime,
        counter: MonotonicCounter | None = None,
        adopt_counter: bool = False,
        chain_lock: str = "advisory",
        signer: CheckpointSigner | None = None,
        adopt_unsigned: bool = False,
    ) -> CasStore:
        signing: dict[str, Any] = {"signer": signer, "adopt_unsigned": adopt_unsigned}
        if self.kind == "sqlite":
            return CasStore.open(
                self.state_dir, counter=counter, adopt_counter=adopt_counter, now=now, **signing
            )
        assert self.cluster is not None
        return CasStore.open(
            self.state_dir,
            database=self.url,
            password=self.cluster.password,
            chain_lock=chain_lock,  # type: ignore[arg-type]
            counter=counter,
            adopt_counter=adopt_counter,
            now=now,
            **signing,
        )

    def raw(self) -> sqlite3.Connection | RawPg:
        if self.kind == "sqlite":
            return sqlite3.connect(self.state_dir / "cas.db", isolation_level=None)
        assert self.cluster is not None
        conn = psycopg.connect(
            self.cluster.url(),
            password=self.cluster.password,
            autocommit=True,
            options=f"-csearch_path={self.schema}",
        )
        return RawPg(conn)

    def save(self, name: str) -> None:
        """Keep a copy of the database as it is now (a backup, an old dump)."""
        target = self.root / f"saved-{name}"
        if self.kind == "sqlite":
            shutil.copytree(self.state_dir, target)
        else:
            assert self.cluster is not None
            self.cluster.tool("pg_dump", "-d", "postgres", "-n", self.schema, "-f", str(target))
        self._saved[name] = target

    def restore(self, name: str) -> None:
        """Replace the database by the saved copy (the adversary's disk rollback)."""
        saved = self._saved[name]
        if self.kind == "sqlite":
            shutil.rmtree(self.state_dir)
            shutil.copytree(saved, self.state_dir)
        else:
            assert self.cluster is not None
            self.cluster.psql(f'DROP SCHEMA "{self.schema}" CASCADE')
            self.cluster.tool(
                "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f", str(saved)
            )

    def delete(self) -> None:
        """Delete the database (files, or every table of the schema)."""
        if self.kind == "sqlite":
            for p in self.state_dir.glob("cas.db*"):
                p.unlink()
        else:
            assert self.cluster is not None
            self.cluster.psql(f'DROP SCHEMA "{self.schema}" CASCADE; CREATE SCHEMA "{self.schema}"')


def rewrite_from(conn: Any, seq: int) -> tuple[int, str]:
    """Edit audit entry ``seq`` and re-hash it and every later entry, so the chain is intact
    again (what an adversary with write access to the database can do); the new head."""
    rows = conn.execute(
        "SELECT seq, ts, event, data, prev_hash FROM audit WHERE seq >= ? ORDER BY seq", (seq,)
    ).fetchall()
    prev = None
    for s, ts, event, data, prev_hash in rows:
        body = {"rewritten": True} if s == seq else json.loads(data)
        link = prev if prev is not None else prev_hash
        new = entry_hash(s, ts, event, body, link)
        conn.execute(
            "UPDATE audit SET data = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (canonical_json(body), link, new, s),
        )
        prev = new
    return int(rows[-1][0]), str(prev)


def write_counter(path: Path, seq: int, head: str) -> None:
    """Set a monotonic counter file to ``(seq, head)``, as an adversary who can write it would."""
    path.write_text(json.dumps({"format": COUNTER_FORMAT, "seq": seq, "head": head}))


POLICY = "trust_domain: example.org\n"


def record_cert(store: CasStore, serial: int, *, now: datetime) -> None:
    """Record an issued certificate for orders on platform p2 (policy version 1, epoch 1)."""
    store.record_issued(
        serial=serial,
        service="orders",
        platform_id="p2",
        measurement="ab" * 32,
        not_after=now + timedelta(minutes=10),
        policy_version=1,
        epoch=1,
        now=now,
        fingerprint="cd" * 32,
    )


def populate(store: CasStore, *, now: datetime, events: int = 4) -> None:
    """Entries: policy (2), platform revocation (3), issued cert 2a (4), then plain events."""
    store.apply_policy(POLICY, previous_hash=None, now=now, actor="alice")
    store.revoke(kind="platform", target="p1", now=now, actor="alice")
    record_cert(store, 0x2A, now=now)
    for i in range(events):
        store.audit("test.event", {"i": i}, now=now + timedelta(seconds=i))
