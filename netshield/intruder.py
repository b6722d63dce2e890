"""What an intruder who holds one service or sidecar (one container, one uid) tries against the
mesh, for the demo and the compose story to show being refused; the shield never calls this.

- `attest_as`: ask the host's platform service for a quote and attest as another service (whose
  approved measurement is public in the policy). The platform measures the caller's own
  workload, so the quote carries the intruder's measurement and the CAS answers
  `MEASUREMENT_NOT_ALLOWED`.
- `present_self_made`: mint a certificate for another service with a CA of one's own (the mesh
  CA key is nowhere the intruder can read) and present it to a sidecar, which refuses it
  (`PEER_CERT_UNTRUSTED` in its connection record).

Each returns what happened as values (a reason code, a measurement, bytes and a sentence) and
raises nothing for an attempt that is refused.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from netshield.agent.attest import attest
from netshield.casclient import CasClient, CasRefused
from netshield.errors import NetshieldError
from netshield.identity import SpiffeId
from netshield.pki.ca import create_root_ca, issue_certificate
from netshield.pki.certext import AttestationClaims
from netshield.pki.keys import generate_key, private_key_pem
from netshield.quoting.client import PlatformSocket


@dataclass(frozen=True, slots=True)
class Attempt:
    """An attestation attempt: the CAS's answer ("OK" or a reason code) and what was measured."""

    outcome: str
    measurement: str | None


async def attest_as(
    cas: CasClient, platform_socket: Path, service: str, *, trust_domain: str
) -> Attempt:
    """Attest as ``service`` with a quote from the platform service at ``platform_socket``."""
    quoter = PlatformSocket(platform_socket)
    try:
        await attest(cas, quoter, service, trust_domain=trust_domain)
    except CasRefused as err:
        return Attempt(err.code, quoter.last_measurement)
    except NetshieldError as err:  # no quote at all (no socket, the platform refused)
        return Attempt(err.reason.value, quoter.last_measurement)
    return Attempt("OK", quoter.last_measurement)


@dataclass(frozen=True, slots=True)
class Presented:
    """What a sidecar did with a self-made certificate: the bytes that came back and a word."""

    got: bytes
    detail: str  # "refused (SSLError)", "refused (closed)" or "accepted: ..."

    @property
    def refused(self) -> bool:
        return not self.got


def present_self_made(
    address: str,
    *,
    trust_domain: str,
    service: str = "frontend",
    measurement: str = "a" * 64,
    timeout: float = 10.0,
) -> Presented:
    """Present a certificate for ``service`` from a CA of the intruder's own (with plausible
    attestation claims) to the sidecar listening at ``address`` (``host:port``), and ask for /."""
    now = datetime.now(UTC)
    rogue = create_root_ca("intruder's own CA", now=now)
    key = generate_key()
    cert = issue_certificate(
        rogue,
        public_key=key.public_key(),
        spiffe_id=SpiffeId.for_service(trust_domain, service),
        now=now,
        lifetime=timedelta(hours=24),
        claims=AttestationClaims(measurement, 1, 1, "p-current"),
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the intruder does not care who answers
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with tempfile.TemporaryDirectory(prefix="intruder-") as work:
        cert_path, key_path = Path(work) / "c.pem", Path(work) / "k.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(private_key_pem(key))
        ctx.load_cert_chain(cert_path, key_path)
    host, port = address.rsplit(":", 1)
    got = b""
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(b"GET / HTTP/1.0\r\nHost: orders\r\n\r\n")
            while chunk := tls.recv(65536):
                got += chunk
    except (OSError, ssl.SSLError) as err:
        if not got:
            return Presented(b"", f"refused ({type(err).__name__})")
    return Presented(got, f"accepted: {got[:40]!r}" if got else "refused (closed)")
