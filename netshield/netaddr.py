"""Network addresses as typed values: ``HostPort`` parsed from ``host:port`` / ``[v6]:port``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, allow_zero: bool = True) -> HostPort:
        """Parse ``host:port``; ValueError says what is wrong in one line."""
        raw = text.strip()
        if raw.startswith("["):
            host, sep, port_text = raw[1:].partition("]:")
            if not sep:
                raise ValueError(f"{text!r} is not [ipv6]:port")
        else:
            host, sep, port_text = raw.rpartition(":")
            if not sep or ":" in host:
                raise ValueError(f"{text!r} is not host:port (IPv6 addresses go in brackets)")
        if not host:
            raise ValueError(f"{text!r} has no host")
        if not port_text.isdigit():
            raise ValueError(f"{text!r}: port {port_text!r} is not a number")
        port = int(port_text)
        if not (0 if allow_zero else 1) <= port <= 65535:
            raise ValueError(f"{text!r}: port {port} out of range")
        return cls(host, port)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def is_loopback(self) -> bool:
        ip = self.ip
        return (ip is not None and ip.is_loopback) or self.host == "localhost"
