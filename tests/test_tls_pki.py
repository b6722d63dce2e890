"""Mesh credentials, TLS contexts and peer info, on certificates from the real PKI.

Also the shared test PKI of the TLS/relay tests (`Pki`): a mesh root CA, a foreign root, and
`MeshCredentials` built exactly as the agent builds them from a CAS answer.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from netshield.casclient import Credentials
from netshield.identity import SpiffeId
from netshield.pki.ca import CertificateAuthority, create_root_ca, issue_certificate
from netshield.pki.certext import AttestationClaims
from netshield.pki.keys import certs_pem, generate_key, private_key_pem
from netshield.policyslice import PolicySlice
from netshield.tls.contexts import TLS12_CIPHERS, build_contexts, client_context, server_context
from netshield.tls.credentials import MeshCredentials
from netshield.tls.endpoint import HandshakeComplete, TlsEndpoint, TlsEvent
from netshield.tls.peer import peer_info_from_der

TD = "tls.netshield.test"
MEASUREMENT = "5e" * 32


@dataclass
class Pki:
    """A mesh root and a foreign root; issues mesh credentials like the CAS does."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    mesh: CertificateAuthority = field(init=False)
    foreign: CertificateAuthority = field(init=False)

    def __post_init__(self) -> None:
        # Roots made a day ago, so leaves can be back-dated (expired-certificate tests).
        self.mesh = create_root_ca("tls-test mesh CA", now=self.now - timedelta(days=1))
        self.foreign = create_root_ca("tls-test foreign CA", now=self.now - timedelta(days=1))

    def creds(
        self,
        service: str,
        *,
        ca: CertificateAuthority | None = None,
        issued: datetime | None = None,
        lifetime: timedelta = timedelta(minutes=10),
        epoch: int = 2,
        claims: bool = True,
    ) -> MeshCredentials:
        ca = ca or self.mesh
        key = generate_key()
        cert = issue_certificate(
            ca,
            public_key=key.public_key(),
            spiffe_id=SpiffeId.for_service(TD, service),
            now=issued or self.now,
            lifetime=lifetime,
            claims=AttestationClaims(MEASUREMENT, 4, epoch, "plat-1") if claims else None,
        )
        answer = Credentials(
            chain_pem=certs_pem([cert]),
            trust_bundle_pem=self.mesh.bundle_pem(),
            spiffe_id=str(SpiffeId.for_service(TD, service)),
            serial=f"{cert.serial_number:x}",
            not_after=cert.not_valid_after_utc.isoformat(),
            policy_version=4,
            epoch=epoch,
            policy=PolicySlice(service=service, trust_domain=TD).to_json(),
        )
        return MeshCredentials.from_attestation(answer, key)

    def expired(self, service: str) -> MeshCredentials:
        return self.creds(
            service, issued=self.now - timedelta(hours=2), lifetime=timedelta(minutes=5)
        )

    @staticmethod
    def write_files(creds: MeshCredentials, directory: Path) -> tuple[Path, Path, Path]:
        """chain, key, CA files for openssl s_client (test keys only)."""
        chain, key, ca = directory / "chain.pem", directory / "key.pem", directory / "ca.pem"
        chain.write_bytes(creds.chain_pem)
        key.write_bytes(private_key_pem(creds.key))
        key.chmod(0o600)
        ca.write_bytes(creds.trust_bundle_pem)
        return chain, key, ca


def pump_pair(a: TlsEndpoint, b: TlsEndpoint) -> tuple[list[TlsEvent], list[TlsEvent]]:
    """Shuttle ciphertext between two endpoints until quiet; the events each saw."""
    seen_a: list[TlsEvent] = []
    seen_b: list[TlsEvent] = []
    seen_a += a.start()
    seen_b += b.start()
    for _ in range(20):
        out_a, out_b = a.outgoing(), b.outgoing()
        if not out_a and not out_b:
            break
        if out_a:
            seen_b += b.receive(out_a)
        if out_b:
            seen_a += a.receive(out_b)
    return seen_a, seen_b


@pytest.fixture(scope="session")
def pki() -> Pki:
    return Pki()


# --- MeshCredentials ------------------------------------------------------------------------------


def test_credentials_carry_the_leaf_facts(pki: Pki) -> None:
    creds = pki.creds("orders", epoch=7)
    assert creds.spiffe_id == SpiffeId.for_service(TD, "orders")
    assert creds.epoch == 7 and creds.policy_version == 4 and creds.measurement == MEASUREMENT
    assert creds.not_after - creds.not_before == timedelta(minutes=11)  # 10m + clock skew
    assert creds.serial > 0 and creds.policy == PolicySlice(service="orders", trust_domain=TD)


def test_credentials_refuse_a_chain_for_another_key(pki: Pki) -> None:
    good = pki.creds("orders")
    slice_ = good.policy.to_json()
    answer = Credentials(good.chain_pem, good.trust_bundle_pem, "", "", "", 4, 2, slice_)
    assert MeshCredentials.from_attestation(answer, good.key).serial == good.serial
    with pytest.raises(ValueError, match="does not certify"):
        MeshCredentials.from_attestation(answer, generate_key())


def test_credentials_refuse_a_malformed_policy_slice(pki: Pki) -> None:
    good = pki.creds("orders")
    answer = Credentials(good.chain_pem, good.trust_bundle_pem, "", "", "", 4, 2, {})
    with pytest.raises(ValueError, match=r"malformed policy slice: .*policy\.service"):
        MeshCredentials.from_attestation(answer, good.key)


def test_credentials_refuse_a_leaf_without_claims(pki: Pki) -> None:
    with pytest.raises(ValueError, match="attestation claims"):
        pki.creds("orders", claims=False)


