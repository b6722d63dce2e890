"""Tests for netshield.tls.material: in-memory key loading and the CAS TLS contexts.

Handshakes are real: two threads, one loopback TCP connection, stdlib ssl on both ends.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from netshield.errors import NetshieldError
from netshield.identity import SpiffeId
from netshield.pki.ca import CertificateAuthority, create_root_ca, issue_certificate, spiffe_id_of
from netshield.pki.keys import certs_pem, generate_key, private_key_pem, write_private_key
from netshield.tls.material import (
    MEMFD_KEY_NAME,
    cas_client_context,
    cas_server_context,
    load_cert_chain_in_memory,
)

DOMAIN = "example.org"
ADMIN = SpiffeId.for_admin(DOMAIN, "alice")


@dataclass(frozen=True)
class Credentials:
    chain_pem: bytes
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pki:
    root: CertificateAuthority
    cas: Credentials
    admin: Credentials


def _issue(
    ca: CertificateAuthority, spiffe_id: SpiffeId, *, server: bool, now: datetime
) -> Credentials:
    key = generate_key()
    cert = issue_certificate(
        ca,
        public_key=key.public_key(),
        spiffe_id=spiffe_id,
        now=now,
        lifetime=timedelta(minutes=10),
        dns_names=["localhost"] if server else (),
        ip_addresses=["127.0.0.1"] if server else (),
        server_auth=server,
        client_auth=not server,
    )
    return Credentials(certs_pem([cert]), key)


def _make_pki() -> Pki:
    # Handshakes check validity against the real clock, so these certificates start now.
    now = datetime.now(UTC)
    root = create_root_ca(f"{DOMAIN} root", now=now)
    return Pki(
        root,
        _issue(root, SpiffeId.for_cas(DOMAIN), server=True, now=now),
        _issue(root, ADMIN, server=False, now=now),
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    return _make_pki()


@pytest.fixture(scope="module")
def other() -> Pki:
    """A second trust domain whose root has the very same name."""
    return _make_pki()


@dataclass
class Outcome:
    client_ok: bool
    server_ok: bool
    peer: x509.Certificate | None
    version: str | None
    errors: list[str]


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str = "localhost"
) -> Outcome:
    """One TLS connection over loopback: the server answers b'ok' once the handshake is done."""
    outcome = Outcome(False, False, None, None, [])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                outcome.errors.append(f"server accept: {exc}")
                return
            with conn:
                conn.settimeout(5)
                try:
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        der = tls.getpeercert(binary_form=True)
                        outcome.peer = x509.load_der_x509_certificate(der) if der else None
                        tls.sendall(b"ok")
                        outcome.server_ok = True
                except (ssl.SSLError, OSError) as exc:
                    outcome.errors.append(f"server: {exc}")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=hostname) as tls,
            ):
                outcome.version = tls.version()
                outcome.client_ok = tls.recv(2) == b"ok"
        except (ssl.SSLError, OSError) as exc:
            outcome.errors.append(f"client: {exc}")
        thread.join(5)
        assert not thread.is_alive()
    return outcome


def _server(pki: Pki, client_ca: Pki | None = None) -> ssl.SSLContext:
    return cas_server_context(
        chain_pem=pki.cas.chain_pem,
        key=pki.cas.key,
        client_ca_pem=(client_ca or pki).root.bundle_pem(),
    )


# --- CAS contexts -------------------------------------------------------------------------------


def test_cas_accepts_an_admin_client_certificate(pki: Pki) -> None:
    client = cas_client_context(
        ca_pem=pki.root.bundle_pem(), chain_pem=pki.admin.chain_pem, key=pki.admin.key
    )
    outcome = _handshake(_server(pki), client)
    assert outcome.client_ok, outcome.errors
    assert outcome.server_ok
    assert outcome.peer is not None
    assert spiffe_id_of(outcome.peer) == ADMIN
    assert outcome.version in ("TLSv1.2", "TLSv1.3")


def test_cas_accepts_a_client_without_certificate(pki: Pki) -> None:
    outcome = _handshake(_server(pki), cas_client_context(ca_pem=pki.root.bundle_pem()))
    assert outcome.client_ok, outcome.errors
    assert outcome.server_ok
    assert outcome.peer is None


def test_cas_refuses_an_admin_certificate_from_another_ca(pki: Pki, other: Pki) -> None:
    client = cas_client_context(
        ca_pem=pki.root.bundle_pem(), chain_pem=other.admin.chain_pem, key=other.admin.key
    )
    outcome = _handshake(_server(pki), client)
    assert not outcome.server_ok
    assert not outcome.client_ok
    assert outcome.peer is None
    assert any("server:" in error for error in outcome.errors)


def test_client_refuses_a_cas_certified_by_another_ca(pki: Pki, other: Pki) -> None:
    outcome = _handshake(_server(other), cas_client_context(ca_pem=pki.root.bundle_pem()))
    assert not outcome.client_ok
    assert not outcome.server_ok
    assert any("CERTIFICATE_VERIFY_FAILED" in error for error in outcome.errors)


def test_client_checks_the_cas_host_name(pki: Pki) -> None:
    client = cas_client_context(ca_pem=pki.root.bundle_pem())
    assert _handshake(_server(pki), client, hostname="127.0.0.1").client_ok
    outcome = _handshake(_server(pki), client, hostname="cas.elsewhere.example")
    assert not outcome.client_ok
    assert any("Hostname mismatch" in error for error in outcome.errors)


def test_contexts_refuse_tls_below_1_2(pki: Pki) -> None:
    client = cas_client_context(ca_pem=pki.root.bundle_pem())
    assert _handshake(_server(pki), client).client_ok
    old = cas_client_context(ca_pem=pki.root.bundle_pem())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: the point
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    assert not _handshake(_server(pki), old).client_ok


def test_context_settings(pki: Pki) -> None:
    server = _server(pki)
    assert server.verify_mode == ssl.CERT_OPTIONAL
    assert server.options & ssl.OP_NO_TICKET
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    client = cas_client_context(ca_pem=pki.root.bundle_pem())
    assert client.check_hostname
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not client.options & ssl.OP_NO_TICKET


def test_client_context_needs_chain_and_key_together(pki: Pki) -> None:
    cas_client_context(ca_pem=pki.root.bundle_pem(), chain_pem=None, key=None)
    with pytest.raises(ValueError, match="both"):
        cas_client_context(ca_pem=pki.root.bundle_pem(), chain_pem=pki.admin.chain_pem)
    with pytest.raises(ValueError, match="both"):
        cas_client_context(ca_pem=pki.root.bundle_pem(), key=pki.admin.key)


def test_contexts_refuse_a_ca_bundle_that_is_not_pem(pki: Pki) -> None:
    with pytest.raises(NetshieldError, match="CA bundle is not valid PEM"):
        cas_client_context(ca_pem=b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(NetshieldError, match="client CA bundle is not valid PEM"):
        cas_server_context(chain_pem=pki.cas.chain_pem, key=pki.cas.key, client_ca_pem=b"\xff")


# --- in-memory loading --------------------------------------------------------------------------


def _files_containing(needles: list[bytes], roots: list[Path], since: float) -> list[Path]:
    """Regular files under `roots` modified since `since` that contain any of `needles`."""
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for name in filenames:
                path = Path(dirpath, name)
                try:
                    info = path.lstat()
                    if not path.is_file() or info.st_mtime < since or info.st_size > 1 << 20:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                if any(needle in data for needle in needles):
                    found.append(path)
    return found


def _secrets(key: ec.EllipticCurvePrivateKey) -> list[bytes]:
    pem = private_key_pem(key)
    return [pem, pem.splitlines()[2], key.private_numbers().private_value.to_bytes(32, "big")]


def _memfds() -> list[str]:
    targets = []
    for entry in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{entry}"))
        except OSError:
            continue
    return [t for t in targets if t.startswith("/memfd:")]


@pytest.fixture
def scan_roots() -> Iterator[tuple[list[Path], float]]:
    yield [Path(tempfile.gettempdir()), Path.cwd()], time.time() - 1


def test_memfd_loading_leaves_no_key_on_disk_and_handshakes(
    pki: Pki, scan_roots: tuple[list[Path], float]
) -> None:
    roots, since = scan_roots
    fds_before = _memfds()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_cert_chain_in_memory(server, pki.cas.chain_pem, pki.cas.key)
    assert _memfds() == fds_before
    assert _files_containing(_secrets(pki.cas.key), roots, since) == []
    outcome = _handshake(server, cas_client_context(ca_pem=pki.root.bundle_pem()))
    assert outcome.client_ok, outcome.errors


def test_key_written_to_a_file_is_found_by_the_disk_scan(
    tmp_path: Path, pki: Pki, scan_roots: tuple[list[Path], float]
) -> None:
    # Control for the test above: the scan does find a key that did go to disk.
    roots, since = scan_roots
    write_private_key(tmp_path / "leaked.key", pki.cas.key)
    assert tmp_path / "leaked.key" in _files_containing(_secrets(pki.cas.key), roots, since)


def test_memfd_is_named_and_closed_while_loading(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_load = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, keyfile: str | None = None) -> None:
        assert keyfile is not None
        seen.extend([os.readlink(certfile), os.readlink(keyfile)])
        assert keyfile.startswith("/proc/self/fd/")
        real_load(self, certfile, keyfile)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    load_cert_chain_in_memory(
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), pki.cas.chain_pem, pki.cas.key
    )
    assert seen[1] == f"/memfd:{MEMFD_KEY_NAME} (deleted)"
    assert seen[1] not in _memfds()


def test_mismatched_key_is_refused_and_its_memfd_closed(pki: Pki) -> None:
    fds_before = _memfds()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(NetshieldError, match="does not match the first certificate"):
        load_cert_chain_in_memory(ctx, pki.cas.chain_pem, pki.admin.key)
    assert _memfds() == fds_before


def test_garbage_chain_is_refused(pki: Pki) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(NetshieldError, match="not valid PEM"):
        load_cert_chain_in_memory(ctx, b"not a certificate", pki.cas.key)
