"""`netshield logs [FILE|-]`: read, filter, follow, summarise and verify connection logs.

The log is FILE, else $NETSHIELD_RECORDS, else /var/log/netshield/records.jsonl; ``-`` reads
standard input. Output is a table (colour only on a terminal, never with NO_COLOR), or with
--json the matching lines unchanged. Lines that are not records are skipped and counted on stderr.
Exit status: 0; with --verify 1 when the chain is broken; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from netshield.errors import UsageError

ENV_RECORDS = "NETSHIELD_RECORDS"
DEFAULT_LOG = Path("/var/log/netshield/records.jsonl")


def default_log(given: str | None) -> str:
    """FILE if given, else $NETSHIELD_RECORDS, else the documented default path."""
    if given:
        return given
    env = os.environ.get(ENV_RECORDS)
    if env:
        return env
    if DEFAULT_LOG.exists():
        return str(DEFAULT_LOG)
    raise UsageError(
        f"which connection log? give FILE (or - for standard input), set {ENV_RECORDS}, or "
        f"write records to {DEFAULT_LOG} (the sidecar config's records.file)",
        hint="",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "logs",
        help="read, filter, follow, summarise and verify connection logs",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("file", nargs="?", help=f"the log (- for stdin; default ${ENV_RECORDS})")
    p.add_argument(
        "--json", action="store_true", help="print matching lines unchanged (--summary: as JSON)"
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--summary", action="store_true", help="counts, caller → callee pairs, durations"
    )
    out.add_argument(
        "--verify", action="store_true", help="check the hash chain (rotated files included)"
    )
    p.add_argument("--denied", action="store_true", help="denied (and audit-mode) connections")
    p.add_argument("--service", action="append", default=[], help="caller or callee (repeatable)")
    p.add_argument(
        "--peer", action="append", default=[], help="peer service, SPIFFE id, serial or address"
    )
    p.add_argument("--reason", action="append", default=[], help="reason or close reason code")
    p.add_argument("--since", help="RFC 3339 time, date, or duration ago (15m, 2h, 7d)")
    p.add_argument("--until", help="RFC 3339 time, date, or duration ago")
    p.add_argument("--conn", action="append", default=[], help="connection id (repeatable)")
    p.add_argument(
        "--waf-rule",
        action="append",
        default=[],
        help="a WAF rule id that matched a request, e.g. 942100 (repeatable)",
    )
    p.add_argument(
        "--tunnel", action="append", default=[], help="tunnel id: its record and its streams"
    )
    p.add_argument(
        "--by-tunnel", action="store_true", help="list each tunnel's streams under the tunnel"
    )
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep reading as records arrive (survives rotation)",
    )
    p.add_argument(
        "--from-start", action="store_true", help="with --follow: print existing records first"
    )
    p.add_argument(
        "--rotated", action="store_true", help="read FILE's rotated files (FILE.N ... FILE.1) too"
    )
    p.add_argument("--top", type=int, default=10, help="with --summary: pairs to list")
    p.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="colour the table"
    )
    p.set_defaults(func=cmd_logs)


def _filter(args: argparse.Namespace, now: datetime) -> Any:
    from netshield.logs.filters import RecordFilter, parse_time
    from netshield.reasons import reason

    times: dict[str, datetime | None] = {}
    for name in ("since", "until"):
        text = getattr(args, name)
        try:
            times[name] = parse_time(text, now) if text else None
        except ValueError as err:
            raise UsageError(f"--{name}: {err}", hint="") from None
    codes = {code.strip().upper() for text in args.reason for code in text.split(",")}
    unknown = sorted(c for c in codes if reason(c) is None)
    if unknown:
        print(f"netshield logs: note: unknown reason code(s) {', '.join(unknown)}", file=sys.stderr)
    return RecordFilter(
        denied=args.denied,
        services=frozenset(args.service),
        peers=frozenset(args.peer),
        reasons=frozenset(codes),
        conn_ids=frozenset(args.conn),
        waf_rules=frozenset(r.strip().upper() for r in args.waf_rule),
        tunnel_ids=frozenset(args.tunnel),
        since=times["since"],
        until=times["until"],
    )


def _use_color(choice: str, stream: Any) -> bool:
    if choice != "auto":
        return choice == "always"
    return bool(stream.isatty()) and not os.environ.get("NO_COLOR")


class _Stop:
    """SIGTERM ends --follow cleanly (SIGINT does too, via KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self) -> bool:
        return self.stopped

    def set(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopped = True


def cmd_logs(args: argparse.Namespace) -> int:
    from netshield.logs.reader import ReadStats

    path = default_log(args.file)
    if args.verify:
        return _verify(args, path)
    if args.by_tunnel and (args.follow or args.json or args.summary):
        raise UsageError(
            "--by-tunnel groups a whole log: not with --follow, --json or --summary", hint=""
        )
    if args.follow and (args.summary or path == "-"):
        raise UsageError(
            "--follow reads a file and prints records: not with --summary or -", hint=""
        )
    record_filter = _filter(args, datetime.now(UTC))
    stats = ReadStats()
    out = sys.stdout.buffer
    try:
        if args.summary:
            _summary(args, path, record_filter, stats)
        else:
            _print(args, _entries(args, path, stats), record_filter, out)
    except BrokenPipeError:  # e.g. `| head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as err:
        raise UsageError(
            f"{err.filename or path}: cannot read ({err.strerror or err})", hint=""
        ) from None
    finally:
        if stats.skipped:
            print(f"netshield logs: {stats.describe()}", file=sys.stderr)
    return 0


def _entries(args: argparse.Namespace, path: str, stats: Any) -> Iterator[Any]:
    from netshield.logs.follow import Follower
    from netshield.logs.reader import log_files, parse_line, read_records

    if not args.follow:
        yield from read_records(log_files(path, rotated=args.rotated), stats)
        return
    if not Path(path).exists():
        print(f"netshield logs: waiting for {path} to appear", file=sys.stderr)
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop.set)
    follower = Follower(path, from_start=args.from_start)
    try:
        for line in follower.follow(stop):
            entry = parse_line(line, stats)
            if entry is not None:
                yield entry
    except KeyboardInterrupt:
        return
    finally:
        follower.close()


