"""The sidecar's rollback witness: the newest signed audit checkpoint it has seen of its CAS.

A CAS whose state and counter were restored together from one snapshot passes its own rollback
check. Its sidecars do not: each remembers the newest checkpoint the CAS signed that it saw (in
the feed and in every attestation answer), and refuses a CAS that presents an older one: a
lower audit head, a lower policy version, another entry at the same place, another state, or
(asked in the feed for the entry the sidecar saw) no such entry or a different one. That is
`CAS_ROLLED_BACK`; a checkpoint that is malformed or does not verify against the trust bundle
is `CHECKPOINT_INVALID`. Only checkpoints that verify are remembered, so the CAS cannot make a
sidecar remember a head it never signed.

The comparison (`rollback_problem`, `fork_problem`) is pure. `CasWitness` adds the memory and,
optionally, a file of its own (`cas.witness_file`) that keeps it across sidecar restarts:
written atomically whenever the checkpoint moves forward, read at start and verified once the
trust domain is known. A sidecar on a fresh CAS state on purpose needs its file removed.

Guarantees: the remembered checkpoint never goes back; a malformed or unreadable witness file,
or one whose checkpoint does not verify, is a `NetshieldError` naming the file at start, never
silently ignored (the witness would otherwise forget); a file that cannot be written later is
logged once and the memory goes on witnessing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netshield.errors import NetshieldError
from netshield.pki.checkpoint import Checkpoint, CheckpointError, SignedCheckpoint
from netshield.reasons import Reason

WITNESS_FORMAT = "netshield-witness/1"

log = logging.getLogger("netshield.agent")

Verify = Callable[[SignedCheckpoint], Checkpoint]
NOT_ASKED: object = object()  # `CasWitness.check` without the fork check (attestation answers)


def rollback_problem(presented: Checkpoint, seen: Checkpoint | None) -> str | None:
    """Why a CAS presenting ``presented`` is behind (or beside) ``seen``, or None."""
    if seen is None:
        return None
    if presented.state_id != seen.state_id:
        return (
            f"the CAS presents state {presented.state_id}, but this sidecar saw state "
            f"{seen.state_id}: its state was replaced"
        )
    if presented.seq < seen.seq:
        return (
            f"the CAS's signed audit head is entry {presented.seq}, but this sidecar saw it at "
            f"entry {seen.seq}: its state was restored from an older copy"
        )
    if presented.policy_version < seen.policy_version:
        return (
            f"the CAS serves policy version {presented.policy_version}, but this sidecar saw "
            f"version {seen.policy_version}: its state was restored from an older copy"
        )
    if presented.seq == seen.seq and presented.head != seen.head:
        return (
            f"the CAS's audit entry {seen.seq} is not the one this sidecar saw: its state was "
            "replaced by another copy"
        )
    return None


def fork_problem(at_seen: Checkpoint | None, seen: Checkpoint) -> str | None:
    """Why the CAS's own checkpoint of entry ``seen.seq`` (``at_seen``) is not ``seen``, or None."""
    if at_seen is None:
        return (
            f"the CAS holds no signed checkpoint of audit entry {seen.seq}, which this sidecar "
            "saw: its state was restored from an older copy or replaced"
        )
    if (at_seen.state_id, at_seen.seq, at_seen.head) != (seen.state_id, seen.seq, seen.head):
        return (
            f"the CAS's audit entry {seen.seq} is not the one this sidecar saw: its state was "
            "replaced by another copy (a different history since)"
        )
    return None


@dataclass
class CasWitness:
    """The newest verified checkpoint seen (None: nothing yet), and where it is kept."""

    path: Path | None = None
    signed: SignedCheckpoint | None = None
    _verify: Verify | None = None
    _write_failed: bool = False

    @property
    def seen(self) -> Checkpoint | None:
        return None if self.signed is None else self.signed.checkpoint

    @classmethod
    def load(cls, path: Path | None) -> CasWitness:
        """The witness remembered in ``path`` (a fresh one if there is no file yet); not yet
        verified: `bind` does that."""
        if path is None or not path.exists():
            return cls(path=path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != WITNESS_FORMAT:
                raise ValueError(f"not a {WITNESS_FORMAT} document")
            signed = SignedCheckpoint.from_json(doc.get("checkpoint"))
        except (OSError, ValueError, CheckpointError) as err:
            raise _file_error(path, f"unreadable or malformed ({err})") from None
        return cls(path=path, signed=signed)

    def bind(self, verify: Verify) -> None:
        """Verify what the file remembered (NetshieldError naming it if it does not verify) and
        use ``verify`` for every checkpoint the CAS presents from now on."""
        if self.signed is not None:
            try:
                verify(self.signed)
            except CheckpointError as err:
                raise _file_error(self.path, f"its checkpoint does not verify ({err})") from None
        self._verify = verify

    def check(
        self, presented: object, *, baseline: Checkpoint | None, at_seen: object = NOT_ASKED
    ) -> SignedCheckpoint:
        """The verified checkpoint the CAS presents (a `to_json` document), if it is not behind
        ``baseline`` (what was seen when the request was sent) and, when given, the CAS's own
        checkpoint of ``baseline``'s entry (``at_seen``, None if it has none) is ``baseline``.

        NetshieldError: `CHECKPOINT_INVALID` for a missing, malformed or unverifiable
        checkpoint, `CAS_ROLLED_BACK` for one that is behind or beside ``baseline``.
        """
        signed = self._verified(presented, "its audit head")
        problem = rollback_problem(signed.checkpoint, baseline)
        if problem is None and baseline is not None and at_seen is not NOT_ASKED:
            mine = None if at_seen is None else self._verified(at_seen, f"entry {baseline.seq}")
            problem = fork_problem(None if mine is None else mine.checkpoint, baseline)
        if problem is not None:
            raise NetshieldError(problem, reason=Reason.CAS_ROLLED_BACK)
        return signed

    def remember(self, signed: SignedCheckpoint) -> None:
        """Keep ``signed`` if it is newer than what was seen (never goes back); persist it."""
        seen = self.seen
        if seen is not None and signed.checkpoint.seq <= seen.seq:
            return
        self.signed = signed
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        doc = {"format": WITNESS_FORMAT, "checkpoint": signed.to_json()}
        try:
            tmp.write_text(json.dumps(doc, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as err:  # the memory still holds it; the file will be behind
            if not self._write_failed:
                log.error(
                    "cas.witness_file %s: cannot write (%s); the witness is kept in memory only "
                    "until the file can be written again",
                    self.path,
                    err.strerror or err,
                )
            self._write_failed = True
        else:
            if self._write_failed:
                log.warning("cas.witness_file %s: written again", self.path)
            self._write_failed = False

    def _verified(self, doc: object, what: str) -> SignedCheckpoint:
        if self._verify is None:
            raise RuntimeError("CasWitness.bind must be called before check")
        if doc is None:
            raise NetshieldError(
                f"the CAS sent no signed checkpoint of {what}", reason=Reason.CHECKPOINT_INVALID
            )
        signed = SignedCheckpoint.from_json(doc)
        self._verify(signed)
        return signed


def _file_error(path: Path | None, what: str) -> NetshieldError:
    return NetshieldError(
        f"cas.witness_file {path}: {what}; it is the sidecar's memory of the CAS's history: "
        "restore it, or remove it to start afresh",
        reason=Reason.CAS_ROLLED_BACK,
    )
