"""The simulated platform as an evidence type: ``netshield-sim-quote/1`` quotes.

Parsing and verification are `netshield.attestation.quote` and `SimulatedQuoteVerifier`, as
before; this module only states their result in the shared `VerifiedEvidence` vocabulary, so
the appraisal treats the simulated platform and real hardware alike. Pure.
"""

from __future__ import annotations

from types import MappingProxyType

from netshield.attestation.evidence.claims import SimTcb, VerifiedEvidence
from netshield.attestation.verifier import VerifiedQuote


def sim_evidence(verified: VerifiedQuote) -> VerifiedEvidence:
    """A verified simulated quote as evidence of type ``sim``."""
    body = verified.body
    return VerifiedEvidence(
        evidence_type="sim",
        platform_id=verified.platform_id,
        debug=body.debug,
        report_data=bytes.fromhex(body.report_data),
        measurement=body.measurement,
        tcb=SimTcb(verified.tcb_level),
        values=MappingProxyType(
            {
                "measurement": body.measurement,
                "signer": body.signer,
                "product_id": body.product_id,
                "svn": body.svn,
            }
        ),
        claims=MappingProxyType(
            {
                "format": body.format,
                "measurement": body.measurement,
                "signer": body.signer,
                "product_id": body.product_id,
                "svn": body.svn,
                "tcb_level": verified.tcb_level,
                "debug": body.debug,
            }
        ),
        chain=(verified.platform_cert,),
    )
