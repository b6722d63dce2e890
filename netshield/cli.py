"""The `netshield` command line: one command, a subcommand per role and per operator task.

Every failure is one readable line on stderr and a non-zero exit (2 for usage and input
problems, 1 for a check that found problems); never a traceback unless NETSHIELD_DEBUG=1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from netshield import __version__
from netshield.cas.ratelimit import DEFAULT_BURST, DEFAULT_RATE
from netshield.errors import ConfigError, NetshieldError, UsageError

Command = Callable[[argparse.Namespace], int]

# Subcommands in their own modules (netshield/commands/<name>.py), each with register(sub).
COMMAND_MODULES: tuple[str, ...] = (
    "wait",
    "ui",
    "iptables",
    "logs",
    "explain",
    "status",
    "evidence",
    "run",
)
# `netshield cas <action>` subcommands in their own modules, each with register_cas(csub).
CAS_COMMAND_MODULES: tuple[str, ...] = ("check_access", "migrate")

ENV_CAS = "NETSHIELD_CAS"
ENV_ADMIN = "NETSHIELD_ADMIN"
ENV_DATABASE = "NETSHIELD_DATABASE"
ENV_DATABASE_PASSWORD_FILE = "NETSHIELD_DATABASE_PASSWORD_FILE"  # noqa: S105 - a variable name


def _now() -> datetime:
    return datetime.now(UTC)


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# --- commands ------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from netshield.trustdomain import Layout, create_trust_domain

    root = Path(args.dir)
    made = create_trust_domain(
        root, trust_domain=args.trust_domain, admin_name=args.admin_name, now=_now()
    )
    layout = Layout(root)
    print(f"created trust domain {args.trust_domain} in {root}:")
    for path in made:
        mode = path.stat().st_mode & 0o777
        print(f"  {path}  ({oct(mode)}{', private key' if path.suffix == '.key' else ''})")
    print("next:")
    print(
        f"  netshield platform init --vendor {layout.vendor_dir} --out {layout.platforms_dir}/p1 --tcb 7"
    )
    print(
        "  netshield measure PATH/TO/SERVICE --cmd 'python3 app.py'   # put the digest in the policy"
    )
    print(f"  netshield config check {layout.policy}")
    print(
        f"  netshield cas serve --policy {layout.policy} --state {layout.cas_state} --listen 127.0.0.1:8443"
    )
    return 0


def cmd_platform_init(args: argparse.Namespace) -> int:
    from netshield.attestation.platform import create_platform, save_platform
    from netshield.pki.ca import load_ca

    vendor_dir = Path(args.vendor)
    vendor = load_ca(vendor_dir / "vendor-root.pem", vendor_dir / "vendor-root.key")
    out = Path(args.out)
    platform_id = args.id or out.name
    if args.tcb < 0:
        raise UsageError("--tcb must be 0 or more")
    platform = create_platform(
        vendor, platform_id=platform_id, tcb_level=args.tcb, debug=args.debug, now=_now()
    )
    paths = save_platform(platform, out)
    print(
        f"created platform {platform_id} (TCB level {args.tcb}, debug {'on' if args.debug else 'off'}):"
    )
    for path in paths:
        print(f"  {path}")
    return 0


def cmd_platform_serve(args: argparse.Namespace) -> int:
    from netshield.quoting.config import load_quoting_config
    from netshield.quoting.server import serve

    _run(serve(load_quoting_config(Path(args.config))))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from netshield.attestation.measurement import measure

    cmd = shlex.split(args.cmd) if args.cmd else []
    print(measure(Path(args.path), cmd))
    return 0


def _check_waf_routes(path: Path, config: Any) -> int:
    """Load every WAF engine the sidecar config names; print what each route runs."""
    from netshield.sidecar.wafroutes import WafRoutes
    from netshield.waf.engine import WafUnavailable

    routes = WafRoutes(config.waf, config.ingress, workers=1)
    try:
        lines = routes.load_configured()
    except WafUnavailable as err:
        print(f"{path}: {err}", file=sys.stderr)
        return 1
    finally:
        routes.close()
    for line in lines:
        print(f"  {line}")
    if not lines:
        default = config.waf.defaults
        print(
            f"  native routes: WAF {default.engine} engine on first use "
            "(CRS if installed, else the compact rule set)"
        )
    return 0


def _check_quoting_config(path: Path, text: str) -> int:
    """`config check` of a platform service config: its schema, its platform, its socket."""
    from netshield.quoting.config import describe_rules, file_problems, parse_quoting_config

    config = parse_quoting_config(text, source=str(path), base_dir=path.parent)
    platform, problems = file_problems(config)
    if problems or platform is None:
        raise ConfigError(str(path), problems)
    print(
        f"{path}: valid platform service config: platform {platform.platform_id} "
        f"(TCB level {platform.tcb_level}, debug {'on' if platform.debug else 'off'}), socket "
        f"{config.socket} (mode {config.socket_mode:04o}), workloads: {describe_rules(config)}"
    )
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from netshield.policy import parse_policy
    from netshield.quoting.config import looks_like_quoting_config
    from netshield.schema import load_yaml
    from netshield.shield.config import load_shield_config, looks_like_shield_config
    from netshield.sidecar.config import detect_kind, file_problems, parse_sidecar_config

    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read ({err})") from None
    try:
        doc = load_yaml(text, str(path))
        if looks_like_quoting_config(doc):
            return _check_quoting_config(path, text)
        if looks_like_shield_config(doc):
            shield = load_shield_config(path)
            print(
                f"{path}: valid in-process shield config for service {shield.service} "
                f"(listening sockets {shield.inbound.default} by default, "
                f"{len(shield.inbound.ports)} port rules; {len(shield.outbound.destinations)} "
                f"outbound destinations, outside the mesh {shield.outbound.default}; admin "
                f"{'on ' + str(shield.admin.listen) if shield.admin else 'off'})"
            )
            return 0
        if detect_kind(doc) == "sidecar":
            config = parse_sidecar_config(text, source=str(path), base_dir=path.parent)
            problems = file_problems(config)
            if problems:
                raise ConfigError(str(path), problems)
            inbound = (
                f"inbound {config.inbound.listen} -> {config.inbound.upstream}"
                if config.inbound
                else "no inbound listener"
            )
            print(
                f"{path}: valid sidecar config for service {config.service} "
                f"({inbound}, {len(config.outbound)} outbound listeners, "
                f"admin on {config.admin.listen})"
            )
            return _check_waf_routes(path, config)
        policy = parse_policy(text, source=str(path))
    except ConfigError as err:
        print(f"{path}: {len(err.problems)} problem(s)", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(
        f"{path}: valid policy for trust domain {policy.trust_domain} "
        f"({len(policy.services)} services, {len(policy.native_services)} native services)"
    )
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return value


def cmd_cas_serve(args: argparse.Namespace) -> int:
    from netshield.cas.server import CasOptions, serve
    from netshield.netaddr import HostPort

    try:
        listen = HostPort.parse(args.listen)
    except ValueError as err:
        raise UsageError(f"--listen: {err}") from None
    database, password_file = database_args(args)
    options = CasOptions(
        policy_file=Path(args.policy),
        state_dir=Path(args.state),
        listen=listen,
        counter_file=Path(args.counter) if args.counter else None,
        keys_dir=Path(args.keys) if args.keys else None,
        adopt_counter=args.adopt_counter,
        adopt_unsigned=args.adopt_unsigned_history,
        server_names=tuple(args.san or ()),
        collateral_dir=Path(args.collateral) if args.collateral else None,
        unsafe_evidence_roots=Path(args.unsafe_evidence_roots)
        if args.unsafe_evidence_roots
        else None,
        database=database,
        database_password_file=password_file,
        chain_lock=args.chain_lock,
        rate_per_source=args.rate_per_source,
        burst_per_source=args.burst_per_source,
    )
    _run(serve(options))
    return 0


def database_args(args: argparse.Namespace) -> tuple[str | None, Path | None]:
    """--database (or $NETSHIELD_DATABASE) and its password file; never a password in argv."""
    url = args.database or os.environ.get(ENV_DATABASE) or None
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise UsageError(f"--database {url!r}: expected a postgresql:// URL")
    if args.database:
        from netshield.cas.store.postgres import url_has_password

    if args.database and url_has_password(args.database):
        raise UsageError(
            "--database: the URL holds a password, which every user of this machine can read "
            "from the command line; put it in a file named by --database-password-file "
            f"(or ${ENV_DATABASE_PASSWORD_FILE}), or in PGPASSWORD"
        )
    password_file = args.database_password_file or os.environ.get(ENV_DATABASE_PASSWORD_FILE)
    if password_file and url is None:
        raise UsageError("--database-password-file needs --database")
    return url, Path(password_file) if password_file else None


def add_database_args(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--database",
        help="keep the state in PostgreSQL: postgresql://USER@HOST:PORT/DB, without the password "
        f"(env {ENV_DATABASE}; default: SQLite in --state)",
    )
    q.add_argument(
        "--database-password-file",
        help=f"file holding the database password (env {ENV_DATABASE_PASSWORD_FILE}; "
        "libpq's PGPASSWORD and ~/.pgpass work too)",
    )


def _admin_args(args: argparse.Namespace) -> tuple[str, Any]:
    from netshield.trustdomain import load_admin

    url = args.cas or os.environ.get(ENV_CAS)
    admin = args.admin or os.environ.get(ENV_ADMIN)
    if not url:
        raise UsageError(f"--cas URL is required (or set {ENV_CAS})")
    if not admin:
        raise UsageError(
            f"--admin DIR is required (or set {ENV_ADMIN}): the admin/ directory made by `netshield init`"
        )
    return url, load_admin(Path(admin))


def cmd_cas_revoke(args: argparse.Namespace) -> int:
    from netshield import operator

    chosen = [
        (k, v)
        for k, v in (
            ("instance", args.serial),
            ("service", args.service),
            ("platform", args.platform),
        )
        if v
    ]
    if len(chosen) != 1:
        raise UsageError("name exactly one of --serial, --service, --platform")
    kind, target = chosen[0]
    url, admin = _admin_args(args)
    print(_run(operator.revoke(url, admin, kind, target, args.note or "")))
    return 0


def cmd_cas_policy(args: argparse.Namespace) -> int:
    from netshield import operator

    url, admin = _admin_args(args)
    if args.action == "show":
        print(_run(operator.policy_show(url, admin, text=args.text)))
    else:
        if not args.file:
            raise UsageError("policy apply needs FILE")
        print(_run(operator.policy_apply(url, admin, Path(args.file), args.previous)))
    return 0


def cmd_cas_audit(args: argparse.Namespace) -> int:
    from netshield import operator

    database, password_file = database_args(args)
    if args.state or database:
        from netshield.cas.server import read_password_file

        lines, ok = operator.audit_offline(
            Path(args.state or "."),
            Path(args.counter) if args.counter else None,
            verify=args.verify,
            as_json=args.json,
            since=args.since,
            limit=args.limit,
            database=database,
            password=read_password_file(password_file),
            ca=Path(args.ca) if args.ca else None,
            witnesses=[Path(w) for w in args.witness],
        )
    else:
        url, admin = _admin_args(args)
        lines, ok = _run(
            operator.audit_online(
                url,
                admin,
                since=args.since,
                limit=args.limit,
                verify=args.verify,
                as_json=args.json,
                witnesses=[Path(w) for w in args.witness],
            )
        )
    for line in lines:
        print(line)
    return 0 if ok else 1


def cmd_sidecar(args: argparse.Namespace) -> int:
    from netshield.sidecar.app import run_sidecar

    _run(run_sidecar(Path(args.config)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from netshield.demo import run_demo

    return int(_run(run_demo(keep=args.keep, workdir=Path(args.dir) if args.dir else None)))


# --- parser --------------------------------------------------------------------------------------
def _add_admin(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cas", help=f"CAS URL, e.g. https://127.0.0.1:8443 (env {ENV_CAS})")
    p.add_argument(
        "--admin", help=f"admin credential directory made by `netshield init` (env {ENV_ADMIN})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netshield", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"netshield {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("NETSHIELD_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="diagnostic log level (stderr)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo", help="run the whole shield on this machine and narrate what it shows"
    )
    p.add_argument(
        "--keep-running", dest="keep", action="store_true", help="leave the mesh up afterwards"
    )
    p.add_argument("--dir", help="work directory (default: a new temporary directory)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "init", help="create a trust domain: vendor root, mesh CA, admin credential, policy"
    )
    p.add_argument("dir")
    p.add_argument("--trust-domain", default="netshield.local")
    p.add_argument("--admin-name", default="operator")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("sidecar", help="run a sidecar: attest, then relay mTLS for one service")
    p.add_argument(
        "--config", required=True, help="sidecar YAML (check it with `netshield config check`)"
    )
    p.set_defaults(func=cmd_sidecar)

    p = sub.add_parser("platform", help="simulated attestation platforms")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = psub.add_parser("init", help="create a platform certified by the vendor root")
    q.add_argument("--vendor", required=True, help="the vendor/ directory made by `netshield init`")
    q.add_argument("--out", required=True, help="directory to create for the platform")
    q.add_argument("--id", help="platform id (default: the --out directory's name)")
    q.add_argument("--tcb", type=int, default=7, help="TCB level the vendor certifies (default 7)")
    q.add_argument("--debug", action="store_true", help="the platform runs workloads in debug mode")
    q.set_defaults(func=cmd_platform_init)
    q = psub.add_parser(
        "serve",
        help="serve quotes on a unix socket: the host's platform, measuring its callers itself",
    )
    q.add_argument(
        "--config", required=True, help="platform service YAML (platform, socket, workloads)"
    )
    q.set_defaults(func=cmd_platform_serve)

    p = sub.add_parser(
        "measure", help="print a workload's measurement (SHA-256 over code and entry command)"
    )
    p.add_argument("path")
    p.add_argument("--cmd", default="", help="the entry command, e.g. 'python3 app.py'")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("config", help="configuration files")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = csub.add_parser(
        "check",
        help="validate a policy, a sidecar, shield or platform service config file without "
        "starting anything",
    )
    q.add_argument("file")
    q.set_defaults(func=cmd_config_check)

    p = sub.add_parser("cas", help="the configuration and attestation service")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for module_name in CAS_COMMAND_MODULES:
        importlib.import_module(f"netshield.commands.{module_name}").register_cas(csub)
    q = csub.add_parser("serve", help="run the CAS")
    q.add_argument("--policy", required=True)
    q.add_argument(
        "--state", required=True, help="state directory (DIR/cas from `netshield init DIR`)"
    )
    q.add_argument("--listen", default="127.0.0.1:8443")
    q.add_argument(
        "--keys",
        help="read-only directory with mesh-ca.pem, mesh-ca.key and vendor-roots/, kept apart "
        "from the state (default: the state directory)",
    )
    q.add_argument(
        "--counter",
        help="monotonic counter file, outside the state directory "
        "(default: $XDG_STATE_HOME/netshield/cas-<state id>.counter)",
    )
    q.add_argument(
        "--adopt-counter",
        action="store_true",
        help="accept a non-empty state that has no counter yet (first start on a new machine)",
    )
    q.add_argument(
        "--adopt-unsigned-history",
        action="store_true",
        help="upgrade a state from before signed audit checkpoints and sign its head (once, "
        "if it is known to be the newest)",
    )
    q.add_argument(
        "--san", action="append", help="extra DNS name or IP for the CAS certificate (repeatable)"
    )
    q.add_argument(
        "--collateral",
        metavar="DIR",
        help="vendor collateral for hardware evidence (AMD VCEK/ASK/ARK; Intel TCB Info, QE "
        "Identity, CRLs), re-read when its files change",
    )
    q.add_argument(
        "--unsafe-evidence-roots",
        metavar="FILE",
        help="PEM roots to trust for SEV-SNP/SGX/TDX evidence besides AMD's and Intel's "
        "(test and lab hardware only)",
    )
    add_database_args(q)
    q.add_argument(
        "--chain-lock",
        choices=["advisory", "serializable"],
        default="advisory",
        help="with --database: how replicas serialize the audit chain (default advisory)",
    )
    q.add_argument(
        "--rate-per-source",
        type=_positive_float,
        default=DEFAULT_RATE,
        metavar="N",
        help=f"nonce and attestation requests per second one address may make (default "
        f"{DEFAULT_RATE:g}; more answer 429 RATE_LIMITED)",
    )
    q.add_argument(
        "--burst-per-source",
        type=int,
        default=DEFAULT_BURST,
        metavar="N",
        help=f"... in bursts of up to N (default {DEFAULT_BURST})",
    )
    q.set_defaults(func=cmd_cas_serve)

    q = csub.add_parser("revoke", help="revoke an instance (serial), a service or a platform")
    _add_admin(q)
    q.add_argument("--serial", help="certificate serial (hex)")
    q.add_argument("--service")
    q.add_argument("--platform")
    q.add_argument("--note")
    q.set_defaults(func=cmd_cas_revoke)

    q = csub.add_parser("policy", help="show or apply a policy version")
    _add_admin(q)
    q.add_argument("action", choices=["show", "apply"])
    q.add_argument("file", nargs="?")
    q.add_argument("--previous", help="hash of the policy this one replaces (see `policy show`)")
    q.add_argument("--text", action="store_true", help="show: print the policy text")
    q.set_defaults(func=cmd_cas_policy)

    q = csub.add_parser("audit", help="read and verify the CAS audit log")
    _add_admin(q)
    q.add_argument("--state", help="read offline from a state directory instead of the API")
    add_database_args(q)
    q.add_argument("--counter", help="with --state or --database: the monotonic counter file")
    q.add_argument(
        "--verify",
        action="store_true",
        help="check the hash chain, the counter and the checkpoints the CAS signed",
    )
    q.add_argument(
        "--ca",
        help="with --state or --database: the mesh CA certificate the checkpoints verify "
        "against (default: mesh-ca.pem in the state directory)",
    )
    q.add_argument(
        "--witness",
        action="append",
        default=[],
        help="with --verify: a sidecar's cas.witness_file; the log must still hold the "
        "checkpoint it saw (repeatable)",
    )
    q.add_argument("--json", action="store_true")
    q.add_argument("--since", type=int, default=0)
    q.add_argument("--limit", type=int, default=1000)
    q.set_defaults(func=cmd_cas_audit)
    for module_name in COMMAND_MODULES:
        importlib.import_module(f"netshield.commands.{module_name}").register(sub)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.func(args))
    except NetshieldError as err:
        print(f"netshield: error: {err.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a bug: one line for the operator, the traceback on request
        if os.environ.get("NETSHIELD_DEBUG"):
            raise
        print(
            f"netshield: internal error: {type(err).__name__}: {err} "
            "(rerun with NETSHIELD_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 70
