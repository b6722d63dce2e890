"""`EvidenceVerifier`: the CAS's one `QuoteVerifier` for every evidence type.

It decodes the evidence (`decode.decode_evidence`), then hands it to the type's verifier: the
simulated platform's `SimulatedQuoteVerifier`, `snp.verify_report` or `dcap.verify_quote`,
with the pinned vendor roots (`chains.TrustAnchors`) and the collateral of the moment (a
callable, so the CAS can pick up refreshed collateral files without a restart). Certificates
carried by the evidence are only candidates: they count once they chain to a pinned root.

Pure: `verify(data, now=…)` returns a `VerifiedEvidence` or raises a `QuoteError` (an
`EvidenceError` naming the type and the failed check) — the same contract for every type.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from netshield.attestation.evidence import dcap, snp
from netshield.attestation.evidence.chains import TrustAnchors
from netshield.attestation.evidence.claims import EvidenceError, VerifiedEvidence
from netshield.attestation.evidence.collateral import EMPTY, Collateral
from netshield.attestation.evidence.decode import decode_evidence
from netshield.attestation.evidence.sim import sim_evidence
from netshield.attestation.quote import QUOTE_FORMAT, Quote
from netshield.attestation.verifier import SimulatedQuoteVerifier
from netshield.errors import QuoteError
from netshield.reasons import Reason


class EvidenceVerifier:
    """Verifies simulated quotes, SEV-SNP reports and SGX/TDX DCAP quotes."""

    formats: frozenset[str] = frozenset({QUOTE_FORMAT, "sev-snp", "sgx", "tdx"})

    def __init__(
        self,
        *,
        sim: SimulatedQuoteVerifier | None,
        anchors: TrustAnchors | None = None,
        collateral: Callable[[], Collateral] = lambda: EMPTY,
    ) -> None:
        self._sim = sim
        self._anchors = anchors or TrustAnchors()
        self._collateral = collateral

    def verify(self, data: bytes, *, now: datetime) -> VerifiedEvidence:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        decoded = decode_evidence(data)
        parsed = decoded.parsed
        if isinstance(parsed, Quote):
            if self._sim is None:
                raise EvidenceError(
                    "this CAS has no simulated vendor root, so it accepts no simulated quotes",
                    reason=Reason.PLATFORM_CERT_UNTRUSTED,
                    evidence_type="sim",
                )
            return sim_evidence(self._sim.verify(decoded.raw, now=now))
        try:
            collateral = self._collateral().plus_certificates(decoded.certificates)
        except (OSError, ValueError) as err:
            raise EvidenceError(
                f"the collateral could not be read ({err})",
                reason=Reason.COLLATERAL_MISSING,
                evidence_type=decoded.evidence_type,
            ) from None
        if isinstance(parsed, snp.SnpReport):
            return snp.verify_report(
                parsed,
                certificates=collateral.certificates,
                anchors=self._anchors.amd,
                now=now,
                crls=collateral.crls,
            )
        if isinstance(parsed, dcap.DcapQuote):
            return dcap.verify_quote(
                parsed, collateral=collateral, anchors=self._anchors.intel, now=now
            )
        raise QuoteError("unknown evidence", reason=Reason.QUOTE_FORMAT_UNSUPPORTED)
