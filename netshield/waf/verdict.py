"""What a WAF engine says about one request or response: a `Verdict` (pure values).

Guarantees: `rule_ids` lists every rule that matched, in the order they matched, without
repeats; `matches` says for each where it matched; `status` is the HTTP status to refuse with
(403 for rule blocks, 400/413/431/505 for protocol refusals); an allow verdict may still carry
rule ids (rules that matched below the anomaly threshold, or in detect mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from netshield.waf.http import ParseError


@dataclass(frozen=True)
class Match:
    rule_id: str
    message: str = ""
    where: str = ""  # the variable that matched, e.g. "ARGS:id", "REQUEST_HEADERS:User-Agent"
    severity: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "message": self.message, "where": self.where}


@dataclass(frozen=True)
class Verdict:
    action: Literal["allow", "block"]
    rule_ids: tuple[str, ...] = ()
    detail: str = ""
    anomaly_score: int = 0
    matches: tuple[Match, ...] = ()
    status: int = 403


def refusal(error: ParseError) -> Verdict:
    """The verdict for a request the parser refused (it never reaches an engine)."""
    return Verdict(
        "block",
        (error.rule_id,),
        f"{error.rule_id} {error.message}",
        matches=(Match(error.rule_id, error.message, "request framing"),),
        status=error.status,
    )


__all__ = ["Match", "Verdict", "refusal"]
