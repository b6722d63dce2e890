"""Workload identities: SPIFFE ids of the form ``spiffe://<trust-domain>/svc/<service>``.

The CAS writes exactly one such URI SAN into every mesh certificate; sidecars compare the peer's
id with the service they expect and with the policy's allowed callers. Operators are
``spiffe://<trust-domain>/admin/<name>`` and the CAS itself is ``spiffe://<trust-domain>/cas``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.\-_]{0,253}[a-z0-9])?$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]{0,61}[a-z0-9])?$")

SERVICE_PREFIX = "svc"
ADMIN_PREFIX = "admin"
CAS_PATH = "cas"


def trust_domain_problem(value: str) -> str | None:
    """Why `value` is not a trust domain, or None if it is one."""
    if not _TRUST_DOMAIN.fullmatch(value):
        return (
            "not a trust domain (lower-case letters, digits, '.', '-', '_'; e.g. prod.example.org)"
        )
    return None


def name_problem(value: str) -> str | None:
    """Why `value` is not a service/operator name, or None if it is one."""
    if not _NAME.fullmatch(value):
        return "not a service name (1-63 lower-case letters, digits, '-' or '_', e.g. orders)"
    return None


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    trust_domain: str
    path: str  # without the leading '/', e.g. "svc/orders"

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.path}"

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse a SPIFFE URI; raises ValueError with a readable message."""
        prefix = "spiffe://"
        if not uri.startswith(prefix):
            raise ValueError(
                f"{uri!r} is not a SPIFFE id (expected spiffe://<trust-domain>/<path>)"
            )
        rest = uri[len(prefix) :]
        domain, sep, path = rest.partition("/")
        if not sep or not path:
            raise ValueError(f"{uri!r} has no path")
        problem = trust_domain_problem(domain)
        if problem:
            raise ValueError(f"{uri!r}: trust domain {problem}")
        if any(seg == "" or seg in (".", "..") for seg in path.split("/")):
            raise ValueError(f"{uri!r} has an empty or relative path segment")
        return cls(domain, path)

    @classmethod
    def for_service(cls, trust_domain: str, service: str) -> SpiffeId:
        return cls(trust_domain, f"{SERVICE_PREFIX}/{service}")

    @classmethod
    def for_admin(cls, trust_domain: str, name: str) -> SpiffeId:
        return cls(trust_domain, f"{ADMIN_PREFIX}/{name}")

    @classmethod
    def for_cas(cls, trust_domain: str) -> SpiffeId:
        return cls(trust_domain, CAS_PATH)

    def _named(self, prefix: str) -> str | None:
        head, sep, name = self.path.partition("/")
        if head == prefix and sep and "/" not in name:
            return name
        return None

    @property
    def service(self) -> str | None:
        """The service name if this is a service identity, else None."""
        return self._named(SERVICE_PREFIX)

    @property
    def admin(self) -> str | None:
        """The operator name if this is an admin identity, else None."""
        return self._named(ADMIN_PREFIX)
