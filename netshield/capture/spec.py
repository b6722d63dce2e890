"""What transparent capture redirects: a `CaptureSpec`, and the parsers for its lists.

Responsibility: turn the operator's words (``8080,9000-9010``, ``*``, ``10.0.0.0/8,fd00::/8``,
uid numbers or user names already resolved) into one frozen value the rule generator reads.

Guarantees: `parse_ports` and `parse_cidrs` return a value or raise ValueError with one line that
names the bad item; they never raise anything else, whatever the text. `CaptureSpec.problems`
lists every inconsistency (no proxy uid/gid would make the sidecar capture its own connections:
a loop) so the command line can refuse before touching the tables.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Family = Literal[4, 6]
ALL: Literal["*"] = "*"
"""Every port / every address."""

DEFAULT_OUTBOUND_PORT = 15001
DEFAULT_INBOUND_PORT = 15006
_MAX_ITEMS = 256


@dataclass(frozen=True, order=True, slots=True)
class PortRange:
    """An inclusive TCP port range; a single port has first == last."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last <= 65535:
            raise ValueError(f"port range {self.first}-{self.last} is not within 1-65535")

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    @property
    def iptables(self) -> str:
        """How iptables' --dport spells it: ``8080`` or ``9000:9010``."""
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last


Ports = Literal["*"] | tuple[PortRange, ...]
Cidrs = Literal["*"] | tuple[IPNetwork, ...]


def _items(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.replace(" ", ",").split(",")]
    items = [item for item in items if item]
    if len(items) > _MAX_ITEMS:
        raise ValueError(f"too many {what} ({len(items)}; at most {_MAX_ITEMS})")
    return items


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ValueError(f"{text!r} is not a port number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not within 1-65535")
    return port


def parse_ports(text: str, *, allow_all: bool = True) -> Ports:
    """``*`` (every port), or a comma list of ports and ranges (``8080,9000-9010``); an empty
    text is the empty tuple (no port). Ranges may also be written ``9000:9010``."""
    stripped = text.strip()
    if stripped == ALL:
        if not allow_all:
            raise ValueError("'*' is not allowed here; list the ports")
        return ALL
    result: list[PortRange] = []
    for item in _items(stripped, "ports"):
        low, sep, high = item.replace(":", "-").partition("-")
        try:
            first = _port(low)
            last = _port(high) if sep else first
        except ValueError as err:
            raise ValueError(f"{item!r}: {err}") from None
        if first > last:
            raise ValueError(f"{item!r}: the range runs backwards (write {last}-{first})")
        result.append(PortRange(first, last))
    return tuple(sorted(set(result)))


def parse_cidrs(text: str, *, allow_all: bool = True) -> Cidrs:
    """``*`` (every address), or a comma list of addresses and CIDRs (IPv4 and IPv6 mixed);
    host bits must be zero (``10.0.0.0/8``, not ``10.1.2.3/8``)."""
    stripped = text.strip()
    if stripped == ALL:
        if not allow_all:
            raise ValueError("'*' is not allowed here; list the CIDRs")
        return ALL
    result: list[IPNetwork] = []
    for item in _items(stripped, "CIDRs"):
        try:
            result.append(ipaddress.ip_network(item, strict=True))
        except ValueError as err:
            raise ValueError(f"{item!r} is not an address or CIDR ({err})") from None
    return tuple(sorted(set(result), key=lambda n: (n.version, n)))


def format_ports(ports: Ports) -> str:
    return ports if ports == ALL else ",".join(str(p) for p in ports)


def format_cidrs(cidrs: Cidrs) -> str:
    return cidrs if cidrs == ALL else ",".join(str(c) for c in cidrs)


@dataclass(frozen=True)
class CaptureSpec:
    """What `netshield iptables install` redirects.

    Outbound: TCP the namespace opens goes to `outbound_port`, except traffic of `proxy_uids` /
    `proxy_gids` (the sidecar itself), loopback, `exclude_*`, and what `outbound_ports` /
    `include_cidrs` do not select. Inbound: TCP arriving for `inbound_ports` (minus
    `exclude_inbound_ports`) goes to `inbound_port`.
    """

    proxy_uids: tuple[int, ...] = ()
    proxy_gids: tuple[int, ...] = ()
    outbound_port: int = DEFAULT_OUTBOUND_PORT
    inbound_port: int = DEFAULT_INBOUND_PORT
    inbound_ports: Ports = ALL
    exclude_inbound_ports: tuple[PortRange, ...] = ()
    outbound_ports: Ports = ALL
    exclude_outbound_ports: tuple[PortRange, ...] = ()
    include_cidrs: Cidrs = ALL
    exclude_cidrs: tuple[IPNetwork, ...] = ()

    def problems(self) -> list[str]:
        """Every reason this spec must not be installed, as `--option: what is wrong` lines."""
        found: list[str] = []
        if not self.proxy_uids and not self.proxy_gids:
            found.append(
                "--proxy-uid: give the sidecar's uid (or --proxy-gid its gid): without it the "
                "sidecar's own connections would be captured again, a loop"
            )
        for name, port in (
            ("--outbound-port", self.outbound_port),
            ("--inbound-port", self.inbound_port),
        ):
            if not 1 <= port <= 65535:
                found.append(f"{name}: {port} is not within 1-65535")
        if self.outbound_port == self.inbound_port:
            found.append("--inbound-port: must differ from --outbound-port")
        for name, ids in (("--proxy-uid", self.proxy_uids), ("--proxy-gid", self.proxy_gids)):
            for value in ids:
                if not 0 <= value < 2**32 - 1:
                    found.append(f"{name}: {value} is not a valid id")
        if self.inbound_ports != ALL:
            for port in (self.outbound_port, self.inbound_port):
                if any(port in r for r in self.inbound_ports):
                    found.append(
                        f"--inbound-ports: {port} is a capture port; redirecting it would loop"
                    )
        return found

    def cidrs(self, family: Family, which: Cidrs) -> Cidrs:
        """`which` restricted to one address family (``*`` stays ``*``)."""
        if which == ALL:
            return ALL
        return tuple(c for c in which if c.version == family)


__all__ = [
    "ALL",
    "DEFAULT_INBOUND_PORT",
    "DEFAULT_OUTBOUND_PORT",
    "CaptureSpec",
    "Cidrs",
    "Family",
    "IPNetwork",
    "PortRange",
    "Ports",
    "format_cidrs",
    "format_ports",
    "parse_cidrs",
    "parse_ports",
]
