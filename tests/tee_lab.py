"""Test hardware: SEV-SNP reports and SGX/TDX DCAP quotes built to the vendors' specifications
and signed with test keys, with their certificate chains and collateral.

These are not real evidence: their roots are test roots that a verifier trusts only when told
(`TrustAnchors.with_extra`, `--unsafe-evidence-roots`). They let the tests put chosen values
(report data bound to a CSR key, a debug bit, an old TCB) into otherwise valid evidence, which
real published vectors cannot offer. The layouts are the ones `netshield.attestation.evidence`
parses; the real vectors in `test_evidence_real.py` keep both honest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

NOW = datetime.fromisoformat("2026-03-01T12:00:00+00:00")
NOT_BEFORE = datetime.fromisoformat("2020-01-01T00:00:00+00:00")
NOT_AFTER = datetime.fromisoformat("2040-01-01T00:00:00+00:00")


# --- DER, just enough for the vendors' extensions ---------------------------------------------


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + value


def der_int(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _tlv(0x02, raw)


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        rest = arc
        chunk = [rest & 0x7F]
        rest >>= 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def der_seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def der_octets(value: bytes) -> bytes:
    return _tlv(0x04, value)


# --- certificates -------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def make_cert(
    subject: str,
    key: object,
    issuer: str,
    issuer_key: object,
    *,
    ca: bool,
    extensions: list[x509.ExtensionType] = (),  # type: ignore[assignment]
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
    serial: int | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    if isinstance(issuer_key, rsa.RSAPrivateKey):
        return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=_pss())
    return builder.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def raw_sig(key: ec.EllipticCurvePrivateKey, data: bytes, size: int = 32) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def p256_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


# --- SEV-SNP ------------------------------------------------------------------------------------

AMD = "1.3.6.1.4.1.3704.1."


@dataclass
class SnpLab:
    """A test ARK → ASK → VCEK chain for one chip, and reports signed by its VCEK."""

    name: str = "Test"
    chip_id: bytes = bytes(range(64))
    tcb: tuple[int, int, int, int] = (3, 0, 8, 115)  # bootloader, tee, snp, microcode
    ark_key: rsa.RSAPrivateKey = field(init=False)
    ark: x509.Certificate = field(init=False)
    ask: x509.Certificate = field(init=False)
    vcek_key: ec.EllipticCurvePrivateKey = field(init=False)
    vcek: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.ark_key = rsa.generate_private_key(65537, 2048)
        ask_key = rsa.generate_private_key(65537, 2048)
        self.ark = make_cert(
            f"ARK-{self.name}", self.ark_key, f"ARK-{self.name}", self.ark_key, ca=True
        )
        self.ask = make_cert(f"SEV-{self.name}", ask_key, f"ARK-{self.name}", self.ark_key, ca=True)
        self._ask_key = ask_key
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        self.vcek = self.vcek_for(self.tcb)

    def vcek_for(
        self,
        tcb: tuple[int, int, int, int],
        chip_id: bytes | None = None,
        *,
        vlek: bool = False,
        fmc: int | None = None,
        product: bytes = b"Milan-B0",
    ) -> x509.Certificate:
        """A VCEK (or, with `vlek`, a VLEK: a cspId instead of the chip's hwID) for `tcb`."""
        bl, tee, snp_spl, ucode = tcb

        def ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
            return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)

        exts = [
            ext(AMD + "1", der_int(1)),
            ext(AMD + "2", _tlv(0x16, product)),
            ext(AMD + "3.1", der_int(bl)),
            ext(AMD + "3.2", der_int(tee)),
            ext(AMD + "3.3", der_int(snp_spl)),
            *(ext(AMD + f"3.{i}", der_int(0)) for i in (4, 5, 6, 7)),
            ext(AMD + "3.8", der_int(ucode)),
            *([ext(AMD + "3.9", der_int(fmc))] if fmc is not None else []),
            ext(AMD + "5", _tlv(0x16, b"cloud-provider-1"))
            if vlek
            else ext(AMD + "4", chip_id or self.chip_id),
        ]
        return make_cert(
            "SEV-VLEK" if vlek else "SEV-VCEK",
            self.vcek_key,
            f"SEV-{self.name}",
            self._ask_key,
            ca=False,
            extensions=exts,  # type: ignore[arg-type]
        )

    @property
    def certificates_pem(self) -> bytes:
        return pem(self.vcek, self.ask, self.ark)

    def report(
        self,
        *,
        report_data: bytes = bytes(64),
        measurement: bytes = b"\x11" * 48,
        host_data: bytes = bytes(32),
        debug: bool = False,
        tcb: tuple[int, int, int, int] | None = None,
        guest_svn: int = 1,
        version: int = 2,
        signing_key: int = 0,
        turin_fmc: int | None = None,
    ) -> bytes:
        """A signed report; `turin_fmc` lays the TCB out as Turin does (FMC first) and sets the
        CPUID family 0x1A of a version-3 report."""
        bl, tee, snp_spl, ucode = tcb or self.tcb
        tcb_raw = bytes([bl, tee, 0, 0, 0, 0, snp_spl, ucode])
        if turin_fmc is not None:
            tcb_raw = bytes([turin_fmc, bl, tee, snp_spl, 0, 0, 0, ucode])
        policy = 0x30000 | (1 << 19 if debug else 0)
        r = bytearray(0x4A0)
        r[0:4] = version.to_bytes(4, "little")
        r[4:8] = guest_svn.to_bytes(4, "little")
        r[8:16] = policy.to_bytes(8, "little")
        r[0x34:0x38] = (1).to_bytes(4, "little")
        r[0x38:0x40] = tcb_raw
        r[0x48:0x4C] = (signing_key << 2).to_bytes(4, "little")
        r[0x50:0x90] = report_data
        r[0x90:0xC0] = measurement
        r[0xC0:0xE0] = host_data
        r[0x180:0x188] = tcb_raw
        if turin_fmc is not None:
            r[0x188:0x18B] = bytes([0x1A, 0x02, 0x01])
        r[0x1A0:0x1E0] = self.chip_id
        r[0x1E0:0x1E8] = tcb_raw
        r[0x1E8:0x1EB] = bytes([3, 55, 1])
        r[0x1F0:0x1F8] = tcb_raw
        rr, ss = decode_dss_signature(
            self.vcek_key.sign(bytes(r[:0x2A0]), ec.ECDSA(hashes.SHA384()))
        )
        r[0x2A0 : 0x2A0 + 72] = rr.to_bytes(72, "little")
        r[0x2A0 + 72 : 0x2A0 + 144] = ss.to_bytes(72, "little")
        return bytes(r)


