"""Which records `netshield logs` shows: the filters, as one value, and the time syntax.

Pure: `RecordFilter.matches` looks only at the record; times are compared as instants, and
relative times ("15m") are resolved against a `now` the caller passes in. Every given criterion
must hold (AND); a criterion given several times matches any of its values (OR).

| option | matches |
|---|---|
| --denied | decision deny, and audit-mode connections that would have been denied |
| --service NAME | the caller or the callee is service NAME (see `parties`) |
| --peer X | the peer's service name, SPIFFE id or certificate serial, or the remote address/host |
| --reason CODE | the reason or the close reason |
| --since/--until T | started at or after / before T (RFC 3339, a date, or a duration ago: 90s, 15m, 2h, 7d) |
| --conn ID | the connection id |
| --waf-rule ID | a WAF rule (CRS id such as 942100, or NS-9xxxxx) matched one of its requests |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from netshield.logs.parties import host_of, parties, service_of
from netshield.record import ConnectionRecord

_AGO = re.compile(r"(\d{1,9})(ms|s|m|h|d|w)")
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


def parse_time(text: str, now: datetime) -> datetime:
    """An instant from RFC 3339 (``2025-01-31T12:00:00Z``), a date (``2025-01-31``, UTC midnight)
    or a duration before `now` (``15m``); ValueError says what is accepted."""
    value = text.strip()
    match = _AGO.fullmatch(value)
    if match:
        try:
            return now - int(match.group(1)) * _UNITS[match.group(2)]
        except OverflowError:
            raise ValueError(f"{text!r} reaches back before year 1") from None
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give RFC 3339 (2025-01-31T12:00:00Z), a date (2025-01-31) "
            "or a duration ago (90s, 15m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RecordFilter:
    """The criteria; an empty filter matches every record."""

    denied: bool = False
    services: frozenset[str] = frozenset()
    peers: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()
    conn_ids: frozenset[str] = frozenset()
    waf_rules: frozenset[str] = frozenset()
    tunnel_ids: frozenset[str] = frozenset()  # a tunnel's own record and its streams'
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: ConnectionRecord) -> bool:
        if self.conn_ids and record.conn_id not in self.conn_ids:
            return False
        if self.tunnel_ids and record.tunnel_id not in self.tunnel_ids:
            return False
        if self.denied and not would_deny(record):
            return False
        if self.waf_rules and not (
            record.waf is not None and self.waf_rules & set(record.waf.rule_ids)
        ):
            return False
        if self.reasons and not (
            record.reason in self.reasons or record.close_reason in self.reasons
        ):
            return False
        if self.since is not None or self.until is not None:
            started = record.started
            if self.since is not None and started < self.since:
                return False
            if self.until is not None and started >= self.until:
                return False
        if self.services:
            ends = parties(record)
            if ends.caller not in self.services and ends.callee not in self.services:
                return False
        return not self.peers or bool(peer_names(record) & self.peers)


def would_deny(record: ConnectionRecord) -> bool:
    """Denied, or allowed only because the callee's authorization is in audit mode."""
    return record.decision == "deny" or record.mode == "audit"


def peer_names(record: ConnectionRecord) -> set[str]:
    """Every name `--peer` may use for the record's peer."""
    remote = record.src if record.direction == "inbound" else record.dst
    names = {remote, host_of(remote)}
    if record.peer_identity:
        names.add(record.peer_identity)
        service = service_of(record.peer_identity)
        if service:
            names.add(service)
    if record.peer_serial:
        names.add(record.peer_serial)
    return names


__all__ = ["RecordFilter", "parse_time", "peer_names", "would_deny"]
