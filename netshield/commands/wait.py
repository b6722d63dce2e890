"""`netshield wait --admin ADDR [--timeout S]`: block until a sidecar holds an attested certificate.

For start-up ordering where `depends_on: condition: service_healthy` is not available (plain
`docker run`, Kubernetes init ordering, shell scripts) and for the image's HEALTHCHECK. It polls
the sidecar's admin `/readyz` until it answers 200.

Guarantees: exit 0 only after a 200 from /readyz; otherwise, once `--timeout` has passed, one
line on stderr that says what was last seen (nothing listening, the /readyz reason, and the
agent's last attestation error from /status when there is one) and exit 1. A bad `--admin` or
`--timeout` is a usage error (exit 2). Never a traceback; the admin API is only read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from netshield.errors import UsageError
from netshield.netaddr import HostPort

DEFAULT_TIMEOUT = 60.0
POLL_SECONDS = 0.25
REQUEST_TIMEOUT = 2.0
MAX_BODY = 64 * 1024
_MAX_PHRASE = 300


@dataclass(frozen=True)
class Probe:
    """What one look at the admin API found: status None when nothing answered."""

    status: int | None
    body: bytes = b""
    error: str = ""
    last_error: str | None = None  # the agent's last attestation error, from /status


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_PHRASE else flat[: _MAX_PHRASE - 1] + "…"


def readyz_reason(body: bytes) -> str:
    """The reason a /readyz answer gives (the house error shape), in one line; never raises."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "an answer that is not JSON"
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return "an answer without an error reason"
    reason, message = error.get("reason"), error.get("message")
    words = [str(w) for w in (reason, message) if isinstance(w, str) and w]
    return _one_line(": ".join(words)) if words else "an answer without an error reason"


def status_last_error(body: bytes) -> str | None:
    """`agent.last_error` from a /status answer, or None; never raises."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    agent = doc.get("agent") if isinstance(doc, dict) else None
    last = agent.get("last_error") if isinstance(agent, dict) else None
    return _one_line(last) if isinstance(last, str) and last.strip() else None


def describe(addr: HostPort, probe: Probe | None, waited: float) -> str:
    """The one line printed when the sidecar did not become ready in time."""
    head = f"sidecar admin {addr} not ready after {waited:g} s"
    if probe is None:
        return f"{head}: not probed"
    if probe.status is None:
        return f"{head}: nothing answers there ({probe.error}); is the sidecar running?"
    seen = readyz_reason(probe.body) if probe.status == 503 else f"/readyz answered {probe.status}"
    tail = f"; last attestation error: {probe.last_error}" if probe.last_error else ""
    return f"{head}: {seen}{tail}"


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 -- http only
            return int(resp.status), resp.read(MAX_BODY)
    except urllib.error.HTTPError as err:
        with err:
            return int(err.code), err.read(MAX_BODY)


def probe(addr: HostPort, timeout: float = REQUEST_TIMEOUT) -> Probe:
    """One GET /readyz (and, when not ready, GET /status) on the sidecar's admin listener."""
    base = f"http://{addr}"
    try:
        status, body = _get(base + "/readyz", timeout)
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        return Probe(None, error=_one_line(str(getattr(reason, "strerror", None) or reason)))
    if status == 200:
        return Probe(status, body)
    try:
        last = status_last_error(_get(base + "/status", timeout)[1])
    except (OSError, ValueError):
        last = None
    return Probe(status, body, last_error=last)


def wait_ready(
    addr: HostPort,
    timeout: float,
    *,
    look: Callable[[HostPort, float], Probe] = probe,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = POLL_SECONDS,
) -> tuple[bool, Probe | None]:
    """Poll until /readyz is 200 (True) or `timeout` seconds passed (False, the last probe)."""
    deadline = clock() + timeout
    last: Probe | None = None
    while True:
        remaining = deadline - clock()
        if remaining <= 0 and last is not None:
            return False, last
        last = look(addr, max(0.1, min(REQUEST_TIMEOUT, remaining)))
        if last.status == 200:
            return True, last
        remaining = deadline - clock()
        if remaining <= 0:
            return False, last
        sleep(min(poll, remaining))


def parse_timeout(text: str) -> float:
    """`--timeout` in seconds: a finite number > 0 (an optional trailing "s" is allowed)."""
    raw = text.strip().removesuffix("s")
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"--timeout: {text!r} is not a number of seconds", hint="") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--timeout: must be more than 0 seconds, got {text!r}", hint="")
    return value


def cmd_wait(args: argparse.Namespace) -> int:
    try:
        addr = HostPort.parse(args.admin, allow_zero=False)
    except ValueError as err:
        raise UsageError(f"--admin: {err}", hint="") from None
    timeout = parse_timeout(args.timeout)
    ok, _last = wait_ready(addr, timeout)
    if ok:
        if not args.quiet:
            print(f"sidecar admin {addr} is ready")
        return 0
    print(f"netshield: error: {describe(addr, _last, timeout)}", file=sys.stderr)
    return 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wait",
        help="wait until a sidecar holds an attested certificate (its /readyz answers 200)",
    )
    p.add_argument(
        "--admin",
        default="127.0.0.1:15000",
        help="the sidecar's admin listener, HOST:PORT (default 127.0.0.1:15000)",
    )
    p.add_argument(
        "--timeout",
        default=str(DEFAULT_TIMEOUT),
        help=f"give up after this many seconds (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when ready")
    p.set_defaults(func=cmd_wait)
