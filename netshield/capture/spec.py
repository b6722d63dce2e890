"""What transparent capture redirects: a `CaptureSpec`, and the parsers for its lists.

Responsibility: turn the operator's words (``8080,9000-9010``, ``*``, ``10.0.0.0/8,fd00::/8``,
uid numbers or user names already resolved) into one frozen value the rule generator reads.

Guarantees: `parse_ports`, `parse_cidrs`, `parse_ips`, `parse_udp_endpoints` and `nameservers`
return a value or raise ValueError with one line that names the bad item; they never raise
anything else, whatever the text. `CaptureSpec.problems`
lists every inconsistency (no proxy uid/gid would make the sidecar capture its own connections:
a loop) so the command line can refuse before touching the tables.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Family = Literal[4, 6]
Egress = Literal["strict", "permissive"]
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


@dataclass(frozen=True, order=True, slots=True)
class UdpEndpoint:
    """A UDP destination non-TCP egress may reach in strict mode (an address and one port)."""

    address: IPAddress
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


def parse_ips(text: str) -> tuple[IPAddress, ...]:
    """A comma list of IPv4 and IPv6 addresses (``10.96.0.10,fd00::a``); empty text: none."""
    result: list[IPAddress] = []
    for item in _items(text.strip(), "addresses"):
        try:
            result.append(ipaddress.ip_address(item.removeprefix("[").removesuffix("]")))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address") from None
    return tuple(sorted(set(result), key=lambda a: (a.version, a)))


def parse_udp_endpoints(text: str) -> tuple[UdpEndpoint, ...]:
    """A comma list of ``ip:port`` (IPv6 as ``[addr]:port``), e.g. ``10.0.0.5:123,[fd00::5]:123``."""
    result: list[UdpEndpoint] = []
    for item in _items(text.strip(), "UDP destinations"):
        host, sep, port_text = item.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{item!r} is not ip:port (IPv6 as [addr]:port)")
        if ":" in host and not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"{item!r}: an IPv6 address goes in brackets ([addr]:port)")
        try:
            address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
            port = _port(port_text)
        except ValueError as err:
            raise ValueError(f"{item!r}: {err}") from None
        result.append(UdpEndpoint(address, port))
    return tuple(sorted(set(result), key=lambda e: (e.address.version, e)))


def nameservers(resolv_conf: str) -> tuple[IPAddress, ...]:
    """The `nameserver` addresses of a resolv.conf text, loopback ones left out (loopback
    traffic never leaves the namespace, so it needs no exception); scope ids are dropped."""
    found: list[IPAddress] = []
    for line in resolv_conf.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            with contextlib.suppress(ValueError):
                address = ipaddress.ip_address(words[1].split("%", 1)[0])
                if not address.is_loopback:
                    found.append(address)
    return tuple(sorted(set(found), key=lambda a: (a.version, a)))


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
    `exclude_inbound_ports`) goes to `inbound_port`. With `egress` strict, nothing but TCP leaves
    the namespace (the filter table drops and counts the rest, IPv4 and IPv6), except the
    sidecar's own traffic, loopback, IPv6 neighbour discovery, DNS (UDP and TCP port 53) to
    `dns_servers` and UDP to `allow_udp`.
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
    egress: Egress = "permissive"
    dns_servers: tuple[IPAddress, ...] = ()
    allow_udp: tuple[UdpEndpoint, ...] = ()

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
        if self.egress != "strict" and (self.dns_servers or self.allow_udp):
            found.append(
                "--allow-dns/--allow-udp: only strict mode filters non-TCP egress (--mode strict)"
            )
        return found

    def of_family(self, family: Family, items: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
        """The addresses of one family."""
        return tuple(a for a in items if a.version == family)

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
    "Egress",
    "Family",
    "IPAddress",
    "IPNetwork",
    "PortRange",
    "Ports",
    "UdpEndpoint",
    "format_cidrs",
    "format_ports",
    "nameservers",
    "parse_cidrs",
    "parse_ips",
    "parse_ports",
    "parse_udp_endpoints",
]
