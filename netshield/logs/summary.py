"""`netshield logs --summary`: what a log says at a glance, in constant memory.

Counts connections (an aggregate record of a flood's denials counts as its ``count``) by
decision (allow / deny / audit), by reason (deny and audit reasons) and by close
reason (allowed connections); per caller → callee pair the allowed, denied and audited counts and
the bytes; the top talkers (pairs by bytes); and duration p50/p99/max. Pairs live in a `TopK`
(exact up to `capacity` distinct pairs, flagged approximate beyond), durations in a
`QuantileSketch` (DDSketch, within 1 % relative error). Reasons and decisions are a small fixed
vocabulary; their counters are plain dicts.

Pure: records in (`add`), lines or JSON-able data out (`lines`, `to_dict`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from netshield.logs.parties import parties
from netshield.logs.sketch import QuantileSketch, TopK
from netshield.logs.table import decision_word, human_bytes, human_duration
from netshield.record import ConnectionRecord


@dataclass
class PairStats:
    allow: int = 0
    deny: int = 0
    audit: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def connections(self) -> int:
        return self.allow + self.deny + self.audit

    @property
    def bytes(self) -> int:
        return self.bytes_in + self.bytes_out


class Summary:
    """Accumulates records; `top` is how many pairs and talkers `lines` shows."""

    def __init__(self, *, top: int = 10, capacity: int = 4096) -> None:
        self.top = top
        self.total = 0  # records
        self.connections = 0  # connections they stand for (aggregates count many)
        self.tunnels = 0  # tunnel records (their streams are records of their own)
        self.first_ts: str | None = None
        self.last_ts: str | None = None
        self.decisions: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.close_reasons: Counter[str] = Counter()
        self.waf_rules: Counter[str] = Counter()  # requests each WAF rule matched
        self.waf_actions: Counter[str] = Counter()  # requests by WAF action
        self.pairs: TopK[tuple[str, str], PairStats] = TopK(
            PairStats, lambda p: p.connections, capacity=capacity
        )
        self.durations = QuantileSketch()

    def add(self, record: ConnectionRecord) -> None:
        if record.direction == "tunnel":  # a tunnel's own record: its streams are counted
            self.tunnels += 1
            return
        n = record.count
        self.total += 1
        self.connections += n
        last = record.last_ts or record.ts
        if self.first_ts is None or record.ts < self.first_ts:
            self.first_ts = record.ts
        if self.last_ts is None or last > self.last_ts:
            self.last_ts = last
        decision = decision_word(record)
        self.decisions[decision] += n
        if decision != "allow":
            self.reasons[record.reason] += n
        elif record.close_reason:
            self.close_reasons[record.close_reason] += n
        if record.waf is not None:
            self._add_waf(record)
        ends = parties(record)
        pair = self.pairs.get((ends.caller, ends.callee))
        setattr(pair, decision, getattr(pair, decision) + n)
        pair.bytes_in += record.bytes_in
        pair.bytes_out += record.bytes_out
        self.durations.add(record.duration_ms)

    def _add_waf(self, record: ConnectionRecord) -> None:
        waf = record.waf
        assert waf is not None
        if waf.requests:
            for request in waf.requests:
                self.waf_actions[request.action] += 1
                self.waf_rules.update(request.rule_ids)
        else:  # records without per-request verdicts
            self.waf_actions[waf.action] += 1
            self.waf_rules.update(waf.rule_ids)

    def quantiles(self) -> dict[str, float | None]:
        return {
            "p50": self.durations.quantile(0.5),
            "p99": self.durations.quantile(0.99),
            "max": self.durations.quantile(1.0),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.total,
            "connections": self.connections,
            "tunnels": self.tunnels,
            "first": self.first_ts,
            "last": self.last_ts,
            "decisions": dict(sorted(self.decisions.items())),
            "reasons": dict(self.reasons.most_common()),
            "close_reasons": dict(self.close_reasons.most_common()),
            "waf_actions": dict(self.waf_actions.most_common()),
            "waf_rules": dict(self.waf_rules.most_common()),
            "pairs": [
                {"caller": caller, "callee": callee, **vars(stats)}
                for (caller, callee), stats in self.pairs.top(len(self.pairs))
            ],
            "pairs_exact": self.pairs.exact,
            "duration_ms": {**self.quantiles(), "relative_error": self.durations.alpha},
        }

    def lines(self) -> list[str]:
        """The summary as text for a terminal."""
        if self.total == 0:
            return ["no records"]
        folded = (
            f" ({self.connections} connections: aggregates of denials count many)"
            if self.connections != self.total
            else ""
        )
        out = [f"{self.total} records{folded} from {self.first_ts} to {self.last_ts}"]
        if self.tunnels:
            out.append(f"tunnels: {self.tunnels} (their streams are counted as connections)")
        out.append(
            "decisions: "
            + ", ".join(f"{word} {self.decisions[word]}" for word in ("allow", "deny", "audit"))
        )
        if self.reasons:
            out.append("denied (or audited) by reason:")
            out += [f"  {code:<28} {n:>10}" for code, n in self.reasons.most_common()]
        if self.close_reasons:
            out.append("allowed, by how they closed:")
            out += [f"  {code:<28} {n:>10}" for code, n in self.close_reasons.most_common()]
        if self.waf_actions:
            out.append(
                "WAF requests: "
                + ", ".join(f"{a} {n}" for a, n in sorted(self.waf_actions.items()))
            )
        if self.waf_rules:
            out.append("WAF rules, by requests matched:")
            out += [f"  {rule:<28} {n:>10}" for rule, n in self.waf_rules.most_common(self.top)]
        note = (
            "" if self.pairs.exact else f" (approximate: counts may be low by {self.pairs.error:g})"
        )
        out.append(f"caller → callee{note}:")
        out.append(f"  {'pair':<40} {'allow':>8} {'deny':>8} {'audit':>8} {'bytes':>9}")
        for (caller, callee), s in self.pairs.top(self.top):
            pair = f"{caller} → {callee}"
            out.append(
                f"  {pair:<40} {s.allow:>8} {s.deny:>8} {s.audit:>8} {human_bytes(s.bytes):>9}"
            )
        out.append("top talkers (bytes in+out):")
        for (caller, callee), s in self.pairs.top(self.top, key=lambda p: p.bytes):
            if s.bytes == 0:
                break
            out.append(f"  {f'{caller} → {callee}':<40} {human_bytes(s.bytes):>9}")
        q = self.quantiles()
        out.append(
            "duration: "
            + ", ".join(f"{k} {human_duration(v)}" for k, v in q.items() if v is not None)
            + f" (p50/p99 within {self.durations.alpha:.0%})"
        )
        return out


__all__ = ["PairStats", "Summary"]
