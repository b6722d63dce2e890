"""Error types. Each carries a stable reason code and an operator-readable message.

Expected outcomes (an allow/deny decision, a verdict) are values, not exceptions; these types are
for broken input and broken invariants. `str(err)` is one line: what failed, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from netshield.reasons import Reason


class NetshieldError(Exception):
    """Base class: a failure that has a reason code and a one-line operator message."""

    reason: Reason = Reason.REQUEST_MALFORMED

    def __init__(self, message: str, *, reason: Reason | None = None, hint: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.message = message
        self.hint = hint if hint is not None else self.reason.info.hint

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message followed by the hint, for CLI output."""
        if self.hint and self.hint not in self.message:
            return f"{self.message} ({self.hint})"
        return self.message


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in a configuration document, located by its key path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(NetshieldError):
    """A configuration document (policy, sidecar config) has one or more problems."""

    reason = Reason.POLICY_INVALID

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = list(problems)
        lines = "; ".join(str(p) for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s): {lines}")


class QuoteError(NetshieldError):
    """A quote could not be decoded or verified."""

    reason = Reason.QUOTE_MALFORMED


class CsrError(NetshieldError):
    """A certificate signing request is malformed or not acceptable."""

    reason = Reason.CSR_MALFORMED


class StateError(NetshieldError):
    """The CAS state is inconsistent (rolled back, audit chain broken, unreadable)."""

    reason = Reason.STATE_ROLLED_BACK


class UsageError(NetshieldError):
    """The command line or a file it names is wrong: a message and a non-zero exit.

    The message itself says what to fix, so no reason-code hint is appended."""

    def __init__(self, message: str, *, reason: Reason | None = None, hint: str | None = None):
        super().__init__(message, reason=reason, hint=hint if hint is not None else "")
