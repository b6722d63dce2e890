"""Tests for netshield.pki.ca: roots, mesh leaves, platform certificates, loading a CA."""

from __future__ import annotations

import ipaddress
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netshield.errors import NetshieldError
from netshield.identity import SpiffeId
from netshield.pki.ca import (
    CLOCK_SKEW,
    CertificateAuthority,
    create_root_ca,
    issue_certificate,
    issue_platform_certificate,
    load_ca,
    spiffe_id_of,
)
from netshield.pki.certext import PLATFORM_CLAIMS_OID, AttestationClaims, platform_claims_of
from netshield.pki.keys import certs_pem, generate_key, write_private_key, write_public_pem

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ORDERS = SpiffeId.for_service("example.org", "orders")
LIFETIME = timedelta(minutes=10)


@pytest.fixture(scope="module")
def root() -> CertificateAuthority:
    return create_root_ca("example.org mesh root", now=NOW)


def _leaf(ca: CertificateAuthority, **kwargs: object) -> x509.Certificate:
    args: dict[str, object] = {
        "public_key": generate_key().public_key(),
        "spiffe_id": ORDERS,
        "now": NOW,
        "lifetime": LIFETIME,
    }
    args.update(kwargs)
    return issue_certificate(ca, **args)  # type: ignore[arg-type]


def _ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def _openssl_text(tmp_path: Path, cert: x509.Certificate) -> str:
    path = tmp_path / "cert.pem"
    write_public_pem(path, certs_pem([cert]))
    return subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _openssl_verify(tmp_path: Path, ca: CertificateAuthority, cert: x509.Certificate) -> bool:
    (tmp_path / "ca.pem").write_bytes(ca.bundle_pem())
    (tmp_path / "leaf.pem").write_bytes(certs_pem([cert]))
    at = str(int(NOW.timestamp()))
    ca_file, leaf_file = str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")
    result = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-attime", at, "-CAfile", ca_file, leaf_file],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


# --- roots --------------------------------------------------------------------------------------


def test_root_ca_is_a_self_signed_ca_openssl_accepts(
    tmp_path: Path, root: CertificateAuthority
) -> None:
    text = _openssl_text(tmp_path, root.cert)
    assert "CA:TRUE, pathlen:0" in text
    assert "Certificate Sign, CRL Sign" in text
    assert "X509v3 Subject Key Identifier" in text
    assert _ext(root.cert, x509.BasicConstraints).critical
    assert root.cert.issuer == root.cert.subject
    assert root.cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert root.cert.not_valid_after_utc == NOW + timedelta(days=3650)
    assert _openssl_verify(tmp_path, root, root.cert)


def test_root_ca_does_not_verify_under_another_root_with_the_same_name(
    tmp_path: Path, root: CertificateAuthority
) -> None:
    impostor = create_root_ca("example.org mesh root", now=NOW)
    assert not _openssl_verify(tmp_path, impostor, root.cert)


def test_root_ca_refuses_naive_time_and_empty_lifetime() -> None:
    create_root_ca("ok", now=NOW, lifetime=timedelta(days=1))
    with pytest.raises(ValueError, match="timezone-aware"):
        create_root_ca("x", now=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="lifetime"):
        create_root_ca("x", now=NOW, lifetime=timedelta(0))


def test_bundle_pem_is_the_ca_certificate(root: CertificateAuthority) -> None:
    assert x509.load_pem_x509_certificate(root.bundle_pem()) == root.cert


# --- mesh leaves --------------------------------------------------------------------------------


def test_leaf_has_the_spec_profile(tmp_path: Path, root: CertificateAuthority) -> None:
    claims = AttestationClaims("ab" * 32, 3, 1)
    cert = _leaf(root, claims=claims, serial=12345)
    assert cert.serial_number == 12345
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "orders"
    assert cert.issuer == root.cert.subject
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + LIFETIME
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert isinstance(constraints.value, x509.BasicConstraints)
    assert not constraints.value.ca
    usage = _ext(cert, x509.KeyUsage).value
    assert isinstance(usage, x509.KeyUsage)
    assert usage.digital_signature
    assert not usage.key_cert_sign
    eku = _ext(cert, x509.ExtendedKeyUsage).value
    assert isinstance(eku, x509.ExtendedKeyUsage)
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    ski = _ext(root.cert, x509.SubjectKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.digest
    text = _openssl_text(tmp_path, cert)
    assert "URI:spiffe://example.org/svc/orders" in text
    assert "CA:FALSE" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text


def test_leaf_verifies_under_its_root_with_openssl(
    tmp_path: Path, root: CertificateAuthority
) -> None:
    assert _openssl_verify(tmp_path, root, _leaf(root))


def test_leaf_does_not_verify_under_another_root_with_the_same_name(
    tmp_path: Path, root: CertificateAuthority
) -> None:
    impostor = create_root_ca(root.cert.subject.rfc4514_string().removeprefix("CN="), now=NOW)
    assert impostor.cert.subject == root.cert.subject
    assert not _openssl_verify(tmp_path, impostor, _leaf(root))


def test_leaf_has_exactly_one_uri_san_plus_given_dns_and_ip(root: CertificateAuthority) -> None:
    cert = _leaf(
        root, dns_names=["localhost", "cas.example.org"], ip_addresses=["127.0.0.1", "::1"]
    )
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(ORDERS)]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "cas.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    bare = _ext(_leaf(root), x509.SubjectAlternativeName).value
    assert isinstance(bare, x509.SubjectAlternativeName)
    assert len(list(bare)) == 1


