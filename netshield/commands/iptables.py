"""`netshield iptables install|remove|show`: the rules a sidecar needs for transparent capture.

Like Istio's init container, run it once in the service's network namespace (as root, or with
CAP_NET_ADMIN) before the service starts. `install` redirects the namespace's outbound TCP to the
sidecar's outbound capture port (except the sidecar's own uid/gid and loopback) and inbound TCP
for the service's ports to the inbound capture port; in strict mode (`--mode strict`, the
default, as the sidecar's `transparent.mode`) it also drops and counts every non-TCP packet that
would leave the namespace, IPv4 and IPv6, except DNS to the named resolvers (`--allow-dns`, by
default the nameservers of /etc/resolv.conf) and `--allow-udp`. It is idempotent. `remove` takes
out exactly what `install` added. `show` prints the rules without applying them (no privileges
needed), or with `--installed` what netshield has in the tables now and what it dropped.
"""

from __future__ import annotations

import argparse
import grp
import pwd
from pathlib import Path
from typing import Any

from netshield.capture.apply import (
    BACKENDS,
    CaptureError,
    Tools,
    detect_backend,
    family_available,
    install,
    remove,
    tables,
)
from netshield.capture.iptables import TABLES, egress_drops, ruleset
from netshield.capture.spec import (
    DEFAULT_INBOUND_PORT,
    DEFAULT_OUTBOUND_PORT,
    CaptureSpec,
    Family,
    IPAddress,
    format_cidrs,
    format_ports,
    nameservers,
    parse_cidrs,
    parse_ips,
    parse_ports,
    parse_udp_endpoints,
)
from netshield.errors import UsageError


def _usage(message: str) -> UsageError:
    return UsageError(message, hint="")


def _id(text: str, option: str, lookup: Any, what: str) -> int:
    if text.isascii() and text.isdigit():
        value = int(text)
        if value >= 2**32 - 1:
            raise _usage(f"{option}: {text} is not a valid {what} id")
        return value
    try:
        return int(lookup(text)[2])
    except KeyError:
        raise _usage(
            f"{option}: no {what} named {text!r} (give a number or an existing name)"
        ) from None


def spec_from_args(args: argparse.Namespace) -> CaptureSpec:
    """The CaptureSpec the options describe; UsageError names the option and the problem."""

    def ports(option: str, text: str, *, allow_all: bool = True) -> Any:
        try:
            return parse_ports(text, allow_all=allow_all)
        except ValueError as err:
            raise _usage(f"{option}: {err}") from None

    def cidrs(option: str, text: str, *, allow_all: bool = True) -> Any:
        try:
            return parse_cidrs(text, allow_all=allow_all)
        except ValueError as err:
            raise _usage(f"{option}: {err}") from None

    def dns(text: str) -> tuple[IPAddress, ...]:
        if args.mode != "strict":
            return ()
        if text.strip() == "auto":
            try:
                return nameservers(Path(args.resolv_conf).read_text(errors="replace"))
            except OSError as err:
                raise _usage(
                    f"--allow-dns auto: cannot read {args.resolv_conf} ({err.strerror or err}); "
                    "name the resolvers (--allow-dns 10.96.0.10) or give --allow-dns ''"
                ) from None
        try:
            return parse_ips(text)
        except ValueError as err:
            raise _usage(f"--allow-dns: {err}") from None

    try:
        allow_udp = parse_udp_endpoints(args.allow_udp)
    except ValueError as err:
        raise _usage(f"--allow-udp: {err}") from None
    spec = CaptureSpec(
        proxy_uids=tuple(
            sorted({_id(u, "--proxy-uid", pwd.getpwnam, "user") for u in args.proxy_uid or ()})
        ),
        proxy_gids=tuple(
            sorted({_id(g, "--proxy-gid", grp.getgrnam, "group") for g in args.proxy_gid or ()})
        ),
        outbound_port=args.outbound_port,
        inbound_port=args.inbound_port,
        inbound_ports=ports("--inbound-ports", args.inbound_ports),
        exclude_inbound_ports=ports(
            "--exclude-inbound-ports", args.exclude_inbound_ports, allow_all=False
        ),
        outbound_ports=ports("--outbound-ports", args.outbound_ports),
        exclude_outbound_ports=ports(
            "--exclude-outbound-ports", args.exclude_outbound_ports, allow_all=False
        ),
        include_cidrs=cidrs("--include-cidrs", args.include_cidrs),
        exclude_cidrs=cidrs("--exclude-cidrs", args.exclude_cidrs, allow_all=False),
        egress=args.mode,
        dns_servers=dns(args.allow_dns),
        allow_udp=allow_udp,
    )
    problems = spec.problems()
    if problems:
        raise _usage("; ".join(problems))
    return spec


