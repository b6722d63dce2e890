"""Tests for netshield.pki.keys: key generation, 0600 key files, PEM helpers."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from netshield.errors import NetshieldError
from netshield.pki.ca import CertificateAuthority, create_root_ca
from netshield.pki.keys import (
    certs_pem,
    generate_key,
    is_p256,
    load_certificates,
    load_private_key,
    private_key_pem,
    public_key_der,
    write_private_key,
    write_public_pem,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_key_is_p256() -> None:
    key = generate_key()
    assert is_p256(key)
    assert is_p256(key.public_key())


def test_other_curves_and_key_types_are_not_p256() -> None:
    assert not is_p256(ec.generate_private_key(ec.SECP384R1()))
    assert not is_p256(ed25519.Ed25519PrivateKey.generate())
    assert not is_p256(b"not a key")


def test_write_private_key_creates_a_0600_file_that_loads_back(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "svc.key"
    write_private_key(path, key)
    assert _mode(path) == 0o600
    assert public_key_der(load_private_key(path)) == public_key_der(key)
    out = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "prime256v1" in out


def test_write_private_key_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private_key(tmp_path / "a.key", generate_key())
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.key") == 0o600


def test_write_private_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "svc.key"
    write_private_key(path, generate_key())
    before = path.read_bytes()
    with pytest.raises(NetshieldError, match=r"refusing to overwrite .*svc\.key"):
        write_private_key(path, generate_key())
    assert path.read_bytes() == before


def test_write_private_key_refuses_a_symlink_to_elsewhere(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "link.key").symlink_to(target)
    with pytest.raises(NetshieldError, match="refusing to overwrite"):
        write_private_key(tmp_path / "link.key", generate_key())
    assert not target.exists()


def test_write_private_key_names_the_file_when_the_directory_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "svc.key"
    with pytest.raises(NetshieldError, match=r"cannot create private key file .*missing/svc\.key"):
        write_private_key(path, generate_key())


def test_load_private_key_refuses_a_group_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "svc.key"
    write_private_key(path, generate_key())
    load_private_key(path)
    path.chmod(0o640)
    with pytest.raises(NetshieldError) as caught:
        load_private_key(path)
    assert str(caught.value).endswith(f"chmod 600 {path}")
    assert "0640" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_load_private_key_refuses_an_other_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "svc.key"
    write_private_key(path, generate_key())
    path.chmod(0o604)
    with pytest.raises(NetshieldError, match="chmod 600"):
        load_private_key(path)


def test_load_private_key_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NetshieldError, match=r"private key file .*nope\.key does not exist"):
        load_private_key(tmp_path / "nope.key")


def test_load_private_key_names_a_path_through_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(NetshieldError, match=r"cannot read private key file .*plain/svc\.key"):
        load_private_key(tmp_path / "plain" / "svc.key")


def _write_0600(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_load_private_key_refuses_a_p384_key(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = _write_0600(tmp_path / "p384.key", pem)
    with pytest.raises(NetshieldError, match=r"p384\.key does not hold an ECDSA P-256 key"):
        load_private_key(path)


def test_load_private_key_refuses_an_encrypted_key(tmp_path: Path) -> None:
    pem = generate_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = _write_0600(tmp_path / "enc.key", pem)
    with pytest.raises(NetshieldError, match=r"enc\.key is encrypted"):
        load_private_key(path)


def test_load_private_key_refuses_garbage(tmp_path: Path) -> None:
    path = _write_0600(tmp_path / "junk.key", b"-----BEGIN PRIVATE KEY-----\nzz\n")
    with pytest.raises(NetshieldError, match=r"junk\.key does not hold a PEM private key"):
        load_private_key(path)


def test_load_private_key_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(NetshieldError, match=r"dir\.key"):
        load_private_key(tmp_path / "dir.key")


def test_private_keys_never_appear_in_repr() -> None:
    ca = create_root_ca("root", now=NOW)
    secret = ca.key.private_numbers().private_value
    pem_body = private_key_pem(ca.key).decode().splitlines()[1]
    texts = [repr(ca), str(ca), repr(ca.key), str(ca.key)]
    assert all(str(secret) not in text and pem_body not in text for text in texts)
    assert all(f"{secret:x}" not in text for text in texts)
    # control: the secret is in the PEM, and the CA's repr does show its certificate
    assert pem_body in private_key_pem(ca.key).decode()
    assert "CN=root" in repr(ca)
    assert isinstance(ca, CertificateAuthority)


def test_public_key_der_is_the_same_for_a_key_and_its_public_half() -> None:
    key = generate_key()
    assert public_key_der(key) == public_key_der(key.public_key())
    assert public_key_der(key) != public_key_der(generate_key())
    loaded = serialization.load_der_public_key(public_key_der(key))
    assert isinstance(loaded, ec.EllipticCurvePublicKey)


def test_write_public_pem_creates_0644_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    write_public_pem(path, b"one")
    assert _mode(path) == 0o644
    write_public_pem(path, b"two")
    assert path.read_bytes() == b"two"
    assert _mode(path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem"]


def test_write_public_pem_names_the_file_on_failure(tmp_path: Path) -> None:
    with pytest.raises(NetshieldError, match=r"cannot write .*missing/ca\.pem"):
        write_public_pem(tmp_path / "missing" / "ca.pem", b"x")
    assert list(tmp_path.iterdir()) == []


def test_certificates_roundtrip_through_pem() -> None:
    first, second = create_root_ca("a", now=NOW).cert, create_root_ca("b", now=NOW).cert
    assert load_certificates(certs_pem([first, second])) == [first, second]
    assert certs_pem([]) == b""


def test_load_certificates_names_its_source_on_garbage() -> None:
    with pytest.raises(NetshieldError, match=r"bundle\.pem holds no valid PEM certificate"):
        load_certificates(b"not pem", source="bundle.pem")
