"""`TsmQuoter`: hardware evidence from the Linux kernel's configfs-tsm report interface.

In a confidential VM (Linux 6.7 or later, configfs mounted) ``/sys/kernel/config/tsm/report``
gives SEV-SNP attestation reports (provider ``sev_guest``) and TDX quotes (``tdx_guest``) over
64 bytes of report data the guest chooses. The ABI (Documentation/ABI/testing/configfs-tsm):
make a report directory, write ``inblob``, read ``outblob`` (and, for SEV-SNP, ``auxblob``:
the host's certificate table with the VCEK, ASK and ARK), read ``generation`` around the read
to notice another writer, remove the directory.

`TsmQuoter.quote` writes ``SHA-256(CSR key ‖ nonce) ‖ 32 zero bytes`` (the binding the CAS
checks) and returns the ``netshield-evidence/1`` envelope: for SEV-SNP the report with the
certificates of the auxblob as PEM, for TDX the quote (its PCK chain is inside). Every failure
is a `NetshieldError(PLATFORM_UNAVAILABLE)` naming the file, never a raw OSError. The kernel is
reached through `ReportFs`; blocking file calls run in a worker thread (a TDX quote takes the
host's quoting service a moment).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization

from netshield.attestation.evidence import dcap, snp
from netshield.attestation.evidence.chains import load_certificates
from netshield.attestation.evidence.claims import EvidenceType
from netshield.attestation.evidence.decode import evidence_envelope
from netshield.attestation.evidence.tdx import TdReport
from netshield.errors import NetshieldError, QuoteError
from netshield.reasons import Reason

DEFAULT_TSM = Path("/sys/kernel/config/tsm/report")
PROVIDERS: dict[str, EvidenceType] = {"sev_guest": "sev-snp", "tdx_guest": "tdx"}
RETRIES = 3


class ReportFs(Protocol):
    """The file operations on a configfs-tsm report directory."""

    def mkdir(self, path: Path) -> None: ...
    def rmdir(self, path: Path) -> None: ...
    def write(self, path: Path, data: bytes) -> None: ...
    def read(self, path: Path) -> bytes: ...


class ConfigFs:
    """The kernel's configfs, as files."""

    def mkdir(self, path: Path) -> None:
        path.mkdir(mode=0o700)

    def rmdir(self, path: Path) -> None:
        path.rmdir()

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()


@dataclass(frozen=True)
class Report:
    kind: EvidenceType
    outblob: bytes
    auxblob: bytes


class TsmQuoter:
    """Quotes from configfs-tsm under `root` (default /sys/kernel/config/tsm/report)."""

    def __init__(self, root: Path = DEFAULT_TSM, *, fs: ReportFs | None = None) -> None:
        self.root = root
        self._fs = fs or ConfigFs()
        self._platform_id: str | None = None
        self.last_measurement: str | None = None

    @property
    def platform_id(self) -> str | None:
        return self._platform_id

    @property
    def where(self) -> str:
        return f"configfs-tsm {self.root}"

    async def quote(self, report_data: str) -> bytes:
        try:
            inblob = bytes.fromhex(report_data) + bytes(32)
        except ValueError:
            raise ValueError("report_data is not hex") from None
        if len(inblob) != 64:
            raise ValueError("report_data must be 32 bytes (64 hex characters)")
        report = await asyncio.to_thread(self._report, inblob)
        return self._envelope(report)

    def _report(self, inblob: bytes) -> Report:
        entry = self.root / f"netshield-{os.getpid()}-{secrets.token_hex(4)}"
        fs = self._fs
        try:
            fs.mkdir(entry)
        except OSError as err:
            raise self._unavailable(
                f"cannot make a report in {self.root} ({err.strerror or err})"
            ) from None
        try:
            provider = fs.read(entry / "provider").decode("ascii", "replace").strip()
            kind = PROVIDERS.get(provider)
            if kind is None:
                raise self._unavailable(f"provider {provider[:40]!r} is not sev_guest or tdx_guest")
            for _ in range(RETRIES):
                fs.write(entry / "inblob", inblob)
                generation = fs.read(entry / "generation")
                outblob = fs.read(entry / "outblob")
                auxblob = fs.read(entry / "auxblob") if kind == "sev-snp" else b""
                if fs.read(entry / "generation") == generation:
                    break
            else:
                raise self._unavailable("another writer kept changing the report; retry later")
        except OSError as err:
            raise self._unavailable(f"report {entry.name}: {err.strerror or err}") from None
        finally:
            with contextlib.suppress(OSError):  # gone already; configfs removes nothing else
                fs.rmdir(entry)
        return Report(kind, outblob, auxblob)

    def _envelope(self, report: Report) -> bytes:
        try:
            if report.kind == "sev-snp":
                parsed = snp.parse_report(report.outblob)
                certs = b""
                if report.auxblob:
                    certs = b"".join(
                        c.public_bytes(serialization.Encoding.PEM)
                        for _, der in snp.parse_cert_table(report.auxblob)
                        for c in load_certificates(der)
                    )
                self._platform_id = "sev-snp:" + parsed.chip_id.hex()
                self.last_measurement = parsed.measurement.hex()
                return evidence_envelope("sev-snp", report.outblob, certs)
            quote = dcap.parse_quote(report.outblob)
            if quote.cert_type == dcap.CERT_PCK_CHAIN:
                pck = load_certificates(quote.cert_data.rstrip(b"\x00"))[0]
                self._platform_id = f"tdx:{dcap.pck_claims(pck).ppid.hex()}"
            if isinstance(quote.body, TdReport):
                self.last_measurement = quote.body.mrtd.hex()
            return evidence_envelope("tdx", report.outblob)
        except (QuoteError, ValueError, KeyError, IndexError) as err:
            raise self._unavailable(
                f"the kernel gave a {report.kind} report that does not parse ({err})"
            ) from None

    def _unavailable(self, what: str) -> NetshieldError:
        return NetshieldError(
            f"configfs-tsm at {self.root}: {what}", reason=Reason.PLATFORM_UNAVAILABLE
        )

    def __repr__(self) -> str:
        return f"TsmQuoter({str(self.root)!r})"
