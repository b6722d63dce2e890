"""`netshield logs --by-tunnel`: the table with each tunnel's streams under the tunnel.

A tunnel's streams are the records whose `tunnel_id` names it; the tunnel's own record
(`direction: tunnel`, written when it closed) heads the group when it is in the log, otherwise a
line naming the tunnel does (it is still open, or its record is in another file). Connections
that no tunnel carried follow, one row each. Groups come in the order of their first record.
Pure: records in, lines out; the whole selection is held, so filter a large log first.
"""

from __future__ import annotations

from collections.abc import Iterable

from netshield.logs.table import row
from netshield.record import ConnectionRecord

STREAM_PREFIX = "  └ "


def grouped_lines(records: Iterable[ConnectionRecord], *, color: bool = False) -> list[str]:
    """Table rows (no header) grouped by tunnel, then the connections outside tunnels."""
    heads: dict[str, ConnectionRecord | None] = {}
    streams: dict[str, list[ConnectionRecord]] = {}
    alone: list[ConnectionRecord] = []
    for record in records:
        if record.direction == "tunnel":
            key = record.tunnel_id or record.conn_id
            heads[key] = record
            streams.setdefault(key, [])
        elif record.tunnel_id is not None:
            heads.setdefault(record.tunnel_id, None)
            streams.setdefault(record.tunnel_id, []).append(record)
        else:
            alone.append(record)
    lines: list[str] = []
    for key, head in heads.items():
        members = streams.get(key, [])
        if head is not None:
            lines.append(row(head, color=color))
        else:
            lines.append(
                f"tunnel {key} (open, or its record is elsewhere): {len(members)} stream(s)"
            )
        lines += [STREAM_PREFIX + row(r, color=color) for r in members]
    lines += [row(r, color=color) for r in alone]
    return lines


__all__ = ["STREAM_PREFIX", "grouped_lines"]
