"""`netshield cas migrate`: create or upgrade a CAS state's schema, or move a SQLite state into
PostgreSQL.

- ``--database URL`` (or ``--state DIR`` for SQLite): create the state in an empty database, or
  bring an older schema version to this netshield's (audited as ``state.upgrade``); a state
  already current is left alone. Every open-time check runs first, so a rolled-back or edited
  state is refused here too. Run it before starting replicas (a Kubernetes Job, an init step).
- ``--from-state DIR --database URL``: copy the intact SQLite state of DIR (stopped: its lock is
  taken) into the empty database, audit chain, state id and monotonic counter carried over
  (`netshield.cas.store.migrate`); the SQLite copy is refused from then on.

Prints one line: the database, the state id, the schema version and what was done.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from netshield.errors import UsageError


def register_cas(csub: Any) -> None:
    from netshield.cli import add_database_args

    p = csub.add_parser(
        "migrate",
        help="create or upgrade the CAS state's schema, or move a SQLite state into PostgreSQL",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("--state", help="the SQLite state directory (without --database)")
    add_database_args(p)
    p.add_argument(
        "--from-state",
        metavar="DIR",
        help="with --database: move the SQLite state of DIR (a stopped CAS) into the database",
    )
    p.add_argument(
        "--counter",
        help="the monotonic counter file (default: $XDG_STATE_HOME/netshield/cas-<state id>"
        ".counter); with --from-state, the source's, which then witnesses the new database",
    )
    p.add_argument(
        "--adopt-counter",
        action="store_true",
        help="accept a non-empty state that has no counter on this machine yet",
    )
    p.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from netshield.cas.counter import MonotonicCounter
    from netshield.cas.server import read_password_file
    from netshield.cas.store import CasStore
    from netshield.cli import database_args

    database, password_file = database_args(args)
    password = read_password_file(password_file)
    counter = MonotonicCounter(Path(args.counter)) if args.counter else None
    now = datetime.now(UTC)
    if args.from_state:
        if database is None:
            raise UsageError("--from-state needs --database: the PostgreSQL database to move to")
        from netshield.cas.store.migrate import copy_state

        store = copy_state(
            Path(args.from_state), database=database, password=password, counter=counter, now=now
        )
        done = f"moved from {Path(args.from_state) / 'cas.db'}"
    else:
        if database is None and not args.state:
            raise UsageError("name the state: --database URL, or --state DIR for SQLite")
        store = CasStore.open(
            Path(args.state or "."),
            database=database,
            password=password,
            counter=counter,
            adopt_counter=args.adopt_counter,
            now=now,
        )
        if store.created:
            done = "created"
        elif store.upgraded_from is not None:
            done = f"upgraded from schema version {store.upgraded_from}"
        else:
            done = "already current"
    with store:
        print(
            f"{store.backend.location}: CAS state {store.state_id}, schema version "
            f"{store.schema_version} ({done}); monotonic counter {store.counter_path}"
        )
    return 0
