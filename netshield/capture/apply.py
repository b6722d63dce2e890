"""Apply, remove and read the capture rules with the real iptables tools.

Responsibility: pick the backend (iptables-nft or iptables-legacy, for IPv4 and IPv6), read the
tables with ``*-save``, and feed the scripts of `netshield.capture.iptables` (nat, and filter
for the strict egress filter) to ``*-restore --noflush`` (one atomic transaction per family).

Guarantees: a failure is a `CaptureError` with one line that names the command and what it said
(a missing tool, missing privileges, a kernel without the nat table); nothing is applied for a
family whose script was refused. Only netshield's own chains and jumps change.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from netshield.capture.iptables import (
    CREATED,
    TABLES,
    NatTable,
    install_script,
    parse_save,
    remove_script,
)
from netshield.capture.spec import CaptureSpec, Family
from netshield.errors import NetshieldError

Backend = Literal["iptables-nft", "iptables-legacy", "iptables"]
BACKENDS: tuple[Backend, ...] = ("iptables-nft", "iptables-legacy", "iptables")
TIMEOUT_SECONDS = 30


class CaptureError(NetshieldError):
    """The capture rules could not be read or applied."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint="")


@dataclass(frozen=True)
class Tools:
    """The save/restore commands of one backend and family."""

    backend: Backend
    family: Family

    @property
    def stem(self) -> str:
        base = "ip6tables" if self.family == 6 else "iptables"
        return base if self.backend == "iptables" else f"{base}-{self.backend.split('-', 1)[1]}"

    @property
    def save(self) -> str:
        return f"{self.stem}-save"

    @property
    def restore(self) -> str:
        return f"{self.stem}-restore"


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    exe = shutil.which(argv[0])
    if exe is None:
        raise CaptureError(
            f"{argv[0]}: command not found (install the iptables package, or pick another --backend)"
        )
    try:
        done = subprocess.run(
            [exe, *argv[1:]],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CaptureError(f"{argv[0]} did not finish within {TIMEOUT_SECONDS} s") from None
    except OSError as err:
        raise CaptureError(f"{argv[0]}: cannot run ({err.strerror or err})") from None
    if done.returncode != 0:
        said = " ".join(line.strip() for line in done.stderr.splitlines() if line.strip())
        said = said or f"exit status {done.returncode}"
        hint = ""
        if any(
            clue in said
            for clue in (
                "Permission denied",
                "Operation not permitted",
                "you must be root",
                "unable to initialize table",
            )
        ):
            hint = " (needs root, or CAP_NET_ADMIN in the network namespace)"
        raise CaptureError(f"{' '.join(argv)} failed: {said[:400]}{hint}")
    return done.stdout


def _rule_count(backend: Backend) -> int:
    """How many rules the backend's IPv4 tables hold (for auto-detection); 0 if unusable."""
    try:
        text = _run([Tools(backend, 4).save])
    except CaptureError:
        return 0
    return sum(1 for line in text.splitlines() if line.startswith("-A "))


def detect_backend(requested: str = "auto") -> Backend:
    """`requested` if it is a backend; for "auto", the one already holding rules (legacy only if
    it has rules and nft has none, as Istio decides), else iptables-nft, else what is installed."""
    for backend in BACKENDS:
        if requested == backend:
            return backend
    if requested != "auto":
        raise CaptureError(f"--backend: {requested!r} is not auto, {', '.join(BACKENDS)}")
    have = [
        b for b in BACKENDS if shutil.which(Tools(b, 4).restore) and shutil.which(Tools(b, 4).save)
    ]
    if not have:
        raise CaptureError(
            "no iptables-restore found: install the iptables package (iptables-nft or iptables-legacy)"
        )
    if "iptables-legacy" in have and "iptables-nft" in have:
        if _rule_count("iptables-legacy") and not _rule_count("iptables-nft"):
            return "iptables-legacy"
        return "iptables-nft"
    return have[0]


def current(tools: Tools) -> str:
    """The tables as the backend prints them now (all of them: ``-t nat`` would print an empty
    nat table even where none exists, hiding whether install creates it)."""
    return _run([tools.save])


def family_available(tools: Tools) -> bool:
    """Whether this family's tools exist and can read the nat table (IPv6 may be missing)."""
    if shutil.which(tools.save) is None or shutil.which(tools.restore) is None:
        return False
    try:
        current(tools)
    except CaptureError:
        return False
    return True


def _tables(tools: Tools, *, counters: bool = False) -> dict[str, NatTable]:
    text = _run([tools.save, "-c"]) if counters else current(tools)
    try:
        return {name: parse_save(text, name) for name in TABLES}
    except ValueError as err:
        raise CaptureError(f"{tools.save}: cannot read its output ({err})") from None


def _table(tools: Tools) -> NatTable:
    return _tables(tools)["nat"]


def tables(tools: Tools, *, counters: bool = False) -> dict[str, NatTable]:
    """The nat and filter tables as they are now (with packet counters if asked)."""
    return _tables(tools, counters=counters)


def install(spec: CaptureSpec, tools: Tools) -> bool:
    """Install (or replace) the rules of both tables in one restore; True if netshield rules
    were there before."""
    now = _tables(tools)
    scripts = [install_script(now[name], spec, tools.family) for name in TABLES]
    _run([tools.restore, "--noflush"], "".join(s for s in scripts if s))
    _drop_created(tools, now)
    return any(t.installed for t in now.values())


def remove(tools: Tools) -> bool:
    """Remove netshield's rules from both tables; True if there were any. A table that
    netshield's install created (iptables-nft makes tables on demand) is deleted again when it
    is left empty."""
    now = _tables(tools)
    scripts = [remove_script(now[name]) for name in TABLES]
    if not any(scripts):
        return False
    _run([tools.restore, "--noflush"], "".join(s for s in scripts if s))
    _drop_created(tools, now)
    return True


def _drop_created(tools: Tools, before: dict[str, NatTable]) -> None:
    """Delete the tables netshield created that are empty now (iptables-nft only)."""
    if tools.backend != "iptables-nft" or not shutil.which("nft"):
        return
    after = _tables(tools)
    for name, table in before.items():
        if CREATED in table.chains and after[name].present and after[name].empty:
            _run(["nft", "delete", "table", "ip6" if tools.family == 6 else "ip", name])


__all__ = [
    "BACKENDS",
    "Backend",
    "CaptureError",
    "Tools",
    "current",
    "detect_backend",
    "family_available",
    "install",
    "remove",
    "tables",
]
