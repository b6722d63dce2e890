"""The mesh's mutual-TLS contexts, built from one sidecar's `MeshCredentials`.

Responsibility: the `ssl.SSLContext` pair a sidecar uses: a server context for inbound mesh
connections and a client context for outbound ones, both presenting the sidecar's certificate.
Guarantees: both sides require and verify the peer's certificate against the credentials' trust
bundle only (never the system store), with strict X.509 checks; TLS 1.3 by default (1.2 only when
asked, and then only ECDHE key exchange with AEAD ciphers: `TLS12_CIPHERS`, never CBC, RSA key
transport or anything weaker). Session tickets only with `resumption`: then the server issues one
stateless TLS 1.3 ticket per full handshake, none when the client resumed (`TlsEndpoint` decides
from the ClientHello; the client keeps one per peer in `TlsContexts.tickets` and reuses it);
without it none at all (a TLS 1.3 server with OP_NO_TICKET alone still sends stateful tickets, so
`num_tickets` is 0 too: tickets nobody resumes cost ~180 µs each). With `tunnels` the server
selects `TUNNEL_ALPN` when a client offers it, and `tunnel_client` (the client context that
offers it) exists; a peer that offers or selects nothing gets one connection per stream, as a
sidecar without tunnels does. Host names are not
checked: the caller checks the peer's SPIFFE id after the handshake. The private key reaches
OpenSSL through `load_cert_chain_in_memory`, never a file.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from netshield.errors import NetshieldError
from netshield.tls.credentials import MeshCredentials
from netshield.tls.material import load_cert_chain_in_memory
from netshield.tls.peer import PeerCache
from netshield.tls.tickets import TicketStore

TLS12_CIPHERS = ":".join(
    f"ECDHE-{auth}-{cipher}"
    for auth in ("ECDSA", "RSA")
    for cipher in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305")
)
"""What a TLS 1.2 connection may negotiate (TLS 1.3's suites are all ECDHE/DHE with AEAD)."""
TUNNEL_ALPN = "netshield-tunnel/1"
"""The ALPN id of netshield's HTTP/2 CONNECT tunnels between sidecars."""


@dataclass(frozen=True)
class TlsContexts:
    """The server and client contexts of one set of credentials (swapped together on renewal)."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    credentials: MeshCredentials
    resumption: bool = False
    tickets: TicketStore = field(default_factory=TicketStore, compare=False)
    """Session tickets the client side received under these credentials (empty on a swap)."""
    peers: PeerCache = field(default_factory=PeerCache, compare=False)
    """Peer certificates parsed under these credentials."""
    tunnel_client: ssl.SSLContext | None = None
    """The client context that offers `TUNNEL_ALPN` (None: tunnels are off)."""


def server_context(
    creds: MeshCredentials,
    *,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    resumption: bool = False,
    tunnels: bool = False,
) -> ssl.SSLContext:
    """An inbound context: requires a client certificate from the trust domain. With
    `resumption`, one stateless ticket per handshake, encrypted under keys of this context
    only (a credential swap builds a new context: older tickets no longer resume). With
    `tunnels` it selects `TUNNEL_ALPN` for a client that offers it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, creds, min_version)
    if tunnels:
        ctx.set_alpn_protocols([TUNNEL_ALPN])
    if resumption:
        ctx.options &= ~ssl.OP_NO_TICKET  # stateless tickets: no server-side session cache
        ctx.num_tickets = 1
    else:
        ctx.num_tickets = 0
    return ctx


def client_context(
    creds: MeshCredentials,
    *,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    alpn: str | None = None,
) -> ssl.SSLContext:
    """An outbound context: verifies the server against the trust bundle, presents our chain;
    offers `alpn` when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    _common(ctx, creds, min_version)
    if alpn is not None:
        ctx.set_alpn_protocols([alpn])
    return ctx


def build_contexts(
    creds: MeshCredentials,
    *,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    resumption: bool = False,
    tunnels: bool = False,
) -> TlsContexts:
    """The contexts for `creds`; `NetshieldError` if the material cannot be loaded."""
    return TlsContexts(
        server=server_context(
            creds, min_version=min_version, resumption=resumption, tunnels=tunnels
        ),
        client=client_context(creds, min_version=min_version),
        credentials=creds,
        resumption=resumption,
        tunnel_client=client_context(creds, min_version=min_version, alpn=TUNNEL_ALPN)
        if tunnels
        else None,
    )


def _common(ctx: ssl.SSLContext, creds: MeshCredentials, min_version: ssl.TLSVersion) -> None:
    if min_version not in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        raise ValueError("the mesh accepts TLS 1.2 or 1.3 as its minimum version")
    ctx.minimum_version = min_version
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_verify_locations(cadata=creds.trust_bundle_pem.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError):
        raise NetshieldError(
            "the mesh trust bundle is not valid PEM certificate data", hint=""
        ) from None
    load_cert_chain_in_memory(ctx, creds.chain_pem, creds.key)