# --- Intel DCAP ---------------------------------------------------------------------------------

SGX_EXT = "1.2.840.113741.1.13.1"
QE_MRSIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
FMSPC = bytes.fromhex("00906ed50000")
UP_TO_DATE_COMPONENTS = (5, 5, 2, 2, 4, 1, 0, 5) + (0,) * 8
OLD_COMPONENTS = (2, 2, 2, 2, 3, 1, 0, 3) + (0,) * 8
MRSIGNERSEAM = b"\x00" * 48


@dataclass
class DcapLab:
    """A test SGX root → PCK CA → PCK chain, a TCB Signing certificate, collateral signed by it,
    and SGX (v3) and TDX (v4) quotes from a test quoting enclave."""

    name: str = "Test"
    root_key: ec.EllipticCurvePrivateKey = field(init=False)
    root: x509.Certificate = field(init=False)
    pck_ca: x509.Certificate = field(init=False)
    tcb_signer: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        root_cn = f"{self.name} SGX Root CA"
        self.root = make_cert(root_cn, self.root_key, root_cn, self.root_key, ca=True)
        self.pck_ca_key = ec.generate_private_key(ec.SECP256R1())
        self.pck_ca = make_cert(
            f"{self.name} SGX PCK Platform CA", self.pck_ca_key, root_cn, self.root_key, ca=True
        )
        self.tcb_key = ec.generate_private_key(ec.SECP256R1())
        self.tcb_signer = make_cert(
            f"{self.name} SGX TCB Signing", self.tcb_key, root_cn, self.root_key, ca=False
        )
        self.pck_key = ec.generate_private_key(ec.SECP256R1())
        self.att_key = ec.generate_private_key(ec.SECP256R1())

    def pck_cert(
        self, components: tuple[int, ...] = UP_TO_DATE_COMPONENTS, pcesvn: int = 13
    ) -> x509.Certificate:
        tcb = der_seq(
            *(
                der_seq(der_oid(f"{SGX_EXT}.2.{i + 1}"), der_int(c))
                for i, c in enumerate(components)
            ),
            der_seq(der_oid(f"{SGX_EXT}.2.17"), der_int(pcesvn)),
            der_seq(der_oid(f"{SGX_EXT}.2.18"), der_octets(bytes(components))),
        )
        value = der_seq(
            der_seq(der_oid(f"{SGX_EXT}.1"), der_octets(b"\xab" * 16)),
            der_seq(der_oid(f"{SGX_EXT}.2"), tcb),
            der_seq(der_oid(f"{SGX_EXT}.3"), der_octets(b"\x00\x00")),
            der_seq(der_oid(f"{SGX_EXT}.4"), der_octets(FMSPC)),
            der_seq(der_oid(f"{SGX_EXT}.5"), _tlv(0x0A, b"\x00")),
        )
        ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXT), value)
        return make_cert(
            f"{self.name} SGX PCK Certificate",
            self.pck_key,
            f"{self.name} SGX PCK Platform CA",
            self.pck_ca_key,
            ca=False,
            extensions=[ext],  # type: ignore[list-item]
        )

    # -- bodies
    @staticmethod
    def sgx_body(
        *, report_data: bytes, mrenclave: bytes, mrsigner: bytes, prod: int, svn: int, debug: bool
    ) -> bytes:
        b = bytearray(384)
        b[0:16] = bytes(UP_TO_DATE_COMPONENTS)
        flags = 0x05 | (0x02 if debug else 0)
        b[48:56] = flags.to_bytes(8, "little")
        b[56:64] = (0x03).to_bytes(8, "little")
        b[64:96] = mrenclave
        b[128:160] = mrsigner
        b[256:258] = prod.to_bytes(2, "little")
        b[258:260] = svn.to_bytes(2, "little")
        b[320:384] = report_data
        return bytes(b)

    @staticmethod
    def td_body(*, report_data: bytes, mrtd: bytes, rtmrs: tuple[bytes, ...], debug: bool) -> bytes:
        b = bytearray(584)
        b[0:16] = bytes([5, 0, 3] + [0] * 13)  # TEE_TCB_SVN: module ISVSVN 5, major version 0
        b[64:112] = MRSIGNERSEAM
        b[120:128] = (0x10000000 | (1 if debug else 0)).to_bytes(8, "little")
        b[136:184] = mrtd
        for i, r in enumerate(rtmrs):
            b[328 + 48 * i : 376 + 48 * i] = r
        b[520:584] = report_data
        return bytes(b)

    def quote(
        self,
        kind: str = "sgx",
        *,
        report_data: bytes = bytes(64),
        mrenclave: bytes = b"\x22" * 32,
        mrsigner: bytes = b"\x33" * 32,
        prod: int = 1,
        svn: int = 3,
        mrtd: bytes = b"\x44" * 48,
        rtmrs: tuple[bytes, ...] = (b"\x50" * 48, b"\x51" * 48, b"\x52" * 48, b"\x53" * 48),
        debug: bool = False,
        pck: x509.Certificate | None = None,
        qe_svn: int = 8,
    ) -> bytes:
        tdx = kind == "tdx"
        version = 4 if tdx else 3
        header = bytearray(48)
        header[0:2] = version.to_bytes(2, "little")
        header[2:4] = (2).to_bytes(2, "little")
        header[4:8] = (0x81 if tdx else 0).to_bytes(4, "little")
        header[10:12] = (13).to_bytes(2, "little")
        header[12:28] = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
        body = (
            self.td_body(report_data=report_data, mrtd=mrtd, rtmrs=rtmrs, debug=debug)
            if tdx
            else self.sgx_body(
                report_data=report_data,
                mrenclave=mrenclave,
                mrsigner=mrsigner,
                prod=prod,
                svn=svn,
                debug=debug,
            )
        )
        signed = bytes(header) + body
        att = p256_point(self.att_key)
        auth = bytes(range(32))
        qe = bytearray(
            self.sgx_body(
                report_data=hashlib.sha256(att + auth).digest() + bytes(32),
                mrenclave=b"\x99" * 32,
                mrsigner=QE_MRSIGNER,
                prod=2 if tdx else 1,
                svn=qe_svn,
                debug=False,
            )
        )
        qe[48:64] = (0x11).to_bytes(8, "little") + bytes(8)  # INIT | PROVISIONKEY, as Intel's QE
        qe_sig = raw_sig(self.pck_key, bytes(qe))
        chain = pem(pck or self.pck_cert(), self.pck_ca, self.root)
        cert_data = (5).to_bytes(2, "little") + len(chain).to_bytes(4, "little") + chain
        qe_part = bytes(qe) + qe_sig + len(auth).to_bytes(2, "little") + auth + cert_data
        if tdx:
            qe_part = (6).to_bytes(2, "little") + len(qe_part).to_bytes(4, "little") + qe_part
        sig_data = raw_sig(self.att_key, signed) + att + qe_part
        return signed + len(sig_data).to_bytes(4, "little") + sig_data

    # -- collateral
    def tcb_info(
        self,
        kind: str = "sgx",
        *,
        issue: datetime = NOW - timedelta(days=1),
        days: int = 30,
        status: str = "UpToDate",
        module_signer: bytes = MRSIGNERSEAM,
    ) -> bytes:
        tdx = kind == "tdx"

        def level(comps: tuple[int, ...], st: str, pcesvn: int = 13) -> dict[str, object]:
            tcb: dict[str, object] = {
                "sgxtcbcomponents": [{"svn": c} for c in comps],
                "pcesvn": pcesvn,
            }
            if tdx:
                tcb["tdxtcbcomponents"] = [{"svn": c} for c in [5, 0, 3] + [0] * 13]
            return {
                "tcb": tcb,
                "tcbDate": "2025-01-01T00:00:00Z",
                "tcbStatus": st,
                "advisoryIDs": [] if st == "UpToDate" else ["INTEL-SA-00001"],
            }

        info: dict[str, object] = {
            "id": "TDX" if tdx else "SGX",
            "version": 3,
            "issueDate": issue.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nextUpdate": (issue + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "fmspc": FMSPC.hex(),
            "pceId": "0000",
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tcbLevels": [level(UP_TO_DATE_COMPONENTS, status), level(OLD_COMPONENTS, "OutOfDate")],
        }
        if tdx:
            info["tdxModule"] = {
                "mrsigner": module_signer.hex(),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            }
        return self._signed("tcbInfo", info)

    def qe_identity(
        self,
        kind: str = "sgx",
        *,
        issue: datetime = NOW - timedelta(days=1),
        days: int = 30,
        mrsigner: bytes = QE_MRSIGNER,
    ) -> bytes:
        ident = {
            "id": "TD_QE" if kind == "tdx" else "QE",
            "version": 2,
            "issueDate": issue.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nextUpdate": (issue + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": mrsigner.hex().upper(),
            "isvprodid": 2 if kind == "tdx" else 1,
            "tcbLevels": [
                {"tcb": {"isvsvn": 8}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
                {"tcb": {"isvsvn": 0}, "tcbDate": "2019-01-01T00:00:00Z", "tcbStatus": "OutOfDate"},
            ],
        }
        return self._signed("enclaveIdentity", ident)

    def _signed(self, key: str, value: dict[str, object]) -> bytes:
        inner = json.dumps(value, separators=(",", ":"))
        sig = raw_sig(self.tcb_key, inner.encode()).hex()
        return ('{"' + key + '":' + inner + ',"signature":"' + sig + '"}').encode()

    def pck_crl(
        self, revoked: list[int] = (), *, issue: datetime = NOW - timedelta(days=1), days: int = 30
    ) -> bytes:  # type: ignore[assignment]
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.pck_ca.subject)
            .last_update(issue)
            .next_update(issue + timedelta(days=days))
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(issue)
                .build()
            )
        return builder.sign(self.pck_ca_key, hashes.SHA256()).public_bytes(
            serialization.Encoding.DER
        )

    def write_collateral(
        self, directory: Path, kind: str = "sgx", *, now: datetime = NOW, **overrides: bytes
    ) -> Path:
        """TCB Info, QE Identity, issuer chain and PCK CRL, current at `now`; an override of
        b"" leaves that file out."""
        directory.mkdir(parents=True, exist_ok=True)
        issue = now - timedelta(days=1)
        files = {
            f"{kind}_tcb_info.json": self.tcb_info(kind, issue=issue),
            f"{kind}_qe_identity.json": self.qe_identity(kind, issue=issue),
            "tcb_signing_chain.pem": pem(self.tcb_signer, self.root),
            "pck_crl.der": self.pck_crl(issue=issue),
        }
        files.update(overrides)
        for name, data in files.items():
            if data:
                (directory / name).write_bytes(data)
        return directory


