"""The process's file-descriptor limit (RLIMIT_NOFILE), raised at start so that the budgets hold.

A sidecar holds up to two descriptors per authenticated connection (the caller's and the
upstream's), one per pending handshake and a few of its own. The soft limit of a shell is often
1,024, which a flood of idle connections would exhaust long before `limits.max_handshakes` shed
any: accept() then fails with EMFILE and legitimate callers wait in the kernel's backlog. So the
sidecar raises its soft limit to the hard limit at start (what nginx's `worker_rlimit_nofile`
and HAProxy do), and warns when even the hard limit is below what its limits need.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger("netshield.net")

OWN_DESCRIPTORS = 64
"""Listeners, the admin API, the CAS client, the records file, the event loop and some slack."""


@dataclass(frozen=True)
class FdLimit:
    soft: int
    hard: int
    needed: int

    @property
    def enough(self) -> bool:
        return self.soft >= self.needed


def descriptors_needed(max_connections: int, max_handshakes: int) -> int:
    """Descriptors a sidecar may hold at its limits (refusals linger on top, briefly)."""
    return 2 * max_connections + max_handshakes + OWN_DESCRIPTORS


def raise_fd_limit(needed: int) -> FdLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit; warn (once) when it stays below `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            log.warning(
                "cannot raise the file descriptor limit from %d to %d: %s", soft, target, err
            )
    limit = FdLimit(soft=soft, hard=hard, needed=needed)
    if not limit.enough:
        log.warning(
            "the file descriptor limit is %d but limits.max_connections and limits.max_handshakes "
            "need about %d: raise the hard limit (ulimit -Hn, LimitNOFILE= in systemd, --ulimit "
            "nofile= in Docker) or lower the limits",
            soft,
            needed,
        )
    return limit


__all__ = ["OWN_DESCRIPTORS", "FdLimit", "descriptors_needed", "raise_fd_limit"]
