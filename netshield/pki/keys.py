"""Private keys and PEM files: generate, serialize, write and load key and certificate material.

Responsibility: every ECDSA P-256 key netshield creates, and every PEM file it reads or writes.
Guarantees: private keys are only ever serialized by `private_key_pem`, for `write_private_key`
(a new file created 0600 with O_EXCL, never an overwrite) and for loading a TLS context from
memory; `load_private_key` refuses key files that group or other may access; every file problem
is a `NetshieldError` whose one-line message names the file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from netshield.errors import NetshieldError

MAX_PEM_FILE_BYTES = 1 << 20
"""Key and certificate files larger than this are refused unread (they are a few KiB)."""


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key, held in memory only."""
    return ec.generate_private_key(ec.SECP256R1())


def is_p256(key: object) -> bool:
    """Whether `key` is an EC P-256 private or public key."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return isinstance(key.curve, ec.SECP256R1)
    return False


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM. Only for 0600 files and in-memory TLS loading."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Create `path` (mode 0600, O_EXCL) holding the key; refuses to overwrite an existing file."""
    data = private_key_pem(key)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise NetshieldError(
            f"refusing to overwrite the existing private key file {path}",
            hint="move it away or choose another directory",
        ) from None
    except OSError as exc:
        raise _file_error(f"cannot create private key file {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise _file_error(f"cannot write private key file {path}: {exc.strerror}") from None


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM P-256 private key from a file only its owner may access."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _file_error(f"private key file {path} does not exist") from None
    except OSError as exc:
        raise _file_error(f"cannot read private key file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _file_error(f"private key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise _file_error(
                f"private key file {path} is accessible by group or other (mode {mode:04o}); "
                f"run: chmod 600 {path}"
            )
        source = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with source:
        try:
            data = _read_limited(source, path, "private key file")
        except OSError as exc:
            raise _file_error(f"cannot read private key file {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _file_error(
            f"private key file {path} is encrypted; netshield needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise _file_error(f"private key file {path} does not hold a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not is_p256(key):
        raise _file_error(f"private key file {path} does not hold an ECDSA P-256 key")
    return key


def public_key_der(key_or_public: ec.EllipticCurvePrivateKey | CertificatePublicKeyTypes) -> bytes:
    """The SubjectPublicKeyInfo DER of a public key, or of a private key's public half."""
    public = (
        key_or_public.public_key()
        if isinstance(key_or_public, ec.EllipticCurvePrivateKey)
        else key_or_public
    )
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_public_pem(path: Path, data: bytes) -> None:
    """Atomically create or replace `path` (mode 0644) with public PEM material."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _file_error(f"cannot write {path}: {exc.strerror}") from None


def read_pem_file(path: Path, what: str = "certificate file") -> bytes:
    """The bytes of a (small) PEM file; `NetshieldError` naming the file if it cannot be read."""
    try:
        with open(path, "rb") as source:
            return _read_limited(source, path, what)
    except FileNotFoundError:
        raise _file_error(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise _file_error(f"{what} {path} is a directory") from None
    except OSError as exc:
        raise _file_error(f"cannot read {what} {path}: {exc.strerror}") from None


def load_certificates(pem: bytes, *, source: str = "PEM data") -> list[x509.Certificate]:
    """Every certificate in `pem`, in order; `NetshieldError` naming `source` if there is none."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise _file_error(f"{source} holds no valid PEM certificate") from None


def certs_pem(certs: Iterable[x509.Certificate]) -> bytes:
    """The certificates as concatenated PEM, in the given order."""
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def _read_limited(source: IO[bytes], path: Path, what: str) -> bytes:
    data = source.read(MAX_PEM_FILE_BYTES + 1)
    if len(data) > MAX_PEM_FILE_BYTES:
        raise _file_error(f"{what} {path} is larger than {MAX_PEM_FILE_BYTES} bytes")
    return data


def _file_error(message: str) -> NetshieldError:
    # The default reason's hint is about CAS request bodies; file problems carry their own fix.
    return NetshieldError(message, hint="")
