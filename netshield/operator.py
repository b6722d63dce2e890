"""Operator commands against a running CAS: revoke, policy show/apply, audit.

Each function takes an admin credential and returns the text to print; failures are
NetshieldErrors (one line each). The offline audit check reads a state directory directly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from netshield.cas.auditlog import AuditEntry, verify_chain
from netshield.cas.counter import MonotonicCounter
from netshield.cas.store.integrity import witnessed_problems
from netshield.casclient import CasClient
from netshield.errors import NetshieldError
from netshield.pki.checkpoint import CheckpointError, SignedCheckpoint, verify_checkpoint
from netshield.pki.keys import load_certificates, load_private_key, read_pem_file
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
    url: str,
    admin: AdminCredential,
    *,
    since: int,
    limit: int,
    verify: bool,
    as_json: bool,
    witnesses: Sequence[Path] = (),
) -> tuple[list[str], bool]:
    """Fetch entries; with verify, page through the whole log and check the chain client-side
    too, the head's signed checkpoint against the admin's CA, and each witness file."""
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
    bundle = load_certificates(admin.ca_pem, source="the admin's ca.pem")
    problems += head_checkpoint_problems(data.get("checkpoint"), head, bundle)
    problems += witness_file_problems(entries, witnesses, bundle)
    return lines + _verdict(problems, len(entries), len(witnesses)), not problems


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
    ca: Path | None = None,
    witnesses: Sequence[Path] = (),
) -> tuple[list[str], bool]:
    """Read the audit log straight from a (stopped or running) CAS's database; with verify,
    check the chain, its rows, its counter, the checkpoints its CAS signed (against ``ca``, by
    default the state directory's mesh-ca.pem) and each witness file."""
    from netshield.cas.store import read_audit_offline, verify_state

    entries, _counter_value, counter_path = read_audit_offline(
        state_dir,
        MonotonicCounter(counter_file) if counter_file else None,
        database=database,
        password=password,
    )
    lines = format_entries([e for e in entries if e.seq > since][:limit], as_json=as_json)
    if not verify:
        return lines, True
    ca_path = ca if ca is not None else state_dir / "mesh-ca.pem"
    problems: list[str] = []
    bundle: list[x509.Certificate] | None = None
    try:
        pem = read_pem_file(ca_path, "mesh CA certificate")
        bundle = load_certificates(pem, source=str(ca_path))
    except NetshieldError as err:
        problems.append(f"cannot check the signed checkpoints: {err} (pass --ca mesh-ca.pem)")
    problems += verify_state(
        state_dir, counter_path, database=database, password=password, bundle=bundle
    )
    problems += witness_file_problems(entries, witnesses, bundle or [])
    return lines + _verdict(problems, len(entries), len(witnesses)), not problems


def head_checkpoint_problems(
    doc: object, head: dict[str, Any], bundle: list[x509.Certificate]
) -> list[str]:
    """Whether the CAS's signed checkpoint of its head verifies and names that head."""
    try:
        checkpoint = verify_checkpoint(SignedCheckpoint.from_json(doc), bundle)
    except CheckpointError as err:
        return [f"the CAS's checkpoint of its head: {err}"]
    if (checkpoint.seq, checkpoint.head) != (int(head["seq"]), str(head["hash"])):
        return [
            f"the CAS signed entry {checkpoint.seq} as its head, but reports entry {head['seq']}"
        ]
    return []


def witness_file_problems(
    entries: Sequence[AuditEntry], paths: Sequence[Path], bundle: list[x509.Certificate]
) -> list[str]:
    """What each sidecar witness file (`cas.witness_file`) says about this log: a checkpoint
    the CAS signed that the log no longer holds is a rollback the counter cannot show."""
    from netshield.agent.witness import CasWitness

    problems: list[str] = []
    for path in paths:
        who = f"witness {path}"
        try:
            signed = CasWitness.load(path).signed
            if signed is None:
                raise NetshieldError(f"{path}: no such file")
            seen = verify_checkpoint(signed, bundle)
        except NetshieldError as err:
            problems.append(f"{who}: {err}")
            continue
        problems += witnessed_problems(entries, seen, who)
    return problems


def _verdict(problems: list[str], count: int, witnesses: int = 0) -> list[str]:
    if problems:
        return [
            f"audit log BROKEN ({Reason.AUDIT_CHAIN_BROKEN.value}):",
            *[f"  - {p}" for p in problems],
        ]
    agree = "hash chain, monotonic counter and signed checkpoints agree"
    if witnesses:
        agree += f", and so {'do' if witnesses > 1 else 'does'} {witnesses} witness file"
        agree += "s" if witnesses > 1 else ""
    return [f"audit log intact: {count} entries, {agree}"]