def test_leaf_refuses_a_bad_ip_address(root: CertificateAuthority) -> None:
    with pytest.raises(ValueError):
        _leaf(root, ip_addresses=["localhost"])


def test_leaf_never_outlives_its_ca() -> None:
    short = create_root_ca("short", now=NOW, lifetime=timedelta(minutes=5))
    cert = _leaf(short, lifetime=timedelta(hours=1))
    assert cert.not_valid_after_utc == short.cert.not_valid_after_utc
    assert _leaf(short, lifetime=timedelta(minutes=1)).not_valid_after_utc == NOW + timedelta(
        minutes=1
    )


def test_expired_ca_refuses_to_issue() -> None:
    short = create_root_ca("short", now=NOW, lifetime=timedelta(minutes=5))
    _leaf(short, now=NOW + timedelta(minutes=4))
    with pytest.raises(NetshieldError, match="'short' expired at"):
        _leaf(short, now=NOW + timedelta(minutes=5))


def test_eku_follows_the_flags(root: CertificateAuthority) -> None:
    client_only = _ext(_leaf(root, server_auth=False), x509.ExtendedKeyUsage).value
    assert isinstance(client_only, x509.ExtendedKeyUsage)
    assert list(client_only) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    server_only = _ext(_leaf(root, client_auth=False), x509.ExtendedKeyUsage).value
    assert isinstance(server_only, x509.ExtendedKeyUsage)
    assert list(server_only) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(ValueError, match="server_auth, client_auth"):
        _leaf(root, server_auth=False, client_auth=False)


def test_random_serials_are_positive_63_bit_and_distinct(root: CertificateAuthority) -> None:
    serials = {_leaf(root).serial_number for _ in range(20)}
    assert len(serials) == 20
    assert all(0 < s < 2**63 for s in serials)


def test_explicit_serial_must_be_positive(root: CertificateAuthority) -> None:
    assert _leaf(root, serial=1).serial_number == 1
    with pytest.raises(ValueError, match="serial"):
        _leaf(root, serial=0)


def test_leaf_refuses_a_key_that_is_not_p256(root: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="P-256"):
        _leaf(root, public_key=ec.generate_private_key(ec.SECP384R1()).public_key())


def test_admin_leaf_is_named_for_the_admin(root: CertificateAuthority) -> None:
    admin = SpiffeId.for_admin("example.org", "alice")
    cert = _leaf(root, spiffe_id=admin, server_auth=False)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert spiffe_id_of(cert) == admin
    cas = _leaf(root, spiffe_id=SpiffeId.for_cas("example.org"))
    assert cas.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cas"


# --- spiffe_id_of ---------------------------------------------------------------------------------


def _cert_with_sans(names: list[x509.GeneralName] | None) -> x509.Certificate:
    key = generate_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + LIFETIME)
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_spiffe_id_of_reads_the_single_uri_san() -> None:
    cert = _cert_with_sans([x509.DNSName("localhost"), x509.UniformResourceIdentifier(str(ORDERS))])
    assert spiffe_id_of(cert) == ORDERS


@pytest.mark.parametrize(
    "names",
    [
        None,
        [x509.DNSName("orders.example.org")],
        [
            x509.UniformResourceIdentifier(str(ORDERS)),
            x509.UniformResourceIdentifier("spiffe://example.org/svc/other"),
        ],
        [x509.UniformResourceIdentifier("https://example.org/svc/orders")],
        [x509.UniformResourceIdentifier("spiffe://example.org/svc/../admin/x")],
    ],
    ids=["no-san", "dns-only", "two-uris", "not-spiffe", "relative-path"],
)
def test_spiffe_id_of_is_none_without_exactly_one_valid_uri(
    names: list[x509.GeneralName] | None,
) -> None:
    assert spiffe_id_of(_cert_with_sans(names)) is None


