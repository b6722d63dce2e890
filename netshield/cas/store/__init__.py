"""The CAS state store: the logic written once above a small storage interface.

- `model`: the stored values and their canonical text forms (pure).
- `integrity`: whether rows, audit log and monotonic counter agree (pure).
- `backend`: the storage interface (`Backend`, `StateTx`) the logic talks to (pure).
- `sql`: that interface in portable SQL over any DB-API connection (pure).
- `sqlite`: the embedded default, one SQLite file per state directory.
- `rollback`: the checks that refuse a rolled-back or edited state, above the interface.
- `core`: `CasStore`, the nonces, policy versions, serials, revocations, audit chain and
  rollback checks, above the interface.
"""

from netshield.cas.store.core import CasStore
from netshield.cas.store.model import (
    REVOCATION_KINDS,
    SCHEMA_VERSION,
    IssuedCert,
    Revocation,
    RevocationKind,
    StoredPolicy,
    parse_serial,
    policy_text_hash,
    serial_hex,
)
from netshield.cas.store.rollback import read_audit_offline, verify_state
from netshield.cas.store.sqlite import DB_NAME, LOCK_NAME
from netshield.nonces import NONCE_BYTES

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "NONCE_BYTES",
    "REVOCATION_KINDS",
    "SCHEMA_VERSION",
    "CasStore",
    "IssuedCert",
    "Revocation",
    "RevocationKind",
    "StoredPolicy",
    "parse_serial",
    "policy_text_hash",
    "read_audit_offline",
    "serial_hex",
    "verify_state",
]
