"""Where a redirected connection was going: SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST (IPv6).

After an iptables REDIRECT the accepted socket's local address is the capture port; the kernel's
connection tracking still knows the address the client dialled, and hands it out through these
socket options. `decode_sockaddr` reads the `struct sockaddr_in` / `sockaddr_in6` they return
(pure); `original_dst` asks the kernel.

Guarantees: `original_dst` returns None, never raises, when the kernel has no NAT record for the
socket (the connection was not redirected, conntrack is missing, the family has no such option);
`decode_sockaddr` raises only ValueError.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from netshield.netaddr import HostPort

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
SOL_IP = 0
SOL_IPV6 = 41
_IN = struct.Struct("!2xH4s8x")  # sa_family (host order, skipped), port, address, zero
_IN6 = struct.Struct("!2xHI16sI")  # sa_family, port, flowinfo, address, scope id
AF_INET_BYTES = struct.pack("=H", socket.AF_INET)
AF_INET6_BYTES = struct.pack("=H", socket.AF_INET6)


def decode_sockaddr(raw: bytes) -> HostPort:
    """A `struct sockaddr_in` (16 bytes) or `sockaddr_in6` (28 bytes) as a HostPort."""
    family = raw[:2]
    if family == AF_INET_BYTES and len(raw) >= _IN.size:
        port, addr = _IN.unpack_from(raw)
        return HostPort(str(ipaddress.IPv4Address(addr)), port)
    if family == AF_INET6_BYTES and len(raw) >= _IN6.size:
        port, _flow, addr, _scope = _IN6.unpack_from(raw)
        ip6 = ipaddress.IPv6Address(addr)
        mapped = ip6.ipv4_mapped
        return HostPort(str(mapped) if mapped is not None else str(ip6), port)
    raise ValueError(f"not a sockaddr_in or sockaddr_in6 ({len(raw)} bytes, family {family.hex()})")


def original_dst(sock: socket.socket) -> HostPort | None:
    """The address the client dialled before netfilter redirected it; None if not redirected."""
    attempts = [(SOL_IP, SO_ORIGINAL_DST, 16)]
    if sock.family == socket.AF_INET6:
        attempts.insert(0, (SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28))
    for level, option, size in attempts:
        try:
            return decode_sockaddr(sock.getsockopt(level, option, size))
        except (OSError, ValueError):
            continue
    return None


def was_redirected(sock: socket.socket, original: HostPort | None) -> bool:
    """True if `original` is a real redirect: conntrack also answers for connections it did not
    NAT (then the "original" destination is the listener itself)."""
    if original is None:
        return False
    try:
        local = sock.getsockname()
    except OSError:
        return False
    host = str(local[0])
    if host.startswith("::ffff:"):
        host = host[7:]
    return not (original.port == local[1] and _same_ip(original.host, host))


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


__all__ = [
    "IP6T_SO_ORIGINAL_DST",
    "SO_ORIGINAL_DST",
    "decode_sockaddr",
    "original_dst",
    "was_redirected",
]
