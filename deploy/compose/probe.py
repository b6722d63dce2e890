"""What an intruder can do from inside one container of the compose mesh: the key-custody probe.

    docker exec -i CONTAINER python3 - SERVICE... < probe.py

prints one JSON object:

- ``keys``: every readable file in the container that holds a PEM private key (a sidecar's key
  lives in memory, so in every sidecar and service container this is empty);
- ``attest``: for each SERVICE, what the CAS said when this container asked the host's platform
  service for a quote and attested as that service (``OK``, a reason code, or ``no platform
  socket`` where the socket is not mounted);
- ``minted``: what orders' sidecar did with a certificate for ``svc/frontend`` minted here with
  a self-made CA (the mesh CA key is not readable anywhere here).

The attacker container imports it too (`story.py attack`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

SKIP = ("/proc", "/sys", "/dev")
PLATFORM_SOCKET = Path(os.environ.get("NETSHIELD_PLATFORM_SOCKET", "/run/netshield/platform.sock"))
MESH_CA = Path("/public/mesh-ca.pem")
CAS_URL = os.environ.get("NETSHIELD_CAS", "https://cas:8443")
TRUST_DOMAIN = "compose.netshield.local"
ORDERS_SIDECAR = os.environ.get("ORDERS_SIDECAR", "orders:8080")


def readable_private_keys(top: str = "/") -> list[str]:
    """Every regular file under `top` this process can read that holds a PEM private key."""
    found = []
    for root, dirs, files in os.walk(top, onerror=lambda _err: None):
        if root.startswith(SKIP):
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(root, name)
            try:
                if not os.path.isfile(path) or os.path.getsize(path) > 1 << 20:
                    continue
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue  # unreadable: what custody is for
            if b"PRIVATE KEY-----" in data and _holds_a_private_key(data):
                found.append(path)
    return sorted(found)


_PEM_KEY = re.compile(
    rb"-----BEGIN ((?:[A-Z]+ )?PRIVATE KEY)-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END \1-----"
)


def _holds_a_private_key(data: bytes) -> bool:
    """A real, loadable PEM private key (not code or docs that merely name the markers)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    for match in _PEM_KEY.finditer(data):
        try:
            load_pem_private_key(match.group(0), password=None)
        except (ValueError, TypeError):
            continue
        return True
    return False


async def attest_as(service: str, platform_socket: Path = PLATFORM_SOCKET) -> str:
    """Ask the host's platform for a quote and attest as `service`: OK or the reason code."""
    if not platform_socket.exists():
        return "no platform socket"
    from netshield.casclient import CasClient
    from netshield.intruder import attest_as as attempt
    from netshield.tls.material import cas_client_context

    ctx = cas_client_context(ca_pem=MESH_CA.read_bytes())
    async with CasClient(CAS_URL, ssl_context=ctx) as cas:
        tried = await attempt(cas, platform_socket, service, trust_domain=TRUST_DOMAIN)
    return tried.outcome


def mint_and_present(identity: str = "frontend") -> str:
    """A certificate for `identity` from a self-made CA, presented to orders' sidecar."""
    from netshield.intruder import present_self_made

    return present_self_made(ORDERS_SIDECAR, trust_domain=TRUST_DOMAIN, service=identity).detail


def main() -> int:
    report = {
        "uid": os.getuid(),
        "keys": readable_private_keys(),
        "attest": {s: asyncio.run(attest_as(s)) for s in sys.argv[1:]},
        "minted": mint_and_present(),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