def test_credentials_refuse_garbage_chain(pki: Pki) -> None:
    answer = Credentials(b"not pem", pki.mesh.bundle_pem(), "", "", "", 4, 2, {})
    with pytest.raises(ValueError, match="no valid PEM"):
        MeshCredentials.from_attestation(answer, generate_key())


def test_credentials_repr_never_shows_the_key(pki: Pki) -> None:
    creds = pki.creds("orders")
    text = repr(creds) + str(creds)
    assert "key=" not in text and "PRIVATE" not in text
    assert private_key_pem(creds.key).decode() not in text
    assert isinstance(creds.key, ec.EllipticCurvePrivateKey)


def test_credentials_expire_at_not_after(pki: Pki) -> None:
    creds = pki.creds("orders")
    assert not creds.expired(creds.not_after - timedelta(seconds=1))
    assert creds.expired(creds.not_after)
    assert creds.expired(creds.not_after.replace(tzinfo=None) + timedelta(seconds=1))


# --- contexts -------------------------------------------------------------------------------------


def test_contexts_verify_peers_and_issue_no_session_tickets(pki: Pki) -> None:
    contexts = build_contexts(pki.creds("orders"))
    for ctx in (contexts.server, contexts.client):
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.options & ssl.OP_NO_TICKET
    assert contexts.server.num_tickets == 0 and not contexts.client.check_hostname
    server = TlsEndpoint(contexts.server, server_side=True)
    client = TlsEndpoint(client_context(pki.creds("frontend")), server_side=False)
    _, seen_server = pump_pair(client, server)
    assert any(isinstance(e, HandshakeComplete) for e in seen_server)
    # Nothing after the handshake: no NewSessionTicket (it would be ~150 bytes).
    assert server.outgoing() == b"" and client.outgoing() == b""


def test_a_server_with_op_no_ticket_alone_still_sends_a_ticket(pki: Pki) -> None:
    """Negative twin: why contexts.py also sets num_tickets = 0."""
    ctx = server_context(pki.creds("orders"))
    ctx.num_tickets = 2
    server = TlsEndpoint(ctx, server_side=True)
    client = TlsEndpoint(client_context(pki.creds("frontend")), server_side=False)
    client.start()
    server.receive(client.outgoing())
    client.receive(server.outgoing())
    server.receive(client.outgoing())
    assert len(server.outgoing()) > 100  # the stateful ticket(s)


def test_contexts_refuse_tls12_unless_asked(pki: Pki) -> None:
    creds = pki.creds("orders")
    legacy = client_context(pki.creds("frontend"), min_version=ssl.TLSVersion.TLSv1_2)
    legacy.maximum_version = ssl.TLSVersion.TLSv1_2
    strict = TlsEndpoint(server_context(creds), server_side=True)
    pump_pair(TlsEndpoint(legacy, server_side=False), strict)
    assert strict.failure is not None and "below this side's minimum" in strict.failure.detail
    lenient = TlsEndpoint(
        server_context(creds, min_version=ssl.TLSVersion.TLSv1_2), server_side=True
    )
    pump_pair(TlsEndpoint(legacy, server_side=False), lenient)
    assert lenient.failure is None and lenient.peer is not None
    assert lenient.peer.tls_version == "TLSv1.2"


def test_contexts_refuse_tls_below_12(pki: Pki) -> None:
    with pytest.raises(ValueError, match=r"1\.2 or 1\.3"):
        server_context(pki.creds("orders"), min_version=ssl.TLSVersion.TLSv1_1)


# --- peer info ------------------------------------------------------------------------------------


def test_peer_info_names_the_peer_service_and_claims(pki: Pki) -> None:
    server = TlsEndpoint(server_context(pki.creds("orders")), server_side=True)
    client = TlsEndpoint(client_context(pki.creds("frontend", epoch=9)), server_side=False)
    pump_pair(client, server)
    peer = server.peer
    assert peer is not None and peer.service == "frontend" and peer.epoch == 9
    assert peer.platform_id == "plat-1" and peer.tls_version == "TLSv1.3"
    assert peer.cipher.startswith("TLS_") and peer.resumed is False
    assert client.peer is not None and client.peer.service == "orders"


def test_peer_info_of_odd_certificates_has_no_identity(pki: Pki) -> None:
    info = peer_info_from_der(b"garbage", tls_version="TLSv1.3", cipher="X", resumed=False)
    assert info.spiffe_id is None and info.service is None and info.epoch is None
    cert = issue_certificate(
        pki.mesh,
        public_key=generate_key().public_key(),
        spiffe_id=SpiffeId(TD, "admin/alice"),
        now=pki.now,
        lifetime=timedelta(minutes=1),
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    info = peer_info_from_der(
        cert.public_bytes(Encoding.DER), tls_version="TLSv1.3", cipher="X", resumed=False
    )
    assert info.spiffe_id == SpiffeId(TD, "admin/alice") and info.service is None
    assert info.claims is None and info.platform_id is None and info.serial == cert.serial_number


@pytest.mark.parametrize("side", ["server", "client"])
def test_tls12_offers_only_ecdhe_with_aead_suites(pki: Pki, side: str) -> None:
    build = server_context if side == "server" else client_context
    ctx = build(pki.creds("orders"), min_version=ssl.TLSVersion.TLSv1_2)
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12)
    assert {c["name"] for c in tls12} == set(TLS12_CIPHERS.split(":"))
    # the twin: an SSLContext left at its defaults offers CBC suites for TLS 1.2
    default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).get_ciphers()
    assert any(c["protocol"] == "TLSv1.2" and not c["aead"] for c in default)
