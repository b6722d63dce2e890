"""The capture rules as iptables-restore input, and the scripts that install and remove them.

Responsibility: from a `CaptureSpec`, the rules of one address family: in the nat table the
redirects (in the manner of Istio's init container: own chains, jumped to from PREROUTING and
OUTPUT), and in strict mode, in the filter table, the egress filter that drops and counts what
is not TCP (one DROP rule each for UDP, ICMP and the rest, so their counters tell them apart);
from the tables as `iptables-save` prints them now, the `iptables-restore --noflush` script that
installs them or takes them out again. Everything here is text in, text out.

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
EGRESS = "NETSHIELD_EGRESS"
TABLES = ("nat", "filter")
TABLE_CHAINS = {"nat": CHAINS, "filter": (EGRESS,)}
CREATED = "NETSHIELD_CREATED_TABLE"
"""An empty chain that says the nat table did not exist before netshield installed its rules
(iptables-nft creates tables on demand), so `remove` may delete the table again."""
BUILTIN_NAT = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
BUILTIN = {"nat": BUILTIN_NAT, "filter": ("INPUT", "FORWARD", "OUTPUT")}
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
_ICMP = {4: "icmp", 6: "ipv6-icmp"}
_NEIGHBOUR_DISCOVERY = (133, 135, 136, 143)
"""ICMPv6 types IPv6 cannot work without: router solicitation, neighbour solicitation and
advertisement, MLDv2 reports (joining the solicited-node multicast groups)."""


def _host(address: object, family: Family) -> str:
    return f"{address}/{32 if family == 4 else 128}"


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
        if spec.egress == "strict":  # DNS over TCP to the named resolvers is not captured
            for server in spec.of_family(family, spec.dns_servers):
                dns = f"-d {_host(server, family)} -p tcp -m tcp --dport 53"
                lines.append(f"-A {OUTPUT} {dns} -j RETURN")
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


def egress_rules(spec: CaptureSpec, family: Family) -> list[str]:
    """The ``-A`` lines for the filter table of one family: none unless `spec.egress` is strict.

    Allowed out: loopback, the sidecar's uid/gid, TCP (redirected to the sidecar by the nat
    rules, or excluded from capture on purpose), IPv6 neighbour discovery, DNS to the named
    resolvers and the listed UDP destinations. Everything else is dropped and counted.
    """
    if spec.egress != "strict":
        return []
    lines = [f"-A OUTPUT -j {EGRESS}", f"-A {EGRESS} -o lo -j RETURN"]
    lines += [f"-A {EGRESS} -m owner --uid-owner {uid} -j RETURN" for uid in spec.proxy_uids]
    lines += [f"-A {EGRESS} -m owner --gid-owner {gid} -j RETURN" for gid in spec.proxy_gids]
    lines.append(f"-A {EGRESS} -p tcp -j RETURN")
    if family == 6:
        lines += [
            f"-A {EGRESS} -p ipv6-icmp -m icmp6 --icmpv6-type {kind} -j RETURN"
            for kind in _NEIGHBOUR_DISCOVERY
        ]
    for server in spec.of_family(family, spec.dns_servers):
        lines.append(f"-A {EGRESS} -d {_host(server, family)} -p udp -m udp --dport 53 -j RETURN")
    for endpoint in spec.allow_udp:
        if endpoint.address.version == family:
            where = f"-d {_host(endpoint.address, family)} -p udp -m udp --dport {endpoint.port}"
            lines.append(f"-A {EGRESS} {where} -j RETURN")
    lines += [
        f"-A {EGRESS} -p udp -j DROP",
        f"-A {EGRESS} -p {_ICMP[family]} -j DROP",
        f"-A {EGRESS} -j DROP",
    ]
    return lines


def table_rules(spec: CaptureSpec, family: Family, table: str) -> list[str]:
    """The ``-A`` lines netshield wants in `table` ("nat" or "filter")."""
    return rules(spec, family) if table == "nat" else egress_rules(spec, family)


def ruleset(spec: CaptureSpec, family: Family) -> str:
    """The rules as a self-contained iptables-restore document (what `show` prints)."""
    tool = "ip6tables" if family == 6 else "iptables"
    lines = [f"# netshield capture rules, IPv{family} ({tool}-restore --noflush)"]
    for table in TABLES:
        wanted = table_rules(spec, family, table)
        if table == "nat" or wanted:
            chains = [f":{name} - [0:0]" for name in TABLE_CHAINS[table]]
            lines += [f"*{table}", *chains, *wanted, "COMMIT"]
    return "\n".join([*lines, ""])


# --- the nat table as it is ----------------------------------------------------------------------

_CHAIN = re.compile(r":(\S+) (\S+)(?: \[\d+:\d+\])?")
_APPEND = re.compile(r"(?:\[(\d+):(\d+)\] )?-A (\S+) (.*)")
_COUNTERS = re.compile(r"\[\d+:\d+\]")


@dataclass(frozen=True)
class NatTable:
    """One table (nat by default, or filter) of one family as `iptables-save` prints it."""

    chains: dict[str, str] = field(default_factory=dict)  # name -> policy ("-" for user chains)
    rules: tuple[tuple[str, str], ...] = ()  # (chain, rest of the rule after "-A CHAIN ")
    present: bool = True  # False: iptables-save printed no such table at all
    name: str = "nat"
    counters: tuple[tuple[int, int] | None, ...] = ()  # (packets, bytes) per rule, with -c

    @property
    def empty(self) -> bool:
        """Nothing but built-in chains with policy ACCEPT and no rules: a no-op table."""
        builtin = BUILTIN.get(self.name, BUILTIN_NAT)
        return not self.rules and all(
            name in builtin and policy == "ACCEPT" for name, policy in self.chains.items()
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


def parse_save(text: str, table: str = "nat") -> NatTable:
    """The `table` section of iptables-save output (absent: an empty table); ValueError if the
    section is cut off or a line is not what iptables-save writes."""
    chains: dict[str, str] = {}
    found: list[tuple[str, str]] = []
    counts: list[tuple[int, int] | None] = []
    inside = done = seen = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            inside = line == f"*{table}" and not done
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
            found.append((m.group(3), m.group(4)))
            counts.append((int(m.group(1)), int(m.group(2))) if m.group(1) else None)
        else:
            raise ValueError(
                f"line {number} of the saved {table} table is not a chain or rule: {line!r}"
            )
    if inside:
        raise ValueError(f"the saved {table} table has no COMMIT (truncated output?)")
    return NatTable(chains, tuple(found), present=seen, name=table, counters=tuple(counts))


def egress_drops(table: NatTable) -> dict[str, tuple[int, int]]:
    """(packets, bytes) the strict egress filter dropped, by what it was ("udp", "icmp",
    "other"), from a filter table saved with counters (`iptables-save -c`)."""
    drops: dict[str, tuple[int, int]] = {}
    for (chain, rest), count in zip(table.rules, table.counters, strict=True):
        if chain != EGRESS or not rest.endswith("-j DROP") or count is None:
            continue
        kind = "other"
        if "-p udp" in rest:
            kind = "udp"
        elif "-p icmp" in rest or "-p ipv6-icmp" in rest:
            kind = "icmp"
        drops[kind] = count
    return drops


def normalize(text: str, table_name: str = "nat") -> list[str]:
    """A table's lines without comments and counters, for comparing before and after.
    A missing table and one with only empty built-in ACCEPT chains compare equal."""
    table = parse_save(text, table_name)
    builtin = BUILTIN.get(table_name, BUILTIN_NAT)
    chains = [
        f":{name} {policy}"
        for name, policy in table.chains.items()
        if not (name in builtin and policy == "ACCEPT")
    ]
    return sorted(chains) + [
        f"-A {chain} {_COUNTERS.sub('', rest).strip()}" for chain, rest in table.rules
    ]


# --- scripts for iptables-restore --noflush ------------------------------------------------------


def install_script(current: NatTable, spec: CaptureSpec, family: Family) -> str | None:
    """Replace whatever netshield has in the table (`current.name`) with the rules for `spec`,
    atomically. A table that does not exist yet gets the `CREATED` marker chain (kept on
    re-install). Where `spec` wants nothing in the table (the filter table unless egress is
    strict), this is `remove_script`: None if there is nothing to take out either."""
    wanted = table_rules(spec, family, current.name)
    if not wanted and current.name != "nat":
        return remove_script(current)
    chains = TABLE_CHAINS[current.name]
    stale = [name for name in current.ours if name not in (*chains, CREATED)]
    marker = [CREATED] if not current.present or CREATED in current.chains else []
    lines = [f"*{current.name}", *(f":{name} - [0:0]" for name in (*chains, *marker, *stale))]
    lines += [f"-D {chain} {rest}" for chain, rest in current.jumps]
    lines += wanted
    lines += [f"-X {name}" for name in stale]
    return "\n".join([*lines, "COMMIT", ""])


def remove_script(current: NatTable) -> str | None:
    """Take out every netshield chain and every jump to one; None if there is nothing to remove."""
    if not current.installed:
        return None
    ours = current.ours
    lines = [f"*{current.name}", *(f":{name} - [0:0]" for name in ours)]
    lines += [f"-D {chain} {rest}" for chain, rest in current.jumps]
    lines += [f"-X {name}" for name in ours]
    return "\n".join([*lines, "COMMIT", ""])


__all__ = [
    "BUILTIN",
    "BUILTIN_NAT",
    "CHAINS",
    "CREATED",
    "EGRESS",
    "INBOUND",
    "IN_REDIRECT",
    "OUTPUT",
    "PREFIX",
    "REDIRECT",
    "TABLES",
    "TABLE_CHAINS",
    "NatTable",
    "egress_drops",
    "egress_rules",
    "install_script",
    "normalize",
    "parse_save",
    "remove_script",
    "rules",
    "ruleset",
    "table_rules",
]
