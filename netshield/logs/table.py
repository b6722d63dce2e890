"""The readable table of `netshield logs`: one fixed-width row per record, streamed.

Columns: time (UTC), conn id, direction, source → destination, peer (service name, else SPIFFE
id), decision (allow / deny / audit: allowed only because of audit mode), reason (the deny or
audit reason; for an allowed connection how it closed; an aggregate of a flood's denials shows
its count first, ``×1999 HANDSHAKE_TIMEOUT``), bytes in/out and duration. Widths are fixed so
rows can be printed as they arrive; long values are cut with "…".

Pure: strings in, strings out. Colour (ANSI) only when the caller asks for it — the CLI asks only
when standard output is a terminal and NO_COLOR is unset.
"""

from __future__ import annotations

from dataclasses import dataclass

from netshield.logs.parties import service_of
from netshield.record import ConnectionRecord

RESET = "\x1b[0m"
GREEN, RED, YELLOW, DIM, BOLD = "\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[2m", "\x1b[1m"


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    width: int
    right: bool = False


COLUMNS = (
    Column("TIME (UTC)", 23),
    Column("CONN", 16),
    Column("DIR", 3),
    Column("SOURCE → DESTINATION", 45),
    Column("PEER", 18),
    Column("DECISION", 8),
    Column("REASON", 22),
    Column("BYTES IN/OUT", 13, right=True),
    Column("DURATION", 8, right=True),
)


def fit(text: str, width: int, *, right: bool = False) -> str:
    """`text` padded or cut (with "…") to exactly `width` characters."""
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.rjust(width) if right else text.ljust(width)


def human_bytes(count: int) -> str:
    """1023 → "1023", 1536 → "1.5K", 3 MiB → "3.0M"."""
    value = float(count)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{count}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{count}"  # pragma: no cover - the loop always returns


def human_duration(ms: float) -> str:
    """0.4 → "0.4ms", 12 → "12ms", 3400 → "3.4s", 125000 → "2m05s", 2 days → "48h00m"."""
    if ms < 10:
        return f"{ms:.1f}ms"
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def decision_word(record: ConnectionRecord) -> str:
    return "audit" if record.decision == "allow" and record.mode == "audit" else record.decision


def reason_word(record: ConnectionRecord) -> str:
    """Why it was denied (or audited); for an allowed connection, how it closed."""
    if record.decision == "deny" or record.mode == "audit":
        return record.reason
    return record.close_reason or record.reason


def peer_word(record: ConnectionRecord) -> str:
    return service_of(record.peer_identity) or record.peer_identity or "-"


_DIRS = {"inbound": "in", "outbound": "out", "tunnel": "tun"}


def _paint(text: str, colour: str, on: bool) -> str:
    return f"{colour}{text}{RESET}" if on and colour else text


def header(*, color: bool = False) -> str:
    cells = [fit(c.title, c.width, right=c.right) for c in COLUMNS]
    return _paint("  ".join(cells).rstrip(), BOLD, color)


def row(record: ConnectionRecord, *, color: bool = False) -> str:
    """One record as a table row."""
    decision = decision_word(record)
    values = (
        record.ts.replace("T", " ").removesuffix("Z"),
        record.conn_id,
        _DIRS[record.direction],
        f"{record.src} → {record.dst}",
        peer_word(record),
        decision,
        f"×{record.count} {reason_word(record)}" if record.count > 1 else reason_word(record),
        f"{human_bytes(record.bytes_in)}/{human_bytes(record.bytes_out)}",
        human_duration(record.duration_ms),
    )
    colours = {"allow": GREEN, "deny": RED, "audit": YELLOW}
    cells = []
    for column, value in zip(COLUMNS, values, strict=True):
        cell = fit(value, column.width, right=column.right)
        if column.title == "DECISION" or (column.title == "REASON" and decision != "allow"):
            cell = _paint(cell, colours.get(decision, ""), color)
        cells.append(cell)
    return "  ".join(cells).rstrip()


__all__ = [
    "COLUMNS",
    "decision_word",
    "fit",
    "header",
    "human_bytes",
    "human_duration",
    "peer_word",
    "reason_word",
    "row",
]