def describe(spec: CaptureSpec) -> str:
    """One line saying what the rules do."""
    who = [f"uid {u}" for u in spec.proxy_uids] + [f"gid {g}" for g in spec.proxy_gids]
    outbound = (
        f"outbound TCP (ports {format_ports(spec.outbound_ports)}, to {format_cidrs(spec.include_cidrs)}"
        + (f", not {format_cidrs(spec.exclude_cidrs)}" if spec.exclude_cidrs else "")
        + (
            f", not ports {format_ports(spec.exclude_outbound_ports)}"
            if spec.exclude_outbound_ports
            else ""
        )
        + f") -> :{spec.outbound_port} except {', '.join(who)} and loopback"
    )
    if spec.inbound_ports == ():
        inbound = "no inbound capture"
    else:
        inbound = (
            f"inbound TCP to ports {format_ports(spec.inbound_ports)}"
            + (
                f" (not {format_ports(spec.exclude_inbound_ports)})"
                if spec.exclude_inbound_ports
                else ""
            )
            + f" -> :{spec.inbound_port}"
        )
    if spec.egress == "strict":
        allowed = [f"DNS to {a}" for a in spec.dns_servers] + [
            f"UDP to {e}" for e in spec.allow_udp
        ]
        egress = "non-TCP egress dropped" + (f" except {', '.join(allowed)}" if allowed else "")
    else:
        egress = "non-TCP egress not filtered (permissive)"
    return f"{outbound}; {inbound}; {egress}"


def _families(args: argparse.Namespace) -> tuple[Family, ...]:
    return (4,) if args.ipv4_only else (4, 6)


