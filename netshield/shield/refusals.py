"""The errors a shielded program's socket calls raise when the shield refuses: ordinary `OSError`
subclasses (so `except OSError`, `requests`, `aiohttp` and `asyncio` handle them as they handle
a refused connection) that carry the shield's stable reason code.

`str(err)` reads ``[Errno 13] netshield NO_CREDENTIALS: this process holds no mesh certificate
...``: what was refused and why, in the program's own traceback or log.
"""

from __future__ import annotations

import errno

from netshield.reasons import Reason


class ShieldRefusal(OSError):
    """Base of the shield's refusals; `reason` is the stable code, `detail` the sentence."""

    reason: Reason = Reason.NO_CREDENTIALS
    detail: str = ""


class ShieldPermissionError(ShieldRefusal, PermissionError):
    """Refused by policy or for want of credentials (EACCES)."""


class ShieldConnectionRefused(ShieldRefusal, ConnectionRefusedError):
    """The destination could not be reached (ECONNREFUSED, or the dial's own errno)."""


class ShieldTimeout(ShieldRefusal, TimeoutError):
    """The destination did not answer, or not complete the handshake, in time (ETIMEDOUT)."""


_TIMEOUTS = frozenset({Reason.CONNECT_TIMEOUT, Reason.HANDSHAKE_TIMEOUT})


def refusal(reason: Reason, detail: str) -> ShieldRefusal:
    """The exception a socket call raises for a refusal with `reason`."""
    cls: type[ShieldRefusal]
    if reason in _TIMEOUTS:
        cls, code = ShieldTimeout, errno.ETIMEDOUT
    elif reason is Reason.UPSTREAM_UNREACHABLE:
        cls, code = ShieldConnectionRefused, errno.ECONNREFUSED
    else:
        cls, code = ShieldPermissionError, errno.EACCES
    err = cls(code, f"netshield {reason.value}: {detail}")
    err.reason, err.detail = reason, detail
    return err


__all__ = [
    "ShieldConnectionRefused",
    "ShieldPermissionError",
    "ShieldRefusal",
    "ShieldTimeout",
    "refusal",
]
