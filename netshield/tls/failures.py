"""Translate OpenSSL and transport failures of a TLS connection into reason codes and sentences.

Responsibility: the one place that reads OpenSSL's error reasons and X.509 verify codes. Each
failure becomes a `TlsFailure`: a stable data-plane `Reason` plus a sentence an operator can act
on ("the client presented no certificate", "the peer spoke plain HTTP to a TLS port").
Guarantees: `translate` is pure and total: any exception maps to some failure, never raises.
Failures of this side's own verification of the peer's certificate map to the PEER_CERT_* codes;
alerts received from the peer (it refused *our* certificate or parameters) and protocol garbage
map to TLS_HANDSHAKE_FAILED with OpenSSL's reason named in the detail; timeouts map to
HANDSHAKE_TIMEOUT. After the handshake (`after_handshake=True`) a failure that is not the peer
refusing this side's certificate or parameters (TLS 1.3 reports those on the first read) maps to
TLS_STREAM_ERROR: a record that failed its integrity check, a malformed record, an unexpected
message. A server that sends a fatal user_canceled alert before its ServerHello is refusing for
capacity (`CAPACITY_ALERT`, what a netshield sidecar at limits.max_connections answers): a client
maps it to PEER_AT_CAPACITY.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from netshield.errors import NetshieldError
from netshield.reasons import Reason

# X.509 verify codes (OpenSSL include/openssl/x509_vfy.h).
_V_CERT_NOT_YET_VALID = 9
_V_CERT_HAS_EXPIRED = 10
_UNTRUSTED_CODES = {
    2: "its issuer is unknown",  # UNABLE_TO_GET_ISSUER_CERT
    7: "its signature does not verify",  # CERT_SIGNATURE_FAILURE
    18: "it is self-signed",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "its chain ends in a root this side does not trust",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "it is not issued by this trust domain's mesh CA",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "it is not issued by this trust domain's mesh CA",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
}

CAPACITY_ALERT = bytes([21, 3, 3, 0, 2, 2, 90])
"""A plaintext TLS record: alert, fatal, user_canceled. A sidecar at capacity writes it to a new
connection instead of starting a handshake ("cancelling the handshake for some reason unrelated
to a protocol failure", RFC 8446 §6.1); OpenSSL never sends it on its own."""

# Alerts the peer sent us, by OpenSSL reason, and what they mean for this side.
_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the {peer} requires a client certificate and got none",
    "TLSV1_ALERT_UNKNOWN_CA": "the {peer} does not trust this side's certificate (alert unknown ca): "
    "is it in another trust domain?",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the {peer} says this side's certificate expired "
    "(alert certificate expired)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the {peer} refused this side's certificate (alert bad certificate)",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the {peer} refused this side's certificate "
    "(alert unsupported certificate)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the {peer} says this side's certificate is revoked",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the {peer} refused this side's certificate "
    "(alert certificate unknown)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the {peer} refused the TLS version (alert protocol version): "
    "check tls_min_version on both sides",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the {peer} aborted the handshake (alert handshake failure): "
    "no common parameters, or it wanted a certificate this side did not send",
    "TLSV1_ALERT_DECRYPT_ERROR": "the {peer} could not verify this side's handshake signature "
    "(alert decrypt error)",
    "TLSV1_ALERT_ACCESS_DENIED": "the {peer} denied access (alert access denied)",
    "TLSV1_ALERT_INTERNAL_ERROR": "the {peer} had an internal error (alert internal error)",
}

_PROTOCOL = {
    "HTTP_REQUEST": "the {peer} spoke plain HTTP to a TLS port",
    "HTTPS_PROXY_REQUEST": "the {peer} sent an HTTP proxy CONNECT request to a TLS port",
    "WRONG_VERSION_NUMBER": "the {peer} did not speak TLS (OpenSSL: wrong version number): "
    "plaintext or garbage on a TLS port",
    "UNSUPPORTED_PROTOCOL": "the {peer} offered only TLS versions below this side's minimum "
    "(OpenSSL: unsupported protocol)",
    "NO_SHARED_CIPHER": "the {peer} offered no cipher suite this side accepts",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "the {peer} offered no signature algorithm this side accepts",
    "UNEXPECTED_EOF_WHILE_READING": "the {peer} closed the connection during the handshake",
    "RECORD_LAYER_FAILURE": "the {peer} sent a malformed TLS record",
    "DECRYPTION_FAILED_OR_BAD_RECORD_MAC": "a TLS record from the {peer} failed its integrity "
    "check (OpenSSL: bad record mac): the connection was tampered with or corrupted",
}


