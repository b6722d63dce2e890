"""One attestation round from the workload's side (DESIGN §3 steps 1-3).

Generate a P-256 key in memory, make a CSR for the service identity, fetch a nonce, have the
platform quote the workload's measurement with report_data binding the CSR key and the nonce,
and exchange quote + CSR for a certificate. The private key is returned to the caller only; it
is never written anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from netshield.attestation.platform import Platform
from netshield.attestation.quote import report_data_for
from netshield.casclient import CasClient, Credentials
from netshield.identity import SpiffeId
from netshield.pki.csr import build_csr
from netshield.pki.keys import generate_key, public_key_der


@dataclass(frozen=True, slots=True)
class Workload:
    """What the platform quotes about the workload."""

    service: str
    measurement: str
    signer: str = "0" * 64
    product_id: int = 0
    svn: int = 0


@dataclass(frozen=True, slots=True)
class Attested:
    credentials: Credentials
    key: ec.EllipticCurvePrivateKey = field(repr=False)


async def attest(
    cas: CasClient, platform: Platform, workload: Workload, *, trust_domain: str
) -> Attested:
    """Run one fresh attestation; raises CasRefused with the CAS's reason code when refused."""
    key = generate_key()
    csr_pem = build_csr(key, SpiffeId.for_service(trust_domain, workload.service))
    nonce = await cas.nonce()
    quote = platform.quote(
        measurement=workload.measurement,
        signer=workload.signer,
        product_id=workload.product_id,
        svn=workload.svn,
        report_data=report_data_for(public_key_der(key.public_key()), nonce),
    )
    creds = await cas.attest(service=workload.service, nonce=nonce, quote=quote, csr_pem=csr_pem)
    return Attested(credentials=creds, key=key)
