"""`netshield evidence verify FILE`: check a machine's attestation evidence offline.

FILE is a raw SEV-SNP report, a raw SGX/TDX DCAP quote, a ``netshield-evidence/1`` envelope or
a simulated quote (`-` reads standard input). The verification is the CAS's own
(`EvidenceVerifier`) with the pinned AMD and Intel roots and the collateral in --collateral DIR
(the files the CAS would use), as of now or --at TIME. It prints the evidence's claims, the
verdict with its reason code and which check failed, and the policy keys that would accept this
workload — so an operator can check a machine, and copy its reference values, before enrolling
it. Exit status: 0 verified, 1 refused, 2 usage error (unreadable file or directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from netshield.errors import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "evidence",
        help="check SEV-SNP, SGX or TDX evidence (or a simulated quote) offline",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    esub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = esub.add_parser(
        "verify", help="verify a report or quote and print its claims and the verdict"
    )
    q.add_argument("file", help="the evidence file (- for standard input)")
    q.add_argument("--collateral", metavar="DIR", help="vendor collateral directory (as the CAS's)")
    q.add_argument("--json", action="store_true", help="claims and verdict as JSON")
    q.add_argument("--at", metavar="TIME", help="verify as of this RFC 3339 time (default: now)")
    q.add_argument(
        "--sim-vendor-root",
        metavar="FILE",
        help="the simulated vendor root (PEM) to verify simulated quotes against",
    )
    q.add_argument(
        "--unsafe-evidence-roots",
        metavar="FILE",
        help="PEM roots to trust besides AMD's and Intel's (test and lab hardware only)",
    )
    q.set_defaults(func=cmd_evidence_verify)


def _read(path: str, what: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"{what} {path}: cannot read ({err.strerror or err})") from None


def _certs(path: str | None, flag: str) -> list[Any]:
    from netshield.attestation.evidence.chains import load_certificates

    if path is None:
        return []
    try:
        return load_certificates(_read(path, flag))
    except ValueError:
        raise UsageError(f"{flag} {path}: not PEM certificates") from None


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from netshield.attestation.evidence.chains import TrustAnchors
    from netshield.attestation.evidence.collateral import EMPTY, read_collateral_dir
    from netshield.attestation.evidence.verifier import EvidenceVerifier
    from netshield.attestation.verifier import SimulatedQuoteVerifier
    from netshield.errors import QuoteError

    data = _read(args.file, "evidence file")
    now = datetime.now(UTC)
    if args.at:
        try:
            now = datetime.fromisoformat(args.at.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"--at {args.at!r}: not an RFC 3339 time (e.g. 2025-06-20T00:00:00Z)"
            ) from None
        if now.tzinfo is None:
            raise UsageError(f"--at {args.at!r}: give a time zone (e.g. Z)")
    collateral = EMPTY
    if args.collateral:
        try:
            collateral = read_collateral_dir(Path(args.collateral))
        except OSError as err:
            raise UsageError(
                f"--collateral {args.collateral}: cannot read ({err.strerror or err})"
            ) from None
        if not Path(args.collateral).is_dir():
            raise UsageError(f"--collateral {args.collateral}: no such directory")
    sim_roots = _certs(args.sim_vendor_root, "--sim-vendor-root")
    anchors = TrustAnchors().with_extra(
        _certs(args.unsafe_evidence_roots, "--unsafe-evidence-roots")
    )
    verifier = EvidenceVerifier(
        sim=SimulatedQuoteVerifier(sim_roots) if sim_roots else None,
        anchors=anchors,
        collateral=lambda: collateral,
    )
    try:
        evidence = verifier.verify(data, now=now)
    except QuoteError as err:
        report = refused_report(data, err, now)
        ok = False
    else:
        report = verified_report(evidence, now)
        ok = True
    report["collateral"] = collateral.describe() if args.collateral else None
    report["collateral_skipped"] = list(collateral.skipped)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(render(report)))
    return 0 if ok else 1


def verified_report(evidence: Any, now: datetime) -> dict[str, Any]:
    from netshield.attestation.evidence.claims import EVIDENCE_NAMES

    return {
        "verdict": "verified",
        "reason": "OK",
        "detail": f"{EVIDENCE_NAMES[evidence.evidence_type]} verified as of {now.isoformat()}",
        "checked_at": now.isoformat(),
        **evidence.to_json(),
        "policy_snippet": policy_snippet(evidence),
    }


def refused_report(data: bytes, err: Any, now: datetime) -> dict[str, Any]:
    """The refusal, with the claims of the evidence as parsed (unverified) when it parses."""
    from netshield.attestation.evidence.decode import decode_evidence
    from netshield.errors import QuoteError

    kind = getattr(err, "evidence_type", None)
    claims: dict[str, Any] = {}
    try:
        decoded = decode_evidence(data)
    except QuoteError:
        pass
    else:
        kind = decoded.evidence_type
        claims = unverified_claims(decoded)
    return {
        "verdict": "refused",
        "reason": err.reason.value,
        "detail": str(err),
        "hint": err.reason.info.hint,
        "checked_at": now.isoformat(),
        "evidence_type": kind,
        "claims": claims,
        "claims_verified": False,
    }


def unverified_claims(decoded: Any) -> dict[str, Any]:
    from netshield.attestation.evidence import dcap, sgx, snp, tdx
    from netshield.attestation.quote import Quote

    parsed = decoded.parsed
    if isinstance(parsed, snp.SnpReport):
        tcb = snp.decode_tcb(parsed.reported_tcb, turin=parsed.turin_layout)
        claims = snp.report_claims(parsed, tcb, None)
        claims["measurement"] = parsed.measurement.hex()
        claims["report_data"] = parsed.report_data.hex()
        return claims
    if isinstance(parsed, dcap.DcapQuote):
        body = parsed.body
        out = (
            sgx.body_claims(body) if isinstance(body, sgx.SgxReportBody) else tdx.body_claims(body)
        )
        out["report_data"] = body.report_data.hex()
        out["quote_version"] = parsed.version
        return out
    if isinstance(parsed, Quote):
        return {"platform_id": parsed.body.platform_id, "measurement": parsed.body.measurement}
    return {}


def policy_snippet(evidence: Any) -> dict[str, Any]:
    """The reference values that would accept this workload, under services.<name>."""
    v = evidence.values
    kind = evidence.evidence_type
    if kind == "sim":
        return {"measurements": [v["measurement"]]}
    if kind == "sev-snp":
        ref: dict[str, Any] = {"measurements": [v["measurement"]]}
        if any(c != "0" for c in str(v["host_data"])):
            ref["host_data"] = v["host_data"]
        return {"evidence": {"sev-snp": ref}}
    if kind == "sgx":
        return {"evidence": {"sgx": {"mrenclave": [v["mrenclave"]]}}}
    ref = {"mrtd": [v["mrtd"]]}
    ref.update({f"rtmr{i}": [v[f"rtmr{i}"]] for i in range(4)})
    return {"evidence": {"tdx": ref}}


def render(report: dict[str, Any]) -> list[str]:
    lines = []
    kind = report.get("evidence_type") or "unknown"
    if report["verdict"] == "verified":
        lines.append(f"verified: {kind} evidence from platform {report['platform_id']}")
        lines.append(f"  tcb: {json.dumps(report['tcb'])}")
        lines.append(f"  debug: {str(report['debug']).lower()}")
        lines.append(f"  measurement: {report['measurement']}")
        lines.append(f"  report_data: {report['report_data']}")
        for key, value in report["claims"].items():
            lines.append(f"  {key}: {json.dumps(value) if isinstance(value, dict) else value}")
        lines.append("  chain: " + " <- ".join(report["chain"]))
        lines.append("policy keys that accept this workload (under services.<name>):")
        lines.append("  " + json.dumps(report["policy_snippet"]))
    else:
        lines.append(f"refused: {report['reason']} ({kind} evidence): {report['detail']}")
        lines.append(f"  what to do: {report['hint']}")
        if report["claims"]:
            lines.append("unverified claims (as the evidence states them, not to be trusted):")
            for key, value in report["claims"].items():
                lines.append(f"  {key}: {json.dumps(value) if isinstance(value, dict) else value}")
    if report.get("collateral"):
        lines.append(report["collateral"])
    for skipped in report.get("collateral_skipped", []):
        lines.append(f"  not used: {skipped}")
    return lines
