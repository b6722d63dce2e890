"""One attestation round from the workload's side (DESIGN §3 steps 1-3).

Generate a P-256 key in memory, make a CSR for the service identity, fetch a nonce, have the
platform quote the workload with report_data binding the CSR key and the nonce, and exchange
quote + CSR for a certificate. The private key is returned to the caller only; it is never
written anywhere.

Where the quote comes from is a `Quoter`: the host's platform service over its unix socket
(`netshield.quoting.client.PlatformSocket`: the platform measures the workload itself and the
sidecar never sees the platform key), or `InProcessQuoter`, a platform whose key this process
holds and which quotes the measurement this process computed -- for tests and demos, chosen
explicitly (`platform: {in_process: DIR}`), never as a fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from netshield.attestation.platform import Platform
from netshield.attestation.quote import report_data_for
from netshield.casclient import CasClient, Credentials
from netshield.identity import SpiffeId
from netshield.pki.csr import build_csr
from netshield.pki.keys import generate_key, public_key_der


@dataclass(frozen=True, slots=True)
class Workload:
    """What an in-process platform quotes about the workload."""

    service: str
    measurement: str
    signer: str = "0" * 64
    product_id: int = 0
    svn: int = 0


class Quoter(Protocol):
    """Makes quotes over `report_data` for this workload; raises NetshieldError on failure."""

    @property
    def platform_id(self) -> str | None:
        """The quoting platform's id, once known (None before the first quote)."""
        ...

    @property
    def where(self) -> str:
        """How logs name this quoter, e.g. ``platform socket /run/netshield/platform.sock``."""
        ...

    async def quote(self, report_data: str) -> bytes:
        """A wire-encoded quote whose body carries `report_data`."""
        ...


class InProcessQuoter:
    """A platform held in this process quoting a measurement this process computed."""

    def __init__(self, platform: Platform, workload: Workload) -> None:
        self._platform = platform
        self._workload = workload

    @property
    def platform_id(self) -> str:
        return self._platform.platform_id

    @property
    def where(self) -> str:
        return f"in-process platform {self._platform.platform_id}"

    async def quote(self, report_data: str) -> bytes:
        w = self._workload
        return self._platform.quote(
            measurement=w.measurement,
            signer=w.signer,
            product_id=w.product_id,
            svn=w.svn,
            report_data=report_data,
        )

    def __repr__(self) -> str:
        return f"InProcessQuoter({self._platform.platform_id!r}, {self._workload.service!r})"


@dataclass(frozen=True, slots=True)
class Attested:
    credentials: Credentials
    key: ec.EllipticCurvePrivateKey = field(repr=False)


async def attest(cas: CasClient, quoter: Quoter, service: str, *, trust_domain: str) -> Attested:
    """Run one fresh attestation as `service`; raises CasRefused with the CAS's reason code when
    refused, and the quoter's NetshieldError when no quote could be had."""
    key = generate_key()
    csr_pem = build_csr(key, SpiffeId.for_service(trust_domain, service))
    nonce = await cas.nonce()
    quote = await quoter.quote(report_data_for(public_key_der(key.public_key()), nonce))
    creds = await cas.attest(service=service, nonce=nonce, quote=quote, csr_pem=csr_pem)
    return Attested(credentials=creds, key=key)
