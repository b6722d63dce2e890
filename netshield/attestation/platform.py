"""The simulated platform: the stand-in for a CPU's attestation hardware.

A platform has an id, a TCB level, a debug flag and an ECDSA P-256 signing key whose certificate
is issued by a simulated vendor root (the stand-in for the CPU vendor's root CA); the id, the TCB
level and the debug flag are all certified in that certificate (`PlatformClaims`), so a platform
cannot sign a claim its vendor did not certify. `Platform.quote` signs a quote body with the
platform key.

On disk a platform is a directory of three files: ``platform.json`` (id, TCB level, debug),
``platform.pem`` (the certificate) and ``platform.key`` (the private key, mode 0600).

Guarantees: the key never appears in a repr, a message or a log; `save_platform` never
overwrites an existing platform; `load_platform` returns only a consistent platform (the key
matches the certificate, the certificate's claims match platform.json) and otherwise raises a
one-line `NetshieldError` naming the offending file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from netshield.attestation.quote import (
    MAX_PLATFORM_ID_CHARS,
    QUOTE_FORMAT,
    UINT32_MAX,
    Quote,
    QuoteBody,
    body_problem,
    encode_body,
    encode_quote,
)
from netshield.errors import NetshieldError
from netshield.pki.ca import CertificateAuthority, issue_platform_certificate
from netshield.pki.certext import platform_claims_of
from netshield.pki.keys import generate_key, load_private_key, write_private_key, write_public_pem

PLATFORM_JSON = "platform.json"
PLATFORM_CERT = "platform.pem"
PLATFORM_KEY = "platform.key"
MAX_NEW_PLATFORM_ID_CHARS = 64
"""A new platform's id is its certificate's common name, which X.509 limits to 64 characters."""

_INIT_HINT = "re-create it with `netshield platform init`"


@dataclass(frozen=True)
class Platform:
    """A simulated attestation platform and its signing key."""

    platform_id: str
    tcb_level: int
    debug: bool
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)

    def quote(
        self, *, measurement: str, signer: str, product_id: int, svn: int, report_data: str
    ) -> bytes:
        """A signed quote over the given workload facts and this platform's id, TCB and debug
        flag, encoded for the wire. Raises ValueError if a field does not fit the schema."""
        body = QuoteBody(
            format=QUOTE_FORMAT,
            measurement=measurement,
            signer=signer,
            product_id=product_id,
            svn=svn,
            platform_id=self.platform_id,
            tcb_level=self.tcb_level,
            debug=self.debug,
            report_data=report_data,
        )
        problem = body_problem(body)
        if problem is not None:
            raise ValueError(f"cannot quote: {problem}")
        body_bytes = encode_body(body)
        signature = self.key.sign(body_bytes, ec.ECDSA(hashes.SHA256()))
        cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        return encode_quote(Quote(body, body_bytes, signature, cert_pem))


def create_platform(
    vendor: CertificateAuthority, *, platform_id: str, tcb_level: int, debug: bool, now: datetime
) -> Platform:
    """A new platform with a fresh key, certified by `vendor` for `platform_id`, `tcb_level` and
    `debug`."""
    problem = _platform_id_problem(platform_id, limit=MAX_NEW_PLATFORM_ID_CHARS)
    if problem is not None:
        raise NetshieldError(f"platform id {platform_id!r} {problem}", hint=_ID_HINT)
    if isinstance(tcb_level, bool) or not 0 <= tcb_level <= UINT32_MAX:
        raise NetshieldError(
            f"TCB level {tcb_level!r} is outside 0..{UINT32_MAX}", hint="pass a small integer"
        )
    key = generate_key()
    cert = issue_platform_certificate(
        vendor,
        public_key=key.public_key(),
        platform_id=platform_id,
        tcb_level=tcb_level,
        debug=debug,
        now=now,
    )
    return Platform(platform_id, tcb_level, debug, cert, key)


def save_platform(platform: Platform, directory: Path) -> list[Path]:
    """Write `platform` into `directory` (created if missing); returns the files written.

    Refuses (NetshieldError) if the directory already holds any of the platform files.
    """
    paths = [directory / PLATFORM_JSON, directory / PLATFORM_CERT, directory / PLATFORM_KEY]
    json_path, cert_path, key_path = paths
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NetshieldError(
            f"cannot create platform directory {str(directory)!r}: {exc.strerror or exc}",
            hint="choose a writable directory",
        ) from exc
    for path in paths:
        if path.exists() or path.is_symlink():
            raise NetshieldError(
                f"{str(path)!r} already exists: refusing to overwrite a platform",
                hint="choose another directory or remove the old platform first",
            )
    document = {
        "platform_id": platform.platform_id,
        "tcb_level": platform.tcb_level,
        "debug": platform.debug,
    }
    try:
        with json_path.open("x", encoding="utf-8") as f:
            f.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise NetshieldError(
            f"cannot write {str(json_path)!r}: {exc.strerror or exc}",
            hint="choose a writable directory",
        ) from exc
    write_public_pem(cert_path, platform.cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(key_path, platform.key)
    return paths


def load_platform(directory: Path) -> Platform:
    """The platform saved in `directory`; NetshieldError (one line, naming the file) if a file
    is missing, unreadable, malformed or inconsistent with the others."""
    json_path = directory / PLATFORM_JSON
    cert_path = directory / PLATFORM_CERT
    key_path = directory / PLATFORM_KEY
    platform_id, tcb_level, debug = _load_settings(json_path)
    cert = _load_cert(cert_path)
    try:
        claims = platform_claims_of(cert)
    except ValueError as exc:
        raise _file_error(cert_path, "carries malformed platform claims") from exc
    if claims is None:
        raise _file_error(cert_path, "carries no platform claims (not a platform certificate)")
    if (claims.platform_id, claims.tcb_level) != (platform_id, tcb_level):
        raise _file_error(
            json_path,
            f"says platform {platform_id!r} at TCB level {tcb_level} but {PLATFORM_CERT} "
            f"certifies {claims.platform_id!r} at TCB level {claims.tcb_level}",
        )
    if claims.debug is not debug:
        certified = "nothing about debug" if claims.debug is None else f"debug {claims.debug}"
        raise _file_error(
            json_path, f"says debug {debug} but {PLATFORM_CERT} certifies {certified}"
        )
    key = load_private_key(key_path)
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise _file_error(key_path, f"does not hold the key certified in {PLATFORM_CERT}")
    return Platform(platform_id, tcb_level, debug, cert, key)


_ID_HINT = f"use 1..{MAX_NEW_PLATFORM_ID_CHARS} printable characters, e.g. host-a"


def _platform_id_problem(platform_id: object, limit: int = MAX_PLATFORM_ID_CHARS) -> str | None:
    if not isinstance(platform_id, str) or not 0 < len(platform_id) <= limit:
        return f"is not a string of 1..{limit} characters"
    if not platform_id.isprintable():
        return "contains control or unprintable characters"
    return None


def _load_settings(path: Path) -> tuple[str, int, bool]:
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _file_error(path, f"cannot be read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _file_error(path, "is not valid JSON") from exc
    expected = {"platform_id", "tcb_level", "debug"}
    if not isinstance(document, dict) or set(document) != expected:
        raise _file_error(path, "must be a JSON object with platform_id, tcb_level and debug")
    platform_id, tcb_level, debug = (
        document["platform_id"],
        document["tcb_level"],
        document["debug"],
    )
    problem = _platform_id_problem(platform_id)
    if problem is not None:
        raise _file_error(path, f"platform_id {problem}")
    if isinstance(tcb_level, bool) or not isinstance(tcb_level, int):
        raise _file_error(path, "tcb_level is not an integer")
    if not 0 <= tcb_level <= UINT32_MAX:
        raise _file_error(path, f"tcb_level is outside 0..{UINT32_MAX}")
    if not isinstance(debug, bool):
        raise _file_error(path, "debug is not true or false")
    return platform_id, tcb_level, debug


def _load_cert(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _file_error(path, f"cannot be read: {exc.strerror or exc}") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise _file_error(path, "is not a PEM certificate") from exc
    if len(certs) != 1:
        raise _file_error(path, f"holds {len(certs)} certificates, expected exactly one")
    return certs[0]


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _file_error(path: Path, what: str) -> NetshieldError:
    return NetshieldError(f"platform file {str(path)!r} {what}", hint=_INIT_HINT)
