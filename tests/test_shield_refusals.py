"""The shield's refusals are the OSErrors programs already handle, carrying the reason code."""

from __future__ import annotations

import errno

import pytest

from netshield.reasons import Reason
from netshield.shield.refusals import ShieldRefusal, refusal


@pytest.mark.parametrize(
    ("reason", "kind", "code"),
    [
        (Reason.NO_CREDENTIALS, PermissionError, errno.EACCES),
        (Reason.SHIELD_NOT_INHERITED, PermissionError, errno.EACCES),
        (Reason.PEER_NOT_AUTHORIZED, PermissionError, errno.EACCES),
        (Reason.UPSTREAM_UNREACHABLE, ConnectionRefusedError, errno.ECONNREFUSED),
        (Reason.CONNECT_TIMEOUT, TimeoutError, errno.ETIMEDOUT),
        (Reason.HANDSHAKE_TIMEOUT, TimeoutError, errno.ETIMEDOUT),
    ],
)
def test_each_refusal_is_the_oserror_a_program_expects(
    reason: Reason, kind: type[OSError], code: int
) -> None:
    err = refusal(reason, "why it was refused")
    assert isinstance(err, kind) and isinstance(err, ShieldRefusal) and err.errno == code
    assert err.reason is reason and err.detail == "why it was refused"
    assert str(err) == f"[Errno {code}] netshield {reason.value}: why it was refused"
