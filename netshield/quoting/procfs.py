"""Who is asking for a quote, and what its workload measures -- read from ``/proc``.

The caller is named by the kernel (SO_PEERCRED on the accepted unix socket: pid, uid, gid), not by
anything it sends. Its workload is measured inside its own root file system through
``/proc/<pid>/root``, at the path and with the command the platform's workload map names.

Guarantees of `measure_caller` (each refusal a `WorkloadError`, reason
`WORKLOAD_NOT_MEASURABLE`, with a sentence an operator can act on):

- a caller outside the platform's pid namespace (SO_PEERCRED reports pid 0) or gone is refused:
  the platform must share the pid namespace of the workloads it measures;
- a caller in a user namespace other than the platform's is refused: such a process may have
  mounted a tree of its own choosing over the workload path;
- no component of the workload path (inside the caller's root) may be a symlink: absolute link
  targets would resolve in the platform's root, not the caller's;
- the caller must be the same process after measuring as before (its start time is compared),
  so a pid reused mid-measurement is refused.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from netshield.attestation.measurement import measure
from netshield.attestation.workload import WorkloadConfig
from netshield.errors import NetshieldError
from netshield.reasons import Reason

_UCRED = struct.Struct("3i")  # pid, uid, gid
PROC = Path("/proc")


class WorkloadError(NetshieldError):
    """The platform could not measure the caller's workload."""

    reason = Reason.WORKLOAD_NOT_MEASURABLE


@dataclass(frozen=True, slots=True)
class PeerCred:
    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"pid {self.pid} uid {self.uid}"


def peer_cred(sock: socket.socket) -> PeerCred:
    """The kernel's record of who connected `sock` (a unix socket); OSError if unavailable."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return PeerCred(pid, uid, gid)


def measure_caller(caller: PeerCred, workload: WorkloadConfig, *, proc: Path = PROC) -> str:
    """The measurement of `workload` as the calling process sees it (see the module docstring)."""
    if caller.pid <= 0:
        raise WorkloadError(
            f"caller uid {caller.uid} is not visible in the platform's pid namespace",
            hint="run the platform in the host's pid namespace (compose `pid: host`, "
            "Kubernetes `hostPID: true`)",
        )
    started = _start_time(caller, proc)
    _same_user_namespace(caller, proc)
    root = proc / str(caller.pid) / "root"
    relative = PurePosixPath(workload.path).relative_to("/")
    here = root
    for part in relative.parts:
        here = here / part
        try:
            st = os.lstat(here)
        except OSError as err:
            raise WorkloadError(
                f"caller {caller}: cannot find {workload.path} in its root file system "
                f"({err.strerror or err})",
                hint="mount the workload at the path the platform's workload map names",
            ) from None
        if stat.S_ISLNK(st.st_mode):
            raise WorkloadError(
                f"caller {caller}: {'/' / PurePosixPath(*here.relative_to(root).parts)} is a "
                "symlink; the platform measures only real paths",
                hint="mount the workload at the path itself, not behind a symlink",
            )
    try:
        measurement = measure(root / relative, list(workload.cmd))
    except NetshieldError as err:
        raise WorkloadError(
            f"caller {caller}: {err.message.replace(str(root), '')}",
            hint="the platform measures every file of the workload; check its permissions",
        ) from None
    if _start_time(caller, proc) != started:
        raise WorkloadError(f"caller {caller} exited while its workload was measured")
    return measurement


def _start_time(caller: PeerCred, proc: Path) -> str:
    try:
        text = (proc / str(caller.pid) / "stat").read_text()
    except OSError:
        raise WorkloadError(f"caller {caller} is gone") from None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    return text.rpartition(")")[2].split()[19]


def _same_user_namespace(caller: PeerCred, proc: Path) -> None:
    try:
        theirs = os.stat(proc / str(caller.pid) / "ns" / "user")
        ours = os.stat(proc / "self" / "ns" / "user")
    except OSError as err:
        raise WorkloadError(
            f"caller {caller}: cannot read its namespaces ({err.strerror or err})",
            hint="the platform needs to inspect its callers (CAP_SYS_PTRACE when they run as "
            "another uid)",
        ) from None
    if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
        raise WorkloadError(
            f"caller {caller} runs in a user namespace of its own; it could have mounted "
            "anything over its workload",
            hint="run workloads in the platform's user namespace",
        )
