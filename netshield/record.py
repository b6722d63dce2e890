"""The connection record (DESIGN §5): one JSON line per connection, what operators read, filter
and explain.

A record says when a connection started, who was on each end, what was decided and why (a stable
reason code and a sentence an operator can act on), how many bytes moved and why it closed.
`to_json` writes one line with sorted keys and its ``"schema"``; `from_json` reads it back.

Schema versions: a line carries the lowest version that can represent it, so a reader that knows
only an older version refuses what it would misread instead of miscounting it.
- **1**: one connection (fields added within version 1, like ``proxy``, have a default that a
  line written before them means: `ADDED_FIELDS`).
- **2**: adds ``count`` (how many connections the line stands for, >= 1) and ``last_ts`` (when
  the last of them was accepted). Only an aggregate of denials has them: during a flood the
  sidecar writes one line per source, reason and interval (`netshield.sidecar.denials`) whose
  ``ts``, ``conn_id``, ``src`` and ``detail`` are those of the first connection it folds. Lines
  with ``count`` 1 are written as schema 1 without the two keys.
An application connection carried by a tunnel names it (`tunnel_id`, `stream_id`); the tunnel
itself gets a record of its own (`direction: tunnel`, `streams` carried) when it closes; the
three keys are written only for those (a line without them means null).

Guarantees: a `ConnectionRecord` is checked when built (bad values raise ValueError), so
`from_json(r.to_json()) == r` for every record; `from_json` raises only ValueError, whatever the
input; readers ignore keys they do not know, so fields can be added to a line (e.g. a hash chain)
without breaking them; a field's meaning never changes within a schema version.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

RECORD_SCHEMA = 2
"""The newest schema version this netshield writes and reads (it reads every older one)."""
ONE_CONNECTION_SCHEMA = 1
"""The version of a line that stands for one connection (no ``count``, no ``last_ts``)."""

Direction = Literal["inbound", "outbound", "tunnel"]
Decision = Literal["allow", "deny"]
Mode = Literal["enforce", "audit"]
Proxy = Literal["sidecar", "in-process"]

DIRECTIONS: tuple[Direction, ...] = ("inbound", "outbound", "tunnel")
DECISIONS: tuple[Decision, ...] = ("allow", "deny")
MODES: tuple[Mode, ...] = ("enforce", "audit")
PROXIES: tuple[Proxy, ...] = ("sidecar", "in-process")

_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_HEX = re.compile(r"[0-9a-f]{1,64}")


def rfc3339(moment: datetime) -> str:
    """``2025-01-31T12:00:00.123Z``: UTC, milliseconds (sorts as text); `moment` must be aware."""
    if moment.tzinfo is None:
        raise ValueError("a record timestamp needs a timezone (use datetime.now(UTC))")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"  # in ASCII order, so ids sort by time
_TIME_CHARS, _RANDOM_CHARS = 10, 6


def new_conn_id(now: datetime | None = None, *, entropy: int | None = None) -> str:
    """A 16-character connection id: 10 base32 characters of Unix milliseconds (sortable by
    start time), then 6 of randomness (30 bits). `now` and `entropy` are for tests."""
    moment = now if now is not None else datetime.now(UTC)
    millis = max(0, int(moment.timestamp() * 1000))
    rand = entropy if entropy is not None else secrets.randbits(5 * _RANDOM_CHARS)
    value = (millis % 2 ** (5 * _TIME_CHARS)) << (5 * _RANDOM_CHARS) | (
        rand % 2 ** (5 * _RANDOM_CHARS)
    )
    chars = [_CROCKFORD[(value >> (5 * i)) & 31] for i in range(_TIME_CHARS + _RANDOM_CHARS)]
    return "".join(reversed(chars))


@dataclass(frozen=True)
class WafRequest:
    """One request on a WAF route: what the WAF did with it and why."""

    request_id: str  # also in the 403 body the caller got
    method: str
    path: str  # the request target without its query string
    action: str  # "pass", "block", "detect" (would have blocked; forwarded), "refuse" (HTTP)
    status: int = 0  # the status the caller got (0: none, the connection ended first)
    rule_ids: tuple[str, ...] = ()
    anomaly_score: int = 0
    matched: tuple[tuple[str, str], ...] = ()  # (rule id, where it matched, e.g. "ARGS:id")

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "action": self.action,
            "status": self.status,
            "rule_ids": list(self.rule_ids),
            "anomaly_score": self.anomaly_score,
            "matched": [{"rule_id": r, "where": w} for r, w in self.matched],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WafRequest:
        matched = data.get("matched") or []
        return cls(
            request_id=str(data.get("request_id", "")),
            method=str(data.get("method", "")),
            path=str(data.get("path", "")),
            action=str(data.get("action", "")),
            status=int(data.get("status") or 0),
            rule_ids=tuple(str(r) for r in data.get("rule_ids") or ()),
            anomaly_score=int(data.get("anomaly_score") or 0),
            matched=tuple(
                (str(m.get("rule_id", "")), str(m.get("where", "")))
                for m in matched
                if isinstance(m, dict)
            ),
        )


@dataclass(frozen=True)
class WafOutcome:
    """What the web application firewall did with the connection's requests: `action` sums
    them up ("pass", "detect", "block", "refuse"), `rule_ids` is every rule that matched on any
    of them, `requests` the per-request verdicts (requests with a match are always kept; of
    the others, the first `WAF_REQUESTS_KEPT`), `request_count` how many requests there were."""

    action: str  # e.g. "pass", "block", "detect"
    rule_ids: tuple[str, ...] = ()
    engine: str = ""  # "crs" or "compact" ("" for records of older sidecars)
    mode: str = ""  # "block", "detect" or "off"
    requests: tuple[WafRequest, ...] = ()
    request_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "rule_ids": list(self.rule_ids),
            "engine": self.engine,
            "mode": self.mode,
            "request_count": self.request_count,
            "requests": [r.to_dict() for r in self.requests],
        }


WAF_REQUESTS_KEPT = 100


@dataclass(frozen=True, kw_only=True)
class ConnectionRecord:
    """One connection, as the sidecar saw it. Bytes are counted from the initiator's side:
    `bytes_in` is what the caller sent towards the upstream, `bytes_out` what came back."""

    ts: str  # RFC 3339 UTC (see `rfc3339`): when the connection was accepted
    conn_id: str  # see `new_conn_id`; appears in every log line about the connection
    direction: Direction
    listener: str  # the listener that accepted it, e.g. "inbound" or "outbound:orders"
    src: str  # the caller's address (host:port, or unix:PATH)
    dst: str  # where it was going: the upstream or the destination sidecar
    original_dst: str | None = None  # transparent mode: the address the service dialled
    local_identity: str | None = None  # this sidecar's SPIFFE id (None: no credentials)
    peer_identity: str | None = None  # the verified peer's SPIFFE id
    tls_version: str | None = None  # e.g. "TLSv1.3"
    cipher: str | None = None
    resumed: bool = False
    decision: Decision
    reason: str  # a stable reason code (netshield.reasons), e.g. "PEER_NOT_AUTHORIZED"
    detail: str  # one sentence an operator can act on
    mode: Mode = "enforce"  # "audit": a deny was recorded but the connection allowed
    waf: WafOutcome | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    duration_ms: float = 0.0
    close_reason: str | None = None  # a reason code (CLOSED, IDLE_TIMEOUT, PEER_REVOKED, ...)
    peer_serial: str | None = None  # the peer certificate's serial, lower-case hex
    peer_epoch: int | None = None  # the certificate epoch in the peer's certificate
    policy_version: int | None = None  # the policy version this sidecar's certificate carries
    proxy: Proxy = "sidecar"  # who wrapped the connection: a sidecar, or the in-process shield
    count: int = 1  # schema 2: the connections this line stands for (an aggregate of denials)
    last_ts: str | None = None  # schema 2: when the last of them was accepted (RFC 3339 UTC)
    tunnel_id: str | None = None  # the tunnel that carried it as a stream (both sidecars agree)
    stream_id: int | None = None  # its HTTP/2 stream id in that tunnel (both sidecars agree)
    streams: int | None = None  # direction "tunnel": how many streams the tunnel carried

    def __post_init__(self) -> None:
        _check(self)
        object.__setattr__(self, "duration_ms", float(self.duration_ms))

    @property
    def started(self) -> datetime:
        """`ts` as an aware datetime."""
        return datetime.fromisoformat(self.ts)

    @property
    def schema(self) -> int:
        """The lowest schema version that represents this record (see the module docstring)."""
        return ONE_CONNECTION_SCHEMA if self.count == 1 and self.last_ts is None else RECORD_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-able data, with its schema version."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        data["waf"] = self.waf.to_dict() if self.waf is not None else None
        for name in _TUNNEL_FIELDS:  # written only for tunnels and their streams
            if data[name] is None:
                del data[name]
        data["schema"] = self.schema
        if data["schema"] == ONE_CONNECTION_SCHEMA:
            for name in AGGREGATE_FIELDS:
                del data[name]
        return data

    def to_json(self) -> str:
        """One line of JSON (ASCII, keys sorted, no trailing newline)."""
        return json.dumps(
            self.to_dict(),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, line: str | bytes) -> ConnectionRecord:
        """Read a line written by `to_json`; ValueError says what is wrong with it."""
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("not a record: JSON nested too deeply") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"not a record: not JSON ({err})") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: object) -> ConnectionRecord:
        """Build a record from parsed JSON; keys other than the record's fields are ignored."""
        if not isinstance(data, dict):
            raise ValueError("not a record: expected a JSON object")
        schema = data.get("schema")
        if type(schema) is not int or not ONE_CONNECTION_SCHEMA <= schema <= RECORD_SCHEMA:
            raise ValueError(
                f"record schema {schema!r} is not one of 1 to {RECORD_SCHEMA} (written by a newer "
                "or another netshield?)"
            )
        required = RECORD_FIELDS if schema >= RECORD_SCHEMA else ONE_CONNECTION_FIELDS
        missing = [name for name in required if name not in data and name not in ADDED_FIELDS]
        if missing:
            raise ValueError(f"record has no {', '.join(missing)}")
        values = {name: data.get(name, ADDED_FIELDS.get(name)) for name in required}
        values["waf"] = _waf_from(data["waf"])
        return cls(**values)


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ConnectionRecord))
"""The record's keys besides "schema", in declaration order (a schema 2 line has them all)."""
AGGREGATE_FIELDS: tuple[str, ...] = ("count", "last_ts")
"""The keys schema 2 added: only lines that stand for more than one connection carry them."""
ONE_CONNECTION_FIELDS: tuple[str, ...] = tuple(
    name for name in RECORD_FIELDS if name not in AGGREGATE_FIELDS
)
"""The keys of a schema 1 line besides "schema"."""

