"""Operator commands against a running CAS: revoke, policy show/apply, audit.

Each function takes an admin credential and returns the text to print; failures are
NetshieldErrors (one line each). The offline audit check reads a state directory directly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netshield.cas.auditlog import AuditEntry, verify_chain
from netshield.cas.counter import MonotonicCounter
from netshield.casclient import CasClient
from netshield.errors import NetshieldError
from netshield.pki.keys import load_private_key
from netshield.reasons import Reason
from netshield.tls.material import cas_client_context
from netshield.trustdomain import AdminCredential

AUDIT_PAGE = 10_000


def admin_client(url: str, admin: AdminCredential, *, timeout: float = 10.0) -> CasClient:
    ctx = cas_client_context(
        ca_pem=admin.ca_pem, chain_pem=admin.chain_pem, key=load_private_key(admin.key_path)
    )
    return CasClient(url, ssl_context=ctx, timeout=timeout)


async def revoke(url: str, admin: AdminCredential, kind: str, target: str, note: str) -> str:
    async with admin_client(url, admin) as cas:
        result = await cas.revoke(kind, target, note)
    rev = result["revocation"]
    return (
        f"revoked {rev['kind']} {rev['target']} (feed position {rev['seq']}); "
        "sidecars learn it from the CAS feed within seconds"
    )


async def policy_show(url: str, admin: AdminCredential, *, text: bool) -> str:
    async with admin_client(url, admin) as cas:
        data = await cas.policy()
    if text:
        return str(data["text"])
    return f"policy version {data['version']}  {data['hash']}  applied {data['applied_at']}"


async def policy_apply(
    url: str, admin: AdminCredential, policy_file: Path, previous: str | None
) -> str:
    try:
        text = policy_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise NetshieldError(f"{policy_file}: cannot read ({err})") from None
    async with admin_client(url, admin) as cas:
        result = await cas.apply_policy(text, previous)
    return f"policy version {result['version']} applied ({result['hash']})"


def entries_from_json(rows: Sequence[dict[str, Any]]) -> list[AuditEntry]:
    try:
        return [
            AuditEntry(
                seq=int(r["seq"]),
                ts=str(r["ts"]),
                event=str(r["event"]),
                data=dict(r["data"]),
                prev_hash=str(r["prev_hash"]),
                hash=str(r["hash"]),
            )
            for r in rows
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise NetshieldError(
            f"the CAS sent an audit entry of unexpected shape ({err})",
            reason=Reason.AUDIT_CHAIN_BROKEN,
        ) from None


def format_entries(entries: Sequence[AuditEntry], *, as_json: bool) -> list[str]:
    if as_json:
        return [
            json.dumps(
                {
                    "seq": e.seq,
                    "ts": e.ts,
                    "event": e.event,
                    "data": dict(e.data),
                    "prev_hash": e.prev_hash,
                    "hash": e.hash,
                },
                sort_keys=True,
            )
            for e in entries
        ]
    lines = []
    for e in entries:
        fields = " ".join(f"{k}={v}" for k, v in sorted(e.data.items()) if v not in (None, ""))
        lines.append(f"{e.seq:>6}  {e.ts}  {e.event:<14} {fields}")
    return lines


async def audit_online(
    url: str, admin: AdminCredential, *, since: int, limit: int, verify: bool, as_json: bool
) -> tuple[list[str], bool]:
    """Fetch entries; with verify, page through the whole log and check the chain client-side too."""
    async with admin_client(url, admin) as cas:
        if not verify:
            data = await cas.audit(since=since, limit=limit)
            return format_entries(entries_from_json(data["entries"]), as_json=as_json), True
        entries: list[AuditEntry] = []
        while True:
            data = await cas.audit(since=entries[-1].seq if entries else 0, limit=AUDIT_PAGE)
            page = entries_from_json(data["entries"])
            entries.extend(page)
            if len(page) < AUDIT_PAGE:
                break
    lines = format_entries([e for e in entries if e.seq > since][:limit], as_json=as_json)
    head = data["head"]
    problems = list(data.get("problems", []))
    problems += [
        p
        for p in verify_chain(entries, expected_head=(int(head["seq"]), str(head["hash"])))
        if p not in problems
    ]
    return lines + _verdict(problems, len(entries)), not problems


def audit_offline(
    state_dir: Path,
    counter_file: Path | None,
    *,
    verify: bool,
    as_json: bool,
    since: int,
    limit: int,
    database: str | None = None,
    password: str | None = None,
) -> tuple[list[str], bool]:
    """Read the audit log straight from a (stopped or running) CAS's database."""
    from netshield.cas.store import read_audit_offline

    entries, counter_value, counter_path = read_audit_offline(
        state_dir,
        MonotonicCounter(counter_file) if counter_file else None,
        database=database,
        password=password,
    )
    lines = format_entries([e for e in entries if e.seq > since][:limit], as_json=as_json)
    if not verify:
        return lines, True
    expected = (counter_value.seq, counter_value.head) if counter_value else None
    problems = verify_chain(entries, expected_head=expected)
    if counter_value is None:
        problems.append(f"no monotonic counter at {counter_path}: truncation cannot be ruled out")
    return lines + _verdict(problems, len(entries)), not problems


def _verdict(problems: list[str], count: int) -> list[str]:
    if problems:
        return [
            f"audit log BROKEN ({Reason.AUDIT_CHAIN_BROKEN.value}):",
            *[f"  - {p}" for p in problems],
        ]
    return [f"audit log intact: {count} entries, hash chain and monotonic counter agree"]