@dataclass(frozen=True, slots=True)
class TlsFailure:
    """Why a TLS connection failed: a reason code and an operator sentence."""

    reason: Reason
    detail: str


def translate(
    err: BaseException, *, server_side: bool, after_handshake: bool = False
) -> TlsFailure:
    """The `TlsFailure` for an exception from a handshake or a TLS read/write."""
    failure = _translate(err, server_side=server_side)
    if not after_handshake or failure.reason is not Reason.TLS_HANDSHAKE_FAILED:
        return failure
    if isinstance(err, ssl.SSLError) and str(err.reason or "") in _ALERTS:
        return failure  # the peer refused us: TLS 1.3 says so after the client's handshake
    return TlsFailure(Reason.TLS_STREAM_ERROR, f"after the handshake: {failure.detail}")


def _translate(err: BaseException, *, server_side: bool) -> TlsFailure:
    peer = "client" if server_side else "server"
    if isinstance(err, ssl.SSLCertVerificationError):
        return _verify_failure(err, peer)
    if isinstance(err, TimeoutError):
        return TlsFailure(
            Reason.HANDSHAKE_TIMEOUT, f"the {peer} did not complete the handshake in time"
        )
    if isinstance(err, ssl.SSLError):
        return _ssl_failure(err, peer)
    if isinstance(err, ConnectionError | OSError):
        what = err.strerror or type(err).__name__
        return TlsFailure(
            Reason.TLS_HANDSHAKE_FAILED, f"the connection to the {peer} broke: {what}"
        )
    return TlsFailure(Reason.TLS_HANDSHAKE_FAILED, f"TLS failed: {type(err).__name__}: {err}")


def _verify_failure(err: ssl.SSLCertVerificationError, peer: str) -> TlsFailure:
    code = err.verify_code
    message = err.verify_message or "certificate verify failed"
    if code == _V_CERT_HAS_EXPIRED:
        return TlsFailure(Reason.PEER_CERT_EXPIRED, f"the {peer}'s certificate has expired")
    if code == _V_CERT_NOT_YET_VALID:
        return TlsFailure(
            Reason.PEER_CERT_UNTRUSTED,
            f"the {peer}'s certificate is not yet valid: check both hosts' clocks",
        )
    why = _UNTRUSTED_CODES.get(code, f"OpenSSL: {message}")
    return TlsFailure(Reason.PEER_CERT_UNTRUSTED, f"the {peer}'s certificate is not trusted: {why}")


def _ssl_failure(err: ssl.SSLError, peer: str) -> TlsFailure:
    name = str(err.reason or "")
    if name == "TLSV1_ALERT_USER_CANCELLED" and peer == "server":
        return TlsFailure(
            Reason.PEER_AT_CAPACITY,
            "the server refused the connection: it is at capacity (its limits.max_connections); "
            "retry later or add capacity there",
        )
    if name == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return TlsFailure(Reason.PEER_CERT_MISSING, f"the {peer} presented no certificate")
    if name in _ALERTS:
        return TlsFailure(Reason.TLS_HANDSHAKE_FAILED, _ALERTS[name].format(peer=peer))
    if name.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):
        alert = name.split("_ALERT_", 1)[1].lower().replace("_", " ")
        return TlsFailure(Reason.TLS_HANDSHAKE_FAILED, f"the {peer} sent alert {alert}")
    if name in _PROTOCOL:
        return TlsFailure(Reason.TLS_HANDSHAKE_FAILED, _PROTOCOL[name].format(peer=peer))
    if isinstance(err, ssl.SSLEOFError):
        return TlsFailure(
            Reason.TLS_HANDSHAKE_FAILED, _PROTOCOL["UNEXPECTED_EOF_WHILE_READING"].format(peer=peer)
        )
    if name:
        readable = name.lower().replace("_", " ")
        return TlsFailure(
            Reason.TLS_HANDSHAKE_FAILED, f"TLS error with the {peer} (OpenSSL: {readable})"
        )
    return TlsFailure(Reason.TLS_HANDSHAKE_FAILED, f"TLS error with the {peer}: {err}")


class TlsHandshakeError(NetshieldError):
    """A TLS handshake failed (or timed out); `failure` says why."""

    def __init__(self, failure: TlsFailure) -> None:
        super().__init__(failure.detail, reason=failure.reason)
        self.failure = failure