def _print(
    args: argparse.Namespace, entries: Iterator[Any], record_filter: Any, out: BinaryIO
) -> None:
    from netshield.logs.table import header, row

    color = _use_color(args.color, sys.stdout)
    if args.by_tunnel:
        from netshield.logs.tunnels import grouped_lines

        chosen = (e.record for e in entries if record_filter.matches(e.record))
        lines = [header(color=color), *grouped_lines(chosen, color=color)]
        out.write(("\n".join(lines) + "\n").encode())
        out.flush()
        return
    flush = args.follow
    write: Callable[[bytes], Any] = out.write
    if not args.json:
        write((header(color=color) + "\n").encode())
        if flush:
            out.flush()
    for entry in entries:
        if not record_filter.matches(entry.record):
            continue
        if args.json:
            write(entry.line.data + b"\n")
        else:
            write((row(entry.record, color=color) + "\n").encode())
        if flush:
            out.flush()
    out.flush()


def _summary(args: argparse.Namespace, path: str, record_filter: Any, stats: Any) -> None:
    import json

    from netshield.logs.reader import log_files, read_records
    from netshield.logs.summary import Summary

    summary = Summary(top=max(1, args.top))
    for entry in read_records(log_files(path, rotated=args.rotated), stats):
        if record_filter.matches(entry.record):
            summary.add(entry.record)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print("\n".join(summary.lines()))


def _verify(args: argparse.Namespace, path: str) -> int:
    from netshield.logs.reader import lines_of, log_files, open_log
    from netshield.logs.verify import ChainVerifier

    given = [args.denied, args.service, args.peer, args.reason, args.since, args.until, args.conn]
    if any(given) or args.follow:
        raise UsageError(
            "--verify checks the whole chain: it takes no filters and no --follow", hint=""
        )
    if path == "-":
        files = ["-"]
    else:
        files = log_files(path, rotated=True)
        if not any(Path(f).exists() for f in files):
            raise UsageError(f"{path}: no such file (and no rotated files {path}.N)", hint="")
    verifier = ChainVerifier()
    for name in files:
        verifier.begin_file(name)
        try:
            with open_log(name) as stream:
                for line in lines_of(stream, name):
                    verifier.feed(line)
        except OSError as err:
            raise UsageError(f"{name}: cannot read ({err.strerror or err})", hint="") from None
    result = verifier.result
    print("\n".join(result.report()))
    return 0 if result.intact else 1