_TUNNEL_FIELDS = ("tunnel_id", "stream_id", "streams")

ADDED_FIELDS: dict[str, object] = {
    "proxy": "sidecar",
    "tunnel_id": None,
    "stream_id": None,
    "streams": None,
}
"""Fields added within schema 1, with the value a line written before them means."""


def _waf_from(value: object) -> WafOutcome | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("action"), str):
        raise ValueError("record field 'waf': expected null or {action, rule_ids}")
    rule_ids = value.get("rule_ids", [])
    if not isinstance(rule_ids, list) or not all(isinstance(r, str) for r in rule_ids):
        raise ValueError("record field 'waf.rule_ids': expected a list of strings")
    requests = value.get("requests") or []
    if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
        raise ValueError("record field 'waf.requests': expected a list of objects")
    try:
        parsed = tuple(WafRequest.from_dict(r) for r in requests)
    except (TypeError, ValueError, AttributeError):
        raise ValueError("record field 'waf.requests': not per-request verdicts") from None
    return WafOutcome(
        action=value["action"],
        rule_ids=tuple(rule_ids),
        engine=str(value.get("engine") or ""),
        mode=str(value.get("mode") or ""),
        requests=parsed,
        request_count=int(value.get("request_count") or len(parsed)),
    )


def _bad(name: str, expected: str, value: object) -> ValueError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:59] + "…"
    return ValueError(f"record field {name!r}: expected {expected}, got {shown}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(r: ConnectionRecord) -> None:
    """Raise ValueError naming the first field whose value a record cannot have."""
    if not isinstance(r.ts, str) or not _TS.fullmatch(r.ts):
        raise _bad("ts", "an RFC 3339 UTC time like 2025-01-31T12:00:00.123Z", r.ts)
    try:
        datetime.fromisoformat(r.ts)
    except ValueError:
        raise _bad("ts", "a real date and time", r.ts) from None
    if not isinstance(r.conn_id, str) or not r.conn_id:
        raise _bad("conn_id", "a non-empty string", r.conn_id)
    for name in ("listener", "src", "dst", "detail"):
        if not isinstance(getattr(r, name), str):
            raise _bad(name, "a string", getattr(r, name))
    for name in ("original_dst", "local_identity", "peer_identity", "tls_version", "cipher"):
        if getattr(r, name) is not None and not isinstance(getattr(r, name), str):
            raise _bad(name, "a string or null", getattr(r, name))
    for name, choices in (
        ("direction", DIRECTIONS),
        ("decision", DECISIONS),
        ("mode", MODES),
        ("proxy", PROXIES),
    ):
        if getattr(r, name) not in choices:
            raise _bad(name, " or ".join(choices), getattr(r, name))
    if not isinstance(r.reason, str) or not _CODE.fullmatch(r.reason):
        raise _bad("reason", "a reason code (upper-case, e.g. PEER_NOT_AUTHORIZED)", r.reason)
    if r.close_reason is not None and (
        not isinstance(r.close_reason, str) or not _CODE.fullmatch(r.close_reason)
    ):
        raise _bad("close_reason", "a reason code or null", r.close_reason)
    if not isinstance(r.resumed, bool):
        raise _bad("resumed", "true or false", r.resumed)
    if r.waf is not None and not (
        isinstance(r.waf, WafOutcome)
        and isinstance(r.waf.action, str)
        and all(isinstance(rule, str) for rule in r.waf.rule_ids)
    ):
        raise _bad("waf", "null or {action, rule_ids} of strings", r.waf)
    for name in ("bytes_in", "bytes_out"):
        if not _is_int(getattr(r, name)) or getattr(r, name) < 0:
            raise _bad(name, "a non-negative integer", getattr(r, name))
    duration = r.duration_ms
    try:
        number = float(duration) if _is_int(duration) or isinstance(duration, float) else -1.0
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not (math.isfinite(number) and number >= 0):
        raise _bad("duration_ms", "a non-negative number", duration)
    if r.peer_serial is not None and (
        not isinstance(r.peer_serial, str) or not _HEX.fullmatch(r.peer_serial)
    ):
        raise _bad("peer_serial", "lower-case hex or null", r.peer_serial)
    if r.tunnel_id is not None and (not isinstance(r.tunnel_id, str) or not r.tunnel_id):
        raise _bad("tunnel_id", "a non-empty string or null", r.tunnel_id)
    for name in ("peer_epoch", "policy_version", "stream_id", "streams"):
        value = getattr(r, name)
        if value is not None and (not _is_int(value) or value < 0):
            raise _bad(name, "a non-negative integer or null", value)
    if not _is_int(r.count) or r.count < 1:
        raise _bad("count", "a positive integer", r.count)
    if r.last_ts is not None and (
        not isinstance(r.last_ts, str)
        or not _TS.fullmatch(r.last_ts)
        or not _is_real_time(r.last_ts)
    ):
        raise _bad(
            "last_ts", "null or an RFC 3339 UTC time like 2025-01-31T12:00:00.123Z", r.last_ts
        )
    if r.count > 1 and r.decision != "deny":
        raise _bad("count", "1 for an allowed connection (only denials are aggregated)", r.count)


def _is_real_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


__all__ = [
    "AGGREGATE_FIELDS",
    "DECISIONS",
    "DIRECTIONS",
    "MODES",
    "ONE_CONNECTION_FIELDS",
    "ONE_CONNECTION_SCHEMA",
    "PROXIES",
    "RECORD_FIELDS",
    "RECORD_SCHEMA",
    "WAF_REQUESTS_KEPT",
    "ConnectionRecord",
    "Decision",
    "Direction",
    "Mode",
    "Proxy",
    "WafOutcome",
    "WafRequest",
    "new_conn_id",
    "rfc3339",
]
