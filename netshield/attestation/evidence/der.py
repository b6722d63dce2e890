"""A minimal DER reader for the vendor certificate extensions netshield reads.

AMD's VCEK carries its TCB and chip id as individual extensions whose values are DER INTEGER,
IA5String or OCTET STRING; Intel's PCK certificate carries one "SGX Extensions" SEQUENCE of
(OID, value) pairs (PPID, TCB components, PCE-ID, FMSPC). `cryptography` hands both over as raw
bytes. `tlv` splits one DER element, `children` the elements of a constructed one; both raise
ValueError on anything that is not well-formed definite-length DER. Pure.
"""

from __future__ import annotations

INTEGER, OCTET_STRING, OID, ENUMERATED, IA5STRING, SEQUENCE = 0x02, 0x04, 0x06, 0x0A, 0x16, 0x30


def tlv(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """(tag, value, end) of the element at `pos`."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER element")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not used here")
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
        if length < 0x80 or (count > 1 and length < 1 << (8 * (count - 1))):
            raise ValueError("non-minimal DER length")
    end = pos + length
    if end > len(data):
        raise ValueError("truncated DER value")
    return tag, data[pos:end], end


def single(data: bytes, tag: int) -> bytes:
    """The value of `data`, which must be exactly one element with `tag`."""
    got, value, end = tlv(data)
    if got != tag or end != len(data):
        raise ValueError(f"expected one DER element with tag {tag:#x}")
    return value


def children(value: bytes) -> list[tuple[int, bytes]]:
    """The (tag, value) elements that make up a constructed value."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(value):
        tag, inner, pos = tlv(value, pos)
        out.append((tag, inner))
    return out


def integer(value: bytes) -> int:
    """A non-negative DER INTEGER's value."""
    if not value or (len(value) > 1 and value[0] == 0 and value[1] < 0x80):
        raise ValueError("bad DER integer")
    if value[0] & 0x80:
        raise ValueError("negative DER integer")
    return int.from_bytes(value, "big")


def oid(value: bytes) -> str:
    """Dotted text of a DER OBJECT IDENTIFIER value."""
    if not value or value[-1] & 0x80:
        raise ValueError("bad DER object identifier")
    arcs: list[int] = []
    current = 0
    for byte in value:
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(current)
            current = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))
