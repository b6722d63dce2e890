"""The CAS's view of the operator's collateral directory, re-read when its files change.

`CollateralFiles.current()` is what `EvidenceVerifier` calls per attestation: it looks at the
directory's file names, sizes and modification times, and reads the files again only when
they changed, so an operator refreshes Intel's TCB Info or a VCEK by replacing files, with no
restart. Reload never makes things worse: if the directory cannot be read, the last good
collateral stays in use and the failure is logged once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from netshield.attestation.evidence.collateral import EMPTY, Collateral, read_collateral_dir

log = logging.getLogger("netshield.cas")

Signature = tuple[tuple[str, int, int], ...]


class CollateralFiles:
    """The collateral under `directory` (None: no collateral, hardware evidence needs some)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._signature: Signature | None = None
        self._current = EMPTY
        self._failing = False
        if directory is not None:
            self.current()

    def current(self) -> Collateral:
        if self.directory is None:
            return EMPTY
        try:
            signature = self._stat()
            if signature != self._signature:
                collateral = read_collateral_dir(self.directory)
                self._signature, self._current = signature, collateral
                log.info("collateral loaded: %s", collateral.describe())
                for problem in collateral.skipped:
                    log.warning("collateral file not used: %s", problem)
            self._failing = False
        except OSError as err:
            if not self._failing:
                log.error(
                    "collateral directory %s unreadable, keeping the last good: %s",
                    self.directory,
                    err,
                )
            self._failing = True
        return self._current

    def _stat(self) -> Signature:
        assert self.directory is not None
        entries = []
        for path in sorted(self.directory.rglob("*")):
            if path.is_file():
                st = path.stat()
                entries.append((str(path), st.st_size, st.st_mtime_ns))
        return tuple(entries)
