"""Nonce status: the outcome of presenting an attestation nonce to the CAS.

A nonce is single-use and expires within seconds; the CAS store decides the status and the
appraisal turns any status but VALID into a refusal with the matching reason code.
"""

from __future__ import annotations

import enum


class NonceStatus(enum.StrEnum):
    VALID = "valid"
    UNKNOWN = "unknown"
    REUSED = "reused"
    EXPIRED = "expired"