# --- configfs-tsm, as the kernel behaves --------------------------------------------------------


def cert_table(entries: list[tuple[str, bytes]]) -> bytes:
    """The GHCB certificate table (GUID, offset, length; zero entry; then the DER blobs)."""
    import uuid

    head = 24 * (len(entries) + 1)
    table, blobs = bytearray(), bytearray()
    for guid, der in entries:
        table += uuid.UUID(guid).bytes_le + (head + len(blobs)).to_bytes(4, "little")
        table += len(der).to_bytes(4, "little")
        blobs += der
    return bytes(table + bytes(24) + blobs)


class FakeTsm:
    """configfs-tsm's report directories as the kernel keeps them: writing inblob bumps the
    generation, reading outblob makes the report over it (with the lab's keys), auxblob holds
    the host's certificate table. Stands in for the kernel only; the quoter is the real one."""

    def __init__(
        self,
        provider: str,
        snp_lab: SnpLab | None = None,
        dcap_lab: DcapLab | None = None,
        *,
        measurement: bytes = b"\x11" * 48,
        racy: int = 0,
    ) -> None:
        self.provider, self.snp_lab, self.dcap_lab = provider, snp_lab, dcap_lab
        self.measurement = measurement
        self.entries: dict[Path, dict[str, bytes | int]] = {}
        self.racy = racy  # how many reads see another writer's generation bump
        self.removed: list[Path] = []

    def mkdir(self, path: Path) -> None:
        if path in self.entries:
            raise FileExistsError(str(path))
        self.entries[path] = {"generation": 0, "inblob": b""}

    def rmdir(self, path: Path) -> None:
        self.entries.pop(path)
        self.removed.append(path)

    def write(self, path: Path, data: bytes) -> None:
        entry = self.entries[path.parent]
        if path.name != "inblob" or len(data) != 64:
            raise OSError(22, "Invalid argument")
        entry["inblob"] = data
        entry["generation"] = int(entry["generation"]) + 1

    def read(self, path: Path) -> bytes:
        entry = self.entries[path.parent]
        inblob = bytes(entry["inblob"])  # type: ignore[arg-type]
        if path.name == "generation":
            if self.racy:
                self.racy -= 1
                entry["generation"] = int(entry["generation"]) + 1
            return f"{entry['generation']}\n".encode()
        if path.name == "provider":
            return f"{self.provider}\n".encode()
        if path.name == "outblob":
            if self.provider == "sev_guest":
                assert self.snp_lab is not None
                return self.snp_lab.report(report_data=inblob, measurement=self.measurement)
            assert self.dcap_lab is not None
            return self.dcap_lab.quote("tdx", report_data=inblob, mrtd=self.measurement)
        if path.name == "auxblob":
            assert self.snp_lab is not None
            lab = self.snp_lab
            return cert_table(
                [
                    (
                        "63da758d-e664-4564-adc5-f4b93be8accd",
                        lab.vcek.public_bytes(serialization.Encoding.DER),
                    ),
                    (
                        "4ab7b379-bbac-4fe4-a02f-05aef327c782",
                        lab.ask.public_bytes(serialization.Encoding.DER),
                    ),
                    (
                        "c0b406a4-a803-4952-9743-3fb6014cd0ae",
                        lab.ark.public_bytes(serialization.Encoding.DER),
                    ),
                ]
            )
        raise FileNotFoundError(str(path))
