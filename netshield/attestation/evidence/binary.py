"""Fixed-layout binary reading for hardware evidence: little-endian fields at known offsets.

A `Layout` reads a structure the way the vendors' specifications lay it out (an offset and a
size per field) from an exact-length byte string; every failure is an `EvidenceError` with
`QUOTE_MALFORMED` naming the structure and the field, never an IndexError or struct.error.
`Cursor` reads variable-length structures (DCAP signature data) front to back with the same
guarantee. Pure.
"""

from __future__ import annotations

from netshield.attestation.evidence.claims import EvidenceError, EvidenceType
from netshield.reasons import Reason


def malformed(kind: EvidenceType, message: str) -> EvidenceError:
    return EvidenceError(message, reason=Reason.QUOTE_MALFORMED, evidence_type=kind)


class Cursor:
    """Reads `data` from the front; `take` refuses to read past the end."""

    def __init__(self, data: bytes, kind: EvidenceType, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._kind = kind
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    @property
    def position(self) -> int:
        return self._pos

    def take(self, size: int, field: str) -> bytes:
        if size < 0 or size > self.remaining:
            raise malformed(
                self._kind,
                f"{self._what}: {field} needs {size} bytes at offset {self._pos}, "
                f"{self.remaining} left",
            )
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")

    def expect_end(self) -> None:
        if self.remaining:
            raise malformed(
                self._kind, f"{self._what}: {self.remaining} unexpected bytes after the end"
            )


def u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little")


def u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def u64(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 8], "little")
