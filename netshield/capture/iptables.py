"""The capture rules as iptables-restore input, and the scripts that install and remove them.

Responsibility: from a `CaptureSpec`, the nat-table rules of one address family (in the manner
of Istio's init container: own chains, jumped to from PREROUTING and OUTPUT); from the nat table
as `iptables-save` prints it now, the `iptables-restore --noflush` script that installs them or
takes them out again. Everything here is text in, text out.

Guarantees: netshield only ever touches chains whose names start with ``NETSHIELD_`` and the
rules in built-in chains that jump to them; every other chain, rule, policy and counter is left
as it is. Installing twice gives the same table as installing once (the script flushes netshield's
chains and deletes its jumps before adding them again, in one atomic restore); removing after
installing gives back the table as it was (`normalize` of both is equal). The sidecar's uid/gid
and loopback traffic are always excluded from outbound capture before anything is redirected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from netshield.capture.spec import ALL, CaptureSpec, Family

PREFIX = "NETSHIELD_"
INBOUND = "NETSHIELD_INBOUND"
IN_REDIRECT = "NETSHIELD_IN_REDIRECT"
OUTPUT = "NETSHIELD_OUTPUT"
REDIRECT = "NETSHIELD_REDIRECT"
CHAINS = (INBOUND, IN_REDIRECT, OUTPUT, REDIRECT)
CREATED = "NETSHIELD_CREATED_TABLE"
"""An empty chain that says the nat table did not exist before netshield installed its rules
(iptables-nft creates tables on demand), so `remove` may delete the table again."""
BUILTIN_NAT = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}


def rules(spec: CaptureSpec, family: Family) -> list[str]:
    """The ``-A`` lines for the nat table of one family, in order (chains not included)."""
    lines = [
        f"-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {spec.inbound_port}",
        f"-A {REDIRECT} -p tcp -j REDIRECT --to-ports {spec.outbound_port}",
    ]
    if spec.inbound_ports != ():
        lines.append(f"-A PREROUTING -p tcp -j {INBOUND}")
        for r in spec.exclude_inbound_ports:
            lines.append(f"-A {INBOUND} -p tcp -m tcp --dport {r.iptables} -j RETURN")
        if spec.inbound_ports == ALL:
            for port in (spec.outbound_port, spec.inbound_port):  # never loop into ourselves
                lines.append(f"-A {INBOUND} -p tcp -m tcp --dport {port} -j RETURN")
            lines.append(f"-A {INBOUND} -p tcp -j {IN_REDIRECT}")
        else:
            for r in spec.inbound_ports:
                lines.append(f"-A {INBOUND} -p tcp -m tcp --dport {r.iptables} -j {IN_REDIRECT}")
    include = spec.cidrs(family, spec.include_cidrs)
    if spec.outbound_ports != () and include != ():
        lines.append(f"-A OUTPUT -p tcp -j {OUTPUT}")
        lines.append(f"-A {OUTPUT} -o lo -j RETURN")
        lines.append(f"-A {OUTPUT} -d {_LOOPBACK[family]} -j RETURN")
        for uid in spec.proxy_uids:
            lines.append(f"-A {OUTPUT} -m owner --uid-owner {uid} -j RETURN")
        for gid in spec.proxy_gids:
            lines.append(f"-A {OUTPUT} -m owner --gid-owner {gid} -j RETURN")
        for r in spec.exclude_outbound_ports:
            lines.append(f"-A {OUTPUT} -p tcp -m tcp --dport {r.iptables} -j RETURN")
        exclude = spec.cidrs(family, spec.exclude_cidrs)
        assert exclude != ALL
        for net in exclude:
            lines.append(f"-A {OUTPUT} -d {net} -j RETURN")
        destinations = [""] if include == ALL else [f" -d {net}" for net in include]
        ports = (
            [""]
            if spec.outbound_ports == ALL
            else [f" -p tcp -m tcp --dport {r.iptables}" for r in spec.outbound_ports]
        )
        for dest in destinations:
            for match in ports:
                lines.append(f"-A {OUTPUT}{dest}{match} -j {REDIRECT}")
    return lines


def ruleset(spec: CaptureSpec, family: Family) -> str:
    """The rules as a self-contained iptables-restore document (what `show` prints)."""
    head = [
        f"# netshield capture rules, IPv{family} ({'ip6tables' if family == 6 else 'iptables'}-restore --noflush)",
        "*nat",
    ]
    chains = [f":{name} - [0:0]" for name in CHAINS]
    return "\n".join([*head, *chains, *rules(spec, family), "COMMIT", ""])


# --- the nat table as it is ----------------------------------------------------------------------

_CHAIN = re.compile(r":(\S+) (\S+)(?: \[\d+:\d+\])?")
_APPEND = re.compile(r"(?:\[\d+:\d+\] )?-A (\S+) (.*)")
_COUNTERS = re.compile(r"\[\d+:\d+\]")


@dataclass(frozen=True)
class NatTable:
    """The nat table of one family as `iptables-save -t nat` prints it."""

    chains: dict[str, str] = field(default_factory=dict)  # name -> policy ("-" for user chains)
    rules: tuple[tuple[str, str], ...] = ()  # (chain, rest of the rule after "-A CHAIN ")
    present: bool = True  # False: iptables-save printed no nat table at all

    @property
    def empty(self) -> bool:
        """Nothing but built-in chains with policy ACCEPT and no rules: a no-op table."""
        return not self.rules and all(
            name in BUILTIN_NAT and policy == "ACCEPT" for name, policy in self.chains.items()
        )

    @property
    def ours(self) -> list[str]:
        return [name for name in self.chains if name.startswith(PREFIX)]

    @property
    def jumps(self) -> list[tuple[str, str]]:
        """Rules outside netshield's chains that jump to one of them."""
        return [
            (chain, rest)
            for chain, rest in self.rules
            if not chain.startswith(PREFIX) and re.search(rf"-[jg] {PREFIX}\S*", rest)
        ]

    @property
    def installed(self) -> bool:
        return bool(self.ours or self.jumps)


