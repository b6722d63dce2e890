"""`netshield explain CONN_ID`: why a logged connection was allowed or denied, in sentences.

The record comes from the connection log (--log FILE, else $NETSHIELD_RECORDS, else
/var/log/netshield/records.jsonl; rotated files are searched too); the policy it is compared with
from the CAS (--cas URL --admin DIR, or $NETSHIELD_CAS / $NETSHIELD_ADMIN) or a local file
(--policy FILE). Without either, the record alone is explained. A unique prefix of a connection
id is enough. Exit status: 0 when found, 2 when not (or on any error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from netshield.errors import NetshieldError, UsageError

ENV_CAS = "NETSHIELD_CAS"
ENV_ADMIN = "NETSHIELD_ADMIN"
MAX_PREFIX_MATCHES = 10


def add_policy_source(p: argparse.ArgumentParser) -> None:
    """--policy FILE, or --cas URL with --admin DIR (also from the environment)."""
    p.add_argument("--policy", help="compare with this policy file instead of the CAS's")
    p.add_argument("--cas", help=f"CAS URL, e.g. https://127.0.0.1:8443 (env {ENV_CAS})")
    p.add_argument(
        "--admin", help=f"admin credential directory made by `netshield init` (env {ENV_ADMIN})"
    )


def policy_view(args: argparse.Namespace, *, required: bool) -> Any:
    """The PolicyView the arguments (or environment) name; None if none and not `required`."""
    from netshield.explain import PolicyView
    from netshield.policy import parse_policy

    if args.policy:
        path = Path(args.policy)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"{path}: cannot read ({err})", hint="") from None
        return PolicyView(parse_policy(text, source=str(path)), None, f"the policy file {path}")
    url = args.cas or os.environ.get(ENV_CAS)
    admin = args.admin or os.environ.get(ENV_ADMIN)
    if not url or not admin:
        if required or url or admin:
            missing = "--cas URL" if not url else "--admin DIR"
            raise UsageError(
                f"{missing} is needed to read the CAS's policy (or set {ENV_CAS} and "
                f"{ENV_ADMIN}), or give --policy FILE",
                hint="",
            )
        return None
    policy, version, _events, _head = fetch_cas_policy(url, Path(admin), feed=False)
    return PolicyView(policy, version, f"the CAS at {url}")


def fetch_cas_policy(
    url: str, admin_dir: Path, *, feed: bool
) -> tuple[Any, int, list[dict[str, Any]], dict[str, Any]]:
    """(Policy, version, feed events, feed policy head) from a running CAS."""
    import asyncio

    from netshield.operator import admin_client
    from netshield.policy import parse_policy
    from netshield.trustdomain import load_admin

    admin = load_admin(admin_dir)

    async def fetch() -> tuple[dict[str, Any], dict[str, Any]]:
        async with admin_client(url, admin) as cas:
            current = await cas.policy()
            events = await cas.feed(0) if feed else {}
        return current, events

    current, events = asyncio.run(fetch())
    try:
        policy = parse_policy(str(current["text"]), source=f"the CAS's policy ({url})")
        version = int(current["version"])
    except (KeyError, TypeError, ValueError) as err:
        raise NetshieldError(f"the CAS at {url} sent an unexpected policy answer ({err})") from None
    return policy, version, list(events.get("events", [])), dict(events.get("policy", {}))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="say why a logged connection was allowed or denied, and what would change it",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("conn_id", help="connection id from the log (a unique prefix will do)")
    p.add_argument("--log", help="the connection log (default $NETSHIELD_RECORDS)")
    add_policy_source(p)
    p.add_argument("--json", action="store_true", help="the explanation as JSON")
    p.set_defaults(func=cmd_explain)


def find_records(path: str, conn_id: str) -> tuple[list[Any], list[Any], Any]:
    """(exact matches, prefix matches, read stats) over the log and its rotated files."""
    from netshield.logs.reader import ReadStats, log_files, read_records

    stats = ReadStats()
    exact: list[Any] = []
    prefix: list[Any] = []
    files = log_files(path, rotated=True)
    if path != "-" and not any(Path(f).exists() for f in files):
        raise UsageError(f"{path}: no such file (and no rotated files {path}.N)", hint="")
    try:
        for entry in read_records(files, stats):
            cid = entry.record.conn_id
            if cid == conn_id:
                exact.append(entry)
            elif cid.startswith(conn_id) and len(prefix) < MAX_PREFIX_MATCHES:
                prefix.append(entry)
    except OSError as err:
        raise UsageError(
            f"{err.filename or path}: cannot read ({err.strerror or err})", hint=""
        ) from None
    return exact, prefix, stats


def cmd_explain(args: argparse.Namespace) -> int:
    from netshield.commands.logs import default_log
    from netshield.explain import describe, explain_record

    path = default_log(args.log)
    exact, prefix, stats = find_records(path, args.conn_id)
    if stats.skipped:
        print(f"netshield explain: {stats.describe()}", file=sys.stderr)
    chosen = exact or (prefix if len(prefix) == 1 else [])
    if not chosen:
        if prefix:
            ids = ", ".join(sorted({e.record.conn_id for e in prefix}))
            raise UsageError(
                f"{args.conn_id!r} is a prefix of several connection ids: {ids}", hint=""
            )
        raise UsageError(
            f"no record of connection {args.conn_id!r} in {path} ({stats.records} records read)",
            hint="",
        )
    view = policy_view(args, required=False)
    results = []
    for entry in chosen:
        explanation = explain_record(entry.record, view)
        if args.json:
            results.append(
                {
                    "conn_id": entry.record.conn_id,
                    "verdict": explanation.verdict,
                    "sentences": list(explanation.sentences),
                    "clause": explanation.clause,
                    "clause_in": explanation.where if explanation.clause else None,
                    "change": explanation.change,
                    "policy": view.label if view else None,
                    "record": entry.record.to_dict(),
                }
            )
            continue
        print(describe(entry.record))
        for line in explanation.lines():
            print(f"  {line}")
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    return 0
