"""`netshield status [--admin ADDR]`: what one sidecar is doing, from its admin listener.

Reads /status, /identity, /connections and /metrics on ADDR (host:port or http://host:port;
default $NETSHIELD_SIDECAR_ADMIN, else 127.0.0.1:15000) and prints the identity, certificate
serial and time to expiry, whether the CAS is reachable, the last renewal and last error, the
live connections and per-peer counters (`netshield_peer_*` metrics). `render` is pure (time
passed in). Exit status: 0 when the sidecar is ready, 1 when it answers but is not ready, 2 when
it cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from netshield.errors import UsageError

ENV_SIDECAR_ADMIN = "NETSHIELD_SIDECAR_ADMIN"
DEFAULT_ADMIN = "127.0.0.1:15000"
TIMEOUT = 5.0


@dataclass(frozen=True)
class Snapshot:
    """What the admin API answered."""

    base: str
    status: dict[str, Any]
    identity: dict[str, Any] | None  # None: 503, no certificate
    connections: list[dict[str, Any]]
    metrics: str
    ready: bool
    not_ready_why: str = ""

    @property
    def streams_and_connections(self) -> list[dict[str, Any]]:
        """The live connections (a tunnel's streams included), without the tunnels."""
        return [c for c in self.connections if c.get("direction") != "tunnel"]

    @property
    def tunnels(self) -> list[dict[str, Any]]:
        """The live tunnels to and from other sidecars."""
        return [c for c in self.connections if c.get("direction") == "tunnel"]


def base_url(addr: str) -> str:
    text = addr.strip().rstrip("/")
    if not text:
        raise UsageError("--admin: empty address (host:port)", hint="")
    return text if text.startswith(("http://", "https://")) else f"http://{text}"


def _get(base: str, path: str) -> tuple[int, bytes]:
    url = base + path
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:  # noqa: S310 -- http(s) only
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        why = getattr(err, "reason", err)
        raise UsageError(
            f"sidecar admin API at {base} unreachable: {why}",
            hint="is the sidecar running? its ready line names the admin address (admin.listen)",
        ) from None


def _json(base: str, path: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise UsageError(
            f"{base}{path} did not answer JSON: is this a netshield sidecar's admin listener?",
            hint="",
        ) from None


def fetch(addr: str) -> Snapshot:
    base = base_url(addr)
    code, body = _get(base, "/status")
    status = _json(base, "/status", body)
    if code != 200 or not isinstance(status, dict):
        raise UsageError(f"{base}/status answered HTTP {code}", hint="")
    code, body = _get(base, "/identity")
    identity = _json(base, "/identity", body) if code == 200 else None
    _code, body = _get(base, "/connections")
    connections = _json(base, "/connections", body)
    _code, body = _get(base, "/metrics")
    code, ready_body = _get(base, "/readyz")
    ready_doc = _json(base, "/readyz", ready_body)
    why = ""
    if code != 200 and isinstance(ready_doc, dict):
        error = ready_doc.get("error", {})
        why = str(error.get("message", "")) if isinstance(error, dict) else ""
    return Snapshot(
        base,
        status,
        identity if isinstance(identity, dict) else None,
        connections if isinstance(connections, list) else [],
        body.decode("utf-8", "replace"),
        code == 200,
        why,
    )


# --- rendering (pure) ---------------------------------------------------------------------------


def _when(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def span(seconds: float) -> str:
    """95 → "1m35s", 7300 → "2h01m40s"."""
    total = int(abs(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _ago(text: object, now: datetime) -> str:
    moment = _when(text)
    if moment is None:
        return "never"
    return f"{moment.isoformat(timespec='seconds')} ({span((now - moment).total_seconds())} ago)"


def peer_counters(metrics: str) -> list[dict[str, Any]]:
    """Per (direction, peer): allow/deny counts and bytes, from the Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    table: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        families = list(text_string_to_metric_families(metrics))
    except ValueError:
        return []
    for family in families:
        if family.name not in ("netshield_peer_connections", "netshield_peer_bytes"):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            key = (labels.get("direction", "?"), labels.get("peer", "?"))
            row = table.setdefault(
                key,
                {"direction": key[0], "peer": key[1], "allow": 0, "deny": 0, "in": 0, "out": 0},
            )
            column = labels.get("decision") or labels.get("flow") or "?"
            if column in row:
                row[column] += int(sample.value)
    return sorted(table.values(), key=lambda r: (r["peer"], r["direction"]))


def render(snap: Snapshot, now: datetime) -> list[str]:
    from netshield.logs.table import human_bytes

    status, identity = snap.status, snap.identity
    agent = status.get("agent", {}) if isinstance(status.get("agent"), dict) else {}
    out = [f"sidecar {status.get('service', '?')} at {snap.base}"]
    out.append(f"  ready         {'yes' if snap.ready else 'NO: ' + (snap.not_ready_why or '?')}")
    if identity is None:
        out.append("  identity      none: no valid certificate (not attested yet, or expired)")
    else:
        out.append(f"  identity      {identity.get('spiffe_id')}")
        expiry = _when(identity.get("not_after"))
        left = (expiry - now).total_seconds() if expiry else None
        when = (
            "?"
            if left is None
            else (f"expires in {span(left)}" if left > 0 else f"EXPIRED {span(left)} ago")
        )
        out.append(
            f"  certificate   serial {identity.get('serial')}, {when} ({identity.get('not_after')})"
        )
        out.append(
            f"  policy        version {identity.get('policy_version')}, epoch "
            f"{identity.get('epoch')} (min epoch {agent.get('min_epoch', '?')})"
        )
    reachable = agent.get("cas_reachable")
    cas = "reachable" if reachable else "NOT reachable" if reachable is False else "?"
    if agent.get("cas_refused"):  # "CAS_ROLLED_BACK: the CAS's signed audit head is ..."
        cas += f", its history REFUSED: {agent['cas_refused']}"
    out.append(f"  CAS           {cas}")
    if agent.get("checkpoint_seen") is not None:
        out.append(
            f"  witness       newest signed checkpoint seen: audit entry {agent['checkpoint_seen']}"
        )
    out.append(f"  last renewal  {_ago(agent.get('last_renewal'), now)}")
    nxt = _when(agent.get("next_renewal"))
    if nxt is not None:
        out.append(
            f"  next renewal  {nxt.isoformat(timespec='seconds')} (in {span((nxt - now).total_seconds())})"
        )
    out.append(
        f"  renewals      {agent.get('renewals', 0)} ok, {agent.get('renewal_failures', 0)} failed"
    )
    out.append(f"  last error    {agent.get('last_error') or 'none'}")
    out.append(f"  records       {status.get('records_written', 0)} written since start")
    conns, tunnels = snap.streams_and_connections, snap.tunnels
    out.append(f"  connections   {len(conns)} live")
    for conn in conns[:50]:
        peer = conn.get("peer_identity") or "-"
        carried = (
            f"  (stream {conn['stream_id']} of {conn['tunnel_id']})"
            if conn.get("tunnel_id")
            else ""
        )
        out.append(
            f"    {conn.get('conn_id')}  {conn.get('direction', '?'):<8} {conn.get('src')} → "
            f"{conn.get('dst')}  {peer}  since {conn.get('started')}  "
            f"{human_bytes(int(conn.get('bytes_in') or 0))}/{human_bytes(int(conn.get('bytes_out') or 0))}"
            f"{carried}"
        )
    if len(conns) > 50:
        out.append(f"    ... and {len(conns) - 50} more")
    if tunnels:
        out.append(f"  tunnels       {len(tunnels)} open")
        for tunnel in tunnels[:50]:
            out.append(
                f"    {tunnel.get('conn_id')}  {tunnel.get('src')} → {tunnel.get('dst')}  "
                f"{tunnel.get('peer_identity') or '-'}  since {tunnel.get('started')}"
            )
    peers = peer_counters(snap.metrics)
    out.append("  per peer (closed connections since start):")
    if not peers:
        out.append("    none yet")
    else:
        out.append(
            f"    {'peer':<28} {'dir':<8} {'allow':>7} {'deny':>7} {'bytes in':>9} {'bytes out':>9}"
        )
        for p in peers:
            out.append(
                f"    {p['peer']:<28} {p['direction']:<8} {p['allow']:>7} {p['deny']:>7} "
                f"{human_bytes(p['in']):>9} {human_bytes(p['out']):>9}"
            )
    return out


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="a sidecar's identity, certificate, CAS reachability, connections and counters",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument(
        "--admin",
        help=f"the sidecar's admin listener, host:port (env {ENV_SIDECAR_ADMIN}, default {DEFAULT_ADMIN})",
    )
    p.add_argument("--json", action="store_true", help="everything the admin API said, as JSON")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    addr = args.admin or os.environ.get(ENV_SIDECAR_ADMIN) or DEFAULT_ADMIN
    snap = fetch(addr)
    if args.json:
        print(
            json.dumps(
                {
                    "admin": snap.base,
                    "ready": snap.ready,
                    "status": snap.status,
                    "identity": snap.identity,
                    "connections": snap.streams_and_connections,
                    "tunnels": snap.tunnels,
                    "peers": peer_counters(snap.metrics),
                },
                indent=2,
            )
        )
    else:
        print("\n".join(render(snap, datetime.now(UTC))))
    return 0 if snap.ready else 1
