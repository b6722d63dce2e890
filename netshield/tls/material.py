"""Load TLS credentials into `ssl` contexts without writing private keys to disk; CAS contexts.

Responsibility: the stdlib `ssl` module only loads a certificate chain and key from files, so
this module hands it anonymous in-memory files (Linux `memfd_create`), and builds the TLS
contexts of the CAS API and its clients.
Guarantees: a private key handed to `load_cert_chain_in_memory` is never written to a file system
path; its memory file is closed before the call returns, success or not. Contexts verify peers
against the given CA bundle only (never the system store), need TLS 1.2 or newer, and use
strict X.509 verification. Loading problems are `NetshieldError`s with one-line messages.
"""

from __future__ import annotations

import os
import ssl

from cryptography.hazmat.primitives.asymmetric import ec

from netshield.errors import NetshieldError
from netshield.pki.keys import private_key_pem

MEMFD_KEY_NAME = "netshield-key"
MEMFD_CHAIN_NAME = "netshield-chain"


def load_cert_chain_in_memory(
    ctx: ssl.SSLContext, chain_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> None:
    """`ctx.load_cert_chain` from memory: chain and key go through memfds, closed in `finally`."""
    if not hasattr(os, "memfd_create"):
        raise NetshieldError(
            "loading TLS keys from memory needs Linux memfd_create, not available here", hint=""
        )
    chain_fd = _memfd(MEMFD_CHAIN_NAME, chain_pem)
    try:
        key_fd = _memfd(MEMFD_KEY_NAME, private_key_pem(key))
        try:
            ctx.load_cert_chain(f"/proc/self/fd/{chain_fd}", f"/proc/self/fd/{key_fd}")
        except ssl.SSLError as exc:
            raise _load_error(exc) from None
        except OSError as exc:
            raise NetshieldError(
                f"cannot load TLS credentials from memory: {exc.strerror or exc}", hint=""
            ) from None
        finally:
            os.close(key_fd)
    finally:
        os.close(chain_fd)


def cas_server_context(
    *, chain_pem: bytes, key: ec.EllipticCurvePrivateKey, client_ca_pem: bytes
) -> ssl.SSLContext:
    """The CAS API's server context: a client certificate is optional, verified if presented.

    Attestation requests come from sidecars without credentials; admin requests present an
    operator certificate issued by `client_ca_pem`, which the API layer then requires.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0  # its clients (sidecar agents, operators) never resume
    load_cert_chain_in_memory(ctx, chain_pem, key)
    _load_trust(ctx, client_ca_pem, "client CA bundle")
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def cas_client_context(
    *,
    ca_pem: bytes,
    chain_pem: bytes | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> ssl.SSLContext:
    """A client context for the CAS: verifies it against `ca_pem` (with host name check).

    With `chain_pem` and `key` (both or neither) it presents that certificate, e.g. the admin's.
    """
    if (chain_pem is None) != (key is None):
        raise ValueError("pass both chain_pem and key for a client certificate, or neither")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_trust(ctx, ca_pem, "CA bundle")
    if chain_pem is not None and key is not None:
        load_cert_chain_in_memory(ctx, chain_pem, key)
    return ctx


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _load_trust(ctx: ssl.SSLContext, pem: bytes, what: str) -> None:
    try:
        text = pem.decode("ascii")
        ctx.load_verify_locations(cadata=text)
    except (UnicodeDecodeError, ssl.SSLError, ValueError):
        raise NetshieldError(f"the {what} is not valid PEM certificate data", hint="") from None


def _load_error(exc: ssl.SSLError) -> NetshieldError:
    text = f"{exc.reason or ''} {exc}".upper()
    if "KEY_VALUES_MISMATCH" in text:
        message = "the private key does not match the first certificate of the chain"
    else:
        message = "the certificate chain is not valid PEM (or the key cannot be used with it)"
    return NetshieldError(message, hint="")