# --- platform certificates ------------------------------------------------------------------------


def test_platform_certificate_carries_its_claims(tmp_path: Path) -> None:
    vendor = create_root_ca("sim vendor root", now=NOW)
    cert = issue_platform_certificate(
        vendor,
        public_key=generate_key().public_key(),
        platform_id="plat-7",
        tcb_level=3,
        debug=False,
        now=NOW,
    )
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "plat-7"
    claims = platform_claims_of(cert)
    assert claims is not None
    assert (claims.platform_id, claims.tcb_level) == ("plat-7", 3)
    assert not cert.extensions.get_extension_for_oid(PLATFORM_CLAIMS_OID).critical
    usage = _ext(cert, x509.KeyUsage).value
    assert isinstance(usage, x509.KeyUsage)
    assert usage.digital_signature
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.ExtendedKeyUsage)
    assert cert.not_valid_after_utc == vendor.cert.not_valid_after_utc
    assert _openssl_verify(tmp_path, vendor, cert)


def test_platform_certificate_does_not_verify_under_another_vendor(tmp_path: Path) -> None:
    vendor = create_root_ca("sim vendor root", now=NOW)
    other = create_root_ca("sim vendor root", now=NOW)
    cert = issue_platform_certificate(
        vendor,
        public_key=generate_key().public_key(),
        platform_id="plat-7",
        tcb_level=3,
        debug=False,
        now=NOW,
    )
    assert not _openssl_verify(tmp_path, other, cert)


def test_platform_certificate_refuses_bad_claims() -> None:
    vendor = create_root_ca("v", now=NOW)
    key = generate_key().public_key()
    with pytest.raises(ValueError):
        issue_platform_certificate(
            vendor, public_key=key, platform_id="", tcb_level=1, debug=False, now=NOW
        )
    with pytest.raises(ValueError):
        issue_platform_certificate(
            vendor, public_key=key, platform_id="p", tcb_level=-1, debug=False, now=NOW
        )


# --- load_ca --------------------------------------------------------------------------------------


def _save(ca: CertificateAuthority, directory: Path) -> tuple[Path, Path]:
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    write_public_pem(cert_path, ca.bundle_pem())
    write_private_key(key_path, ca.key)
    return cert_path, key_path


def test_load_ca_roundtrips_and_can_issue(tmp_path: Path, root: CertificateAuthority) -> None:
    loaded = load_ca(*_save(root, tmp_path))
    assert loaded.cert == root.cert
    assert _openssl_verify(tmp_path, root, _leaf(loaded))


def test_load_ca_refuses_a_key_of_another_ca(tmp_path: Path, root: CertificateAuthority) -> None:
    cert_path, _ = _save(root, tmp_path)
    other_key = tmp_path / "other.key"
    write_private_key(other_key, generate_key())
    with pytest.raises(NetshieldError, match=r"other\.key does not belong to .*ca\.pem"):
        load_ca(cert_path, other_key)


def test_load_ca_names_a_missing_certificate_file(tmp_path: Path) -> None:
    with pytest.raises(NetshieldError, match=r"CA certificate file .*nope\.pem does not exist"):
        load_ca(tmp_path / "nope.pem", tmp_path / "nope.key")


def test_load_ca_refuses_a_leaf_certificate(tmp_path: Path, root: CertificateAuthority) -> None:
    write_public_pem(tmp_path / "leaf.pem", certs_pem([_leaf(root)]))
    with pytest.raises(NetshieldError, match=r"leaf\.pem is not a CA certificate"):
        load_ca(tmp_path / "leaf.pem", tmp_path / "ca.key")


def test_load_ca_refuses_garbage_and_bundles(tmp_path: Path, root: CertificateAuthority) -> None:
    (tmp_path / "junk.pem").write_bytes(b"junk")
    with pytest.raises(NetshieldError, match=r"junk\.pem holds no valid PEM certificate"):
        load_ca(tmp_path / "junk.pem", tmp_path / "ca.key")
    (tmp_path / "two.pem").write_bytes(certs_pem([root.cert, root.cert]))
    with pytest.raises(NetshieldError, match=r"two\.pem holds 2 certificates"):
        load_ca(tmp_path / "two.pem", tmp_path / "ca.key")


def test_load_ca_refuses_a_group_readable_key(tmp_path: Path, root: CertificateAuthority) -> None:
    cert_path, key_path = _save(root, tmp_path)
    key_path.chmod(0o640)
    with pytest.raises(NetshieldError, match="chmod 600"):
        load_ca(cert_path, key_path)
