"""What one socket operation of the shielded program becomes: pure decisions over the config and
the policy slice the CAS issued.

Responsibility: for a connection the program opens to `HostPort` (or a datagram it sends), say
whether it becomes mutual TLS to a mesh service (expecting its identity), goes through the
native route of a native service, is passed through in plaintext, or is refused, and why; for a
listening socket, what its port's rule is; for a host name the program resolves, which mesh
addresses it stands for.

Guarantees: pure and total. Mesh services come first: an address of the CAS registry (or of a
`service` rule's `address`) is always protected, whatever a wildcard rule says, so no rule can
send a mesh service plaintext. Then native services, then the address rules in order, then
`outbound.default`. Without credentials (`slice_` None) nothing is decided but a refusal with
NO_CREDENTIALS: no certificate, no connection, and no plaintext to an address that might be a
mesh service the registry would have named.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from netshield.capture.destinations import MeshDestination, NativeDestination, classify
from netshield.netaddr import HostPort
from netshield.policyslice import PolicySlice
from netshield.reasons import Reason
from netshield.shield.config import AddressPattern, InboundPolicy, Mode, OutboundPolicy


@dataclass(frozen=True, slots=True)
class Protected:
    service: str
    target: HostPort  # where to open mutual TLS


@dataclass(frozen=True, slots=True)
class Native:
    service: str
    target: HostPort
    waf: bool


@dataclass(frozen=True, slots=True)
class Unprotected:
    target: HostPort
    detail: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Reason
    detail: str


Verdict = Protected | Native | Unprotected | Refused

Resolved = Mapping[str, frozenset[str]]


def no_credentials(detail: str) -> Refused:
    return Refused(
        Reason.NO_CREDENTIALS,
        f"this process holds no mesh certificate ({detail}); the shield opens no connection "
        "without one",
    )


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def pattern_matches(pattern: AddressPattern, dest: HostPort, resolved: Resolved) -> bool:
    """Does an address rule cover `dest` (an IP literal)? Names match through `resolved`."""
    if pattern.port is not None and pattern.port != dest.port:
        return False
    if pattern.host == "*":
        return True
    ip = _ip(dest.host)
    if ip is None:
        return False
    if pattern.network is not None:
        net = pattern.network
        if isinstance(ip, ipaddress.IPv4Address) and isinstance(net, ipaddress.IPv6Network):
            mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
            return mapped in net
        return ip.version == net.version and ip in net
    return any(_ip(other) == ip for other in resolved.get(pattern.host, ()))


def _service_target(policy: OutboundPolicy, dest: HostPort) -> Protected | None:
    """A `service` rule whose explicit address is `dest`."""
    for rule in policy.destinations:
        if rule.service is None or rule.address is None or rule.address.network is None:
            continue
        if rule.address.port == dest.port and _ip(dest.host) in rule.address.network:
            return Protected(rule.service, dest)
    return None


def decide_outbound(
    policy: OutboundPolicy, slice_: PolicySlice | None, dest: HostPort, resolved: Resolved
) -> Verdict:
    """What a TCP connection from the program to `dest` (an IP literal) becomes."""
    if slice_ is None:
        return no_credentials("not attested yet, refused, or expired")
    explicit = _service_target(policy, dest)
    if explicit is not None:
        return explicit
    found = classify(slice_, dest, resolved)
    if isinstance(found, MeshDestination):
        return Protected(found.service, dest)
    if isinstance(found, NativeDestination):
        return Native(found.service, dest, found.waf)
    for i, rule in enumerate(policy.destinations):
        if rule.service is not None or rule.address is None:
            continue
        if pattern_matches(rule.address, dest, resolved):
            where = f"outbound.destinations[{i}] ({rule.address})"
            if rule.mode == "refuse":
                return Refused(Reason.DESTINATION_NOT_IN_MESH, f"{dest} is refused by {where}")
            return Unprotected(dest, f"{dest} is passed through in plaintext by {where}")
    if policy.default == "unprotected":
        return Unprotected(
            dest,
            f"{dest} is outside the mesh; outbound.default is unprotected, so it was passed "
            "through in plaintext",
        )
    return Refused(
        Reason.DESTINATION_NOT_IN_MESH,
        f"{dest} is no mesh service's address (services.<name>.addresses), no native service and "
        "no outbound.destinations entry; outbound.default is refuse",
    )


def decide_datagram(
    policy: OutboundPolicy, slice_: PolicySlice | None, dest: HostPort, resolved: Resolved
) -> Refused | None:
    """None if a UDP datagram to `dest` may go out in plaintext, else why not: UDP to the mesh
    cannot be protected (the mesh is TLS over TCP), so it is refused, never sent in clear."""
    verdict = decide_outbound(policy, slice_, dest, resolved)
    if isinstance(verdict, Protected | Native):
        return Refused(
            Reason.UDP_NOT_PROTECTED,
            f"{dest} is {verdict.service}, a mesh destination, and UDP cannot be protected "
            "(mesh traffic is mutual TLS over TCP); the datagram was not sent",
        )
    if isinstance(verdict, Refused):
        return verdict
    return None


def decide_listen(policy: InboundPolicy, port: int) -> Mode:
    """What a listening TCP socket on `port` becomes."""
    return policy.mode_of(port)


def addresses_for_name(
    policy: OutboundPolicy, slice_: PolicySlice | None, host: str
) -> list[HostPort] | None:
    """The mesh addresses a host name of a `service` rule's `names` stands for; None if `host`
    is no such name (resolve it as usual), [] if it is one but no address is known."""
    wanted = host.lower().rstrip(".")
    for rule in policy.destinations:
        if rule.service is None or wanted not in (n.lower() for n in rule.names):
            continue
        if rule.address is not None and rule.address.port is not None:
            return [HostPort(rule.address.host, rule.address.port)]
        entry = slice_.registry.get(rule.service) if slice_ is not None else None
        return list(entry.addresses) if entry is not None else []
    return None


def listen_refusal(port: int) -> Refused:
    return Refused(
        Reason.LISTEN_REFUSED,
        f"listening on port {port} is refused by the shield's inbound rules (inbound.default or "
        f"inbound.ports); list the port with mode protected or unprotected",
    )


__all__ = [
    "Native",
    "Protected",
    "Refused",
    "Resolved",
    "Unprotected",
    "Verdict",
    "addresses_for_name",
    "decide_datagram",
    "decide_listen",
    "decide_outbound",
    "listen_refusal",
    "no_credentials",
    "pattern_matches",
]
