"""Collateral: the vendor material a verifier needs beyond the evidence itself, read from disk.

An operator fetches it ahead of time into one directory (nothing is fetched at run time):
AMD's ARK/ASK chains and the VCEK or VLEK of each SEV-SNP machine; Intel's TCB Info per FMSPC
and QE Identity (PCS responses, ``{"tcbInfo": …, "signature": …}``), their issuer chains, the
PCK and root CA revocation lists; or a collateral bundle as `dcap-qvl` and PCCS clients write
it (one JSON object with ``tcb_info``, ``qe_identity``, ``pck_crl``, … members). Files may have
any name: each is recognised by its content, PEM or DER alike.

`collateral_from_files` is pure: (name, bytes) pairs in, a `Collateral` out, with the files it
could not use listed in `skipped` (so `netshield evidence verify` can say so), never an
exception. `read_collateral_dir` is the one function here that reads files: regular files under
the directory, at most `MAX_FILES` of at most `MAX_FILE_BYTES` each.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from netshield.attestation.evidence.chains import fingerprint, load_certificates, load_crl
from netshield.attestation.evidence.intel import (
    QeIdentity,
    TcbInfo,
    parse_qe_identity,
    parse_signed_json,
    parse_tcb_info,
    signed_from_parts,
)

MAX_FILES = 2000
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Collateral:
    certificates: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    tcb_infos: tuple[TcbInfo, ...] = ()
    qe_identities: tuple[QeIdentity, ...] = ()
    source: str = "no collateral"
    skipped: tuple[str, ...] = ()

    def plus_certificates(self, certs: Iterable[x509.Certificate]) -> Collateral:
        """This collateral with `certs` (e.g. those carried by the evidence) added first."""
        return Collateral(
            _unique((*certs, *self.certificates)),
            self.crls,
            self.tcb_infos,
            self.qe_identities,
            self.source,
            self.skipped,
        )

    def describe(self) -> str:
        return (
            f"{self.source}: {len(self.certificates)} certificates, {len(self.crls)} revocation "
            f"lists, {len(self.tcb_infos)} TCB Info, {len(self.qe_identities)} QE Identity"
        )


EMPTY = Collateral()


def collateral_from_files(files: Iterable[tuple[str, bytes]], *, source: str) -> Collateral:
    certs: list[x509.Certificate] = []
    crls: list[x509.CertificateRevocationList] = []
    tcb_infos: list[TcbInfo] = []
    qe_identities: list[QeIdentity] = []
    skipped: list[str] = []
    for name, data in files:
        try:
            _classify(data, certs, crls, tcb_infos, qe_identities)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as err:
            skipped.append(f"{name}: {str(err)[:120] or type(err).__name__}")
    return Collateral(
        _unique(certs), tuple(crls), tuple(tcb_infos), tuple(qe_identities), source, tuple(skipped)
    )


def read_collateral_dir(path: Path) -> Collateral:
    """Read every regular file under `path`; OSError if the directory cannot be read."""
    files: list[tuple[str, bytes]] = []
    skipped: list[str] = []
    for entry in sorted(p for p in path.rglob("*") if p.is_file()):
        if entry.name.startswith(".") or entry.name.endswith((".md", ".txt", ".sources")):
            continue
        if len(files) >= MAX_FILES:
            skipped.append(f"{entry}: more than {MAX_FILES} files; the rest were not read")
            break
        if entry.stat().st_size > MAX_FILE_BYTES:
            skipped.append(f"{entry}: larger than {MAX_FILE_BYTES} bytes")
            continue
        files.append((str(entry.relative_to(path)), entry.read_bytes()))
    got = collateral_from_files(files, source=f"collateral directory {path}")
    return Collateral(
        got.certificates,
        got.crls,
        got.tcb_infos,
        got.qe_identities,
        got.source,
        (*got.skipped, *skipped),
    )


def _classify(
    data: bytes,
    certs: list[x509.Certificate],
    crls: list[x509.CertificateRevocationList],
    tcb_infos: list[TcbInfo],
    qe_identities: list[QeIdentity],
) -> None:
    stripped = data.strip()
    if stripped.startswith(b"{"):
        doc = json.loads(stripped)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if "tcbInfo" in doc:
            tcb_infos.append(parse_tcb_info(parse_signed_json(stripped, "tcbInfo")))
        elif "enclaveIdentity" in doc:
            qe_identities.append(parse_qe_identity(parse_signed_json(stripped, "enclaveIdentity")))
        elif "tcb_info" in doc:
            _bundle(doc, certs, crls, tcb_infos, qe_identities)
        else:
            raise ValueError("a JSON file that is neither TCB Info, QE Identity nor a bundle")
        return
    if b"-----BEGIN X509 CRL-----" in data:
        crls.append(load_crl(data))
        if b"-----BEGIN CERTIFICATE-----" in data:
            certs.extend(load_certificates(data))
        return
    try:
        certs.extend(load_certificates(data))
    except ValueError:
        crls.append(load_crl(data))


def _bundle(
    doc: dict[str, object],
    certs: list[x509.Certificate],
    crls: list[x509.CertificateRevocationList],
    tcb_infos: list[TcbInfo],
    qe_identities: list[QeIdentity],
) -> None:
    def text(key: str) -> str:
        value = doc.get(key)
        if not isinstance(value, str):
            raise ValueError(f"the bundle's {key} is not a string")
        return value

    tcb_infos.append(
        parse_tcb_info(signed_from_parts(text("tcb_info"), text("tcb_info_signature")))
    )
    qe_identities.append(
        parse_qe_identity(signed_from_parts(text("qe_identity"), text("qe_identity_signature")))
    )
    for key in ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain"):
        if isinstance(doc.get(key), str):
            certs.extend(load_certificates(text(key).encode("ascii")))
    for key in ("pck_crl", "root_ca_crl"):
        if isinstance(doc.get(key), str):
            value = text(key).encode("ascii")
            crls.append(load_crl(value))


def _unique(certs: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    seen: dict[str, x509.Certificate] = {}
    for cert in certs:
        seen.setdefault(fingerprint(cert), cert)
    return tuple(seen.values())
