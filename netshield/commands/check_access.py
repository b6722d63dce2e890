"""`netshield cas check-access CALLER CALLEE`: would CALLER reach CALLEE under the current policy?

A dry run of the sidecars' own decisions (`netshield.explain.check_access`): CALLER's sidecar
checks it may call CALLEE, CALLEE's sidecar checks CALLER is an allowed caller and not revoked.
The policy and the revocations come from the CAS (--cas URL --admin DIR, or $NETSHIELD_CAS /
$NETSHIELD_ADMIN) or, without revocations, from --policy FILE. The explanation is the one
`netshield explain` gives for a logged connection. Exit status: 0 allowed, 1 denied, 2 error.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from netshield.errors import UsageError


def register_cas(csub: Any) -> None:
    from netshield.commands.explain import add_policy_source

    p = csub.add_parser(
        "check-access",
        help="dry-run the authorization decision for CALLER → CALLEE under the current policy",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("caller", help="calling service (name or SPIFFE id)")
    p.add_argument("callee", help="called service (name or SPIFFE id)")
    add_policy_source(p)
    p.add_argument("--json", action="store_true", help="the outcome as JSON")
    p.set_defaults(func=cmd_check_access)


def cmd_check_access(args: argparse.Namespace) -> int:
    from netshield.agent.revocations import RevocationState
    from netshield.commands.explain import ENV_ADMIN, ENV_CAS, fetch_cas_policy, policy_view
    from netshield.explain import PolicyView, check_access

    state = RevocationState()
    url = args.cas or os.environ.get(ENV_CAS)
    admin = args.admin or os.environ.get(ENV_ADMIN)
    if args.policy:
        view = policy_view(args, required=True)
        revocations = "not checked (a policy file carries none)"
    elif url and admin:
        policy, version, events, head = fetch_cas_policy(url, Path(admin), feed=True)
        view = PolicyView(policy, version, f"the CAS at {url}")
        for event in events:
            try:
                state.apply(event)
            except ValueError as err:
                raise UsageError(f"the CAS feed sent a bad event ({err})", hint="") from None
        state.set_min_epoch(int(head.get("min_epoch", policy.certificates.min_epoch)))
        revocations = "from the CAS feed"
    else:
        view = policy_view(args, required=True)  # raises: says what is missing
        revocations = ""
    try:
        result = check_access(
            view,
            args.caller,
            args.callee,
            now=datetime.now(UTC),
            check=state.check,
            service_revoked=lambda name: state.revoked(serial=None, service=name, platform_id=None),
        )
    except ValueError as err:
        raise UsageError(str(err), hint="") from None
    if args.json:
        print(
            json.dumps(
                {
                    "caller": result.caller,
                    "callee": result.callee,
                    "allowed": result.allowed,
                    "verdict": result.explanation.verdict,
                    "reason": result.reason,
                    "policy": view.label,
                    "source": view.source,
                    "steps": list(result.steps),
                    "sentences": list(result.explanation.sentences),
                    "clause": result.explanation.clause,
                    "clause_in": result.explanation.where if result.explanation.clause else None,
                    "change": result.explanation.change,
                },
                indent=2,
            )
        )
    else:
        verdict = result.explanation.verdict.upper()
        where = view.label if view.version is None else f"{view.label} ({view.source})"
        print(f"{result.caller} → {result.callee}: {verdict} under {where}")
        for step in result.steps:
            print(f"  checked: {step}")
        if revocations:
            print(f"  revocations: {revocations}")
        for line in result.explanation.lines():
            print(f"  {line}")
    return 0 if result.allowed else 1