def cmd_install(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    backend = detect_backend(args.backend)
    done: list[str] = []
    replaced = False
    for family in _families(args):
        tools = Tools(backend, family)
        if family == 6 and not family_available(tools):
            print(f"netshield iptables: IPv6 skipped ({tools.save} cannot read the nat table here)")
            continue
        replaced = install(spec, tools) or replaced
        done.append(f"IPv{family}")
    verb = "replaced" if replaced else "installed"
    print(
        f"netshield iptables: {verb} capture rules ({backend}, {' and '.join(done)}): {describe(spec)}"
    )
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    backends = [args.backend] if args.backend != "auto" else ["iptables-nft", "iptables-legacy"]
    removed: list[str] = []
    tried = 0
    for name in backends:
        backend = detect_backend(name)
        for family in _families(args):
            tools = Tools(backend, family)
            if args.backend == "auto" and not family_available(tools):
                continue
            tried += 1
            if remove(tools):
                removed.append(f"{backend} IPv{family}")
    if not tried:
        raise CaptureError(
            "no iptables tools can read the nat table here (install iptables; run as root)"
        )
    if removed:
        print(f"netshield iptables: removed capture rules ({', '.join(removed)})")
    else:
        print("netshield iptables: no netshield capture rules were installed; nothing changed")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if args.installed:
        backend = detect_backend(args.backend)
        for family in _families(args):
            tools = Tools(backend, family)
            if family == 6 and not family_available(tools):
                continue
            now = tables(tools, counters=True)
            installed = any(t.installed for t in now.values())
            print(f"# {backend} IPv{family}: {'installed' if installed else 'no netshield rules'}")
            for name in TABLES:
                table = now[name]
                if not table.installed:
                    continue
                print(f"*{name}")
                for chain, rest in table.rules:
                    if chain.startswith("NETSHIELD_") or (chain, rest) in table.jumps:
                        print(f"-A {chain} {rest}")
            drops = egress_drops(now["filter"])
            if drops:
                counted = ", ".join(
                    f"{kind} {p} packets ({b} bytes)" for kind, (p, b) in drops.items()
                )
                print(f"# dropped non-TCP egress (IPv{family}): {counted}")
        return 0
    spec = spec_from_args(args)
    print(f"# {describe(spec)}")
    for family in _families(args):
        print(ruleset(spec, family), end="")
    return 0


def _spec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--proxy-uid",
        action="append",
        metavar="UID",
        help="the sidecar's uid (number or user name; repeatable): its traffic is never captured",
    )
    p.add_argument(
        "--proxy-gid",
        action="append",
        metavar="GID",
        help="the sidecar's gid (number or group name)",
    )
    p.add_argument(
        "--outbound-port",
        type=int,
        default=DEFAULT_OUTBOUND_PORT,
        help=f"the sidecar's outbound capture port (transparent.outbound_port; default {DEFAULT_OUTBOUND_PORT})",
    )
    p.add_argument(
        "--inbound-port",
        type=int,
        default=DEFAULT_INBOUND_PORT,
        help=f"the sidecar's inbound capture port (transparent.inbound_port; default {DEFAULT_INBOUND_PORT})",
    )
    p.add_argument(
        "--inbound-ports",
        default="*",
        metavar="PORTS",
        help="service ports whose inbound TCP is captured: '*' (default), '8080,9000-9010', or '' for none",
    )
    p.add_argument(
        "--exclude-inbound-ports", default="", metavar="PORTS", help="never capture these inbound"
    )
    p.add_argument(
        "--outbound-ports",
        default="*",
        metavar="PORTS",
        help="destination ports captured outbound: '*' (default) or a list",
    )
    p.add_argument(
        "--exclude-outbound-ports", default="", metavar="PORTS", help="never capture these outbound"
    )
    p.add_argument(
        "--include-cidrs",
        default="*",
        metavar="CIDRS",
        help="destinations captured outbound: '*' (default) or '10.0.0.0/8,fd00::/8'",
    )
    p.add_argument(
        "--exclude-cidrs", default="", metavar="CIDRS", help="destinations never captured"
    )
    p.add_argument(
        "--mode",
        default="strict",
        choices=("strict", "permissive"),
        help="strict (default, like the sidecar's transparent.mode): drop and count every "
        "non-TCP packet leaving the namespace except --allow-dns/--allow-udp; permissive: "
        "leave non-TCP traffic alone",
    )
    p.add_argument(
        "--allow-dns",
        default="auto",
        metavar="IPS",
        help="strict mode: resolvers the service may query on port 53 (UDP and TCP, in "
        "plaintext): 'auto' (default: the non-loopback nameservers of --resolv-conf), a list "
        "'10.96.0.10,fd00::a', or '' for none",
    )
    p.add_argument(
        "--resolv-conf",
        default="/etc/resolv.conf",
        metavar="FILE",
        help="where --allow-dns auto reads the nameservers (default /etc/resolv.conf)",
    )
    p.add_argument(
        "--allow-udp",
        default="",
        metavar="DESTS",
        help="strict mode: further UDP destinations allowed out, '10.0.0.5:123,[fd00::5]:123'",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", *BACKENDS),
        help="which iptables to drive (auto: the one already in use, else iptables-nft)",
    )
    p.add_argument("--ipv4-only", action="store_true", help="leave ip6tables alone")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "iptables", help="install, remove or show the NAT rules for transparent capture"
    )
    isub = p.add_subparsers(dest="iptables_action", required=True, metavar="ACTION")
    q = isub.add_parser("install", help="redirect this network namespace's TCP to the sidecar")
    _spec_options(q)
    _common(q)
    q.set_defaults(func=cmd_install)
    q = isub.add_parser("remove", help="take out netshield's rules; the tables are as before")
    _common(q)
    q.set_defaults(func=cmd_remove)
    q = isub.add_parser("show", help="print the rules install would apply, without applying them")
    _spec_options(q)
    _common(q)
    q.add_argument(
        "--installed", action="store_true", help="print netshield's rules in the tables now instead"
    )
    q.set_defaults(func=cmd_show)
