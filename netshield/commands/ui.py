"""`netshield ui --records FILE [FILE ...] [--cas URL --admin DIR] [--listen 127.0.0.1:0]`:
a live picture of the mesh in the browser, drawn from the sidecars' connection records.

Guarantees: a bad option is one line and exit 2 before anything is bound; the server listens on
loopback only and prints one JSON ready line with its URL; it runs until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from netshield.errors import UsageError

ENV_CAS = "NETSHIELD_CAS"
ENV_ADMIN = "NETSHIELD_ADMIN"


def cmd_ui(args: argparse.Namespace) -> int:
    from netshield.netaddr import HostPort
    from netshield.trustdomain import load_admin
    from netshield.ui.server import UiOptions, check_options, serve

    try:
        listen = HostPort.parse(args.listen)
    except ValueError as err:
        raise UsageError(f"--listen: {err}") from None
    url = args.cas or os.environ.get(ENV_CAS) or None
    admin_dir = args.admin or os.environ.get(ENV_ADMIN) or None
    if args.cas and not admin_dir:
        raise UsageError(
            f"--cas needs --admin DIR (or {ENV_ADMIN}): the policy and revocations are read "
            "with the operator certificate made by `netshield init`"
        )
    if args.admin and not url:
        raise UsageError(f"--admin needs --cas URL (or {ENV_CAS})")
    options = UiOptions(
        records=tuple(Path(p) for p in args.records),
        listen=listen,
        cas_url=url if url and admin_dir else None,
        admin=load_admin(Path(admin_dir)) if url and admin_dir else None,
    )
    check_options(options)
    try:
        import uvloop

        uvloop.run(serve(options))
    except ImportError:
        asyncio.run(serve(options))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ui",
        help="a live picture of the mesh in the browser: services, allowed and denied calls, revocations",
        description="Serve a web page on loopback that draws services as nodes and calls as edges "
        "(allowed and denied counts, last reason), marks revoked instances, and updates itself as "
        "the record files grow.",
    )
    p.add_argument(
        "--records",
        nargs="+",
        required=True,
        metavar="FILE",
        help="connection record files to follow (the sidecars' records.file); rotation is followed",
    )
    p.add_argument("--cas", help=f"CAS URL, for the policy and the revocation feed (env {ENV_CAS})")
    p.add_argument(
        "--admin", help=f"admin credential directory made by `netshield init` (env {ENV_ADMIN})"
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="loopback address for the page (default 127.0.0.1:0: any free port, see the ready line)",
    )
    p.set_defaults(func=cmd_ui)


__all__ = ["register"]