def parse_save(text: str) -> NatTable:
    """The *nat section of iptables-save output (absent: an empty table); ValueError if the
    section is cut off or a line is not what iptables-save writes."""
    chains: dict[str, str] = {}
    found: list[tuple[str, str]] = []
    inside = done = seen = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            inside = line == "*nat" and not done
            seen = seen or inside
            continue
        if not inside:
            continue
        if line == "COMMIT":
            inside, done = False, True
            continue
        if m := _CHAIN.fullmatch(line):
            chains[m.group(1)] = m.group(2)
        elif m := _APPEND.fullmatch(line):
            found.append((m.group(1), m.group(2)))
        else:
            raise ValueError(
                f"line {number} of the saved nat table is not a chain or rule: {line!r}"
            )
    if inside:
        raise ValueError("the saved nat table has no COMMIT (truncated output?)")
    return NatTable(chains, tuple(found), present=seen)


def normalize(text: str) -> list[str]:
    """The nat table's lines without comments and counters, for comparing before and after.
    A missing table and one with only empty built-in ACCEPT chains compare equal."""
    table = parse_save(text)
    chains = [
        f":{name} {policy}"
        for name, policy in table.chains.items()
        if not (name in BUILTIN_NAT and policy == "ACCEPT")
    ]
    return sorted(chains) + [
        f"-A {chain} {_COUNTERS.sub('', rest).strip()}" for chain, rest in table.rules
    ]


# --- scripts for iptables-restore --noflush ------------------------------------------------------


def install_script(current: NatTable, spec: CaptureSpec, family: Family) -> str:
    """Replace whatever netshield has in the table with the rules for `spec`, atomically.
    A table that does not exist yet gets the `CREATED` marker chain (kept on re-install)."""
    stale = [name for name in current.ours if name not in (*CHAINS, CREATED)]
    marker = [CREATED] if not current.present or CREATED in current.chains else []
    lines = ["*nat", *(f":{name} - [0:0]" for name in (*CHAINS, *marker, *stale))]
    lines += [f"-D {chain} {rest}" for chain, rest in current.jumps]
    lines += rules(spec, family)
    lines += [f"-X {name}" for name in stale]
    return "\n".join([*lines, "COMMIT", ""])


def remove_script(current: NatTable) -> str | None:
    """Take out every netshield chain and every jump to one; None if there is nothing to remove."""
    if not current.installed:
        return None
    ours = current.ours
    lines = ["*nat", *(f":{name} - [0:0]" for name in ours)]
    lines += [f"-D {chain} {rest}" for chain, rest in current.jumps]
    lines += [f"-X {name}" for name in ours]
    return "\n".join([*lines, "COMMIT", ""])


__all__ = [
    "BUILTIN_NAT",
    "CHAINS",
    "CREATED",
    "INBOUND",
    "IN_REDIRECT",
    "OUTPUT",
    "PREFIX",
    "REDIRECT",
    "NatTable",
    "install_script",
    "normalize",
    "parse_save",
    "remove_script",
    "rules",
    "ruleset",
]
