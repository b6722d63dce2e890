"""Translating TLS failures into reason codes and operator sentences."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.reasons import Reason
from netshield.tls.failures import TlsFailure, translate


def ssl_error(reason: str, cls: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    err = cls(1, f"[SSL: {reason}] {reason.lower().replace('_', ' ')} (_ssl.c:1006)")
    err.reason = reason
    err.library = "SSL"
    return err


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    err.reason = "CERTIFICATE_VERIFY_FAILED"
    err.verify_code = code
    err.verify_message = message
    return err


@pytest.mark.parametrize(
    ("err", "server_side", "reason", "detail"),
    [
        (
            ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"),
            True,
            Reason.PEER_CERT_MISSING,
            "the client presented no certificate",
        ),
        (
            verify_error(20, "unable to get local issuer certificate"),
            True,
            Reason.PEER_CERT_UNTRUSTED,
            "not issued by this trust domain's mesh CA",
        ),
        (
            verify_error(10, "certificate has expired"),
            False,
            Reason.PEER_CERT_EXPIRED,
            "the server's certificate has expired",
        ),
        (
            verify_error(9, "certificate is not yet valid"),
            True,
            Reason.PEER_CERT_UNTRUSTED,
            "check both hosts' clocks",
        ),
        (
            verify_error(26, "unsupported certificate purpose"),
            True,
            Reason.PEER_CERT_UNTRUSTED,
            "OpenSSL: unsupported certificate purpose",
        ),
        (
            ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED"),
            False,
            Reason.TLS_HANDSHAKE_FAILED,
            "the server requires a client certificate",
        ),
        (
            ssl_error("TLSV1_ALERT_UNKNOWN_CA"),
            False,
            Reason.TLS_HANDSHAKE_FAILED,
            "does not trust this side's certificate",
        ),
        (
            ssl_error("SSLV3_ALERT_NO_RENEGOTIATION"),
            True,
            Reason.TLS_HANDSHAKE_FAILED,
            "the client sent alert no renegotiation",
        ),
        (
            ssl_error("TLSV1_ALERT_USER_CANCELLED"),
            False,
            Reason.PEER_AT_CAPACITY,
            "the server refused the connection: it is at capacity",
        ),
        (  # a client that cancels is no capacity refusal
            ssl_error("TLSV1_ALERT_USER_CANCELLED"),
            True,
            Reason.TLS_HANDSHAKE_FAILED,
            "the client sent alert user cancelled",
        ),
        (
            ssl_error("HTTP_REQUEST"),
            True,
            Reason.TLS_HANDSHAKE_FAILED,
            "the client spoke plain HTTP to a TLS port",
        ),
        (
            ssl_error("WRONG_VERSION_NUMBER"),
            True,
            Reason.TLS_HANDSHAKE_FAILED,
            "did not speak TLS (OpenSSL: wrong version number)",
        ),
        (
            ssl_error("UNEXPECTED_EOF_WHILE_READING", ssl.SSLEOFError),
            True,
            Reason.TLS_HANDSHAKE_FAILED,
            "closed the connection during the handshake",
        ),
        (
            ssl_error("SOMETHING_NEW"),
            True,
            Reason.TLS_HANDSHAKE_FAILED,
            "(OpenSSL: something new)",
        ),
        (
            TimeoutError(),
            True,
            Reason.HANDSHAKE_TIMEOUT,
            "did not complete the handshake in time",
        ),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            False,
            Reason.TLS_HANDSHAKE_FAILED,
            "the connection to the server broke: Connection reset by peer",
        ),
    ],
)
def test_openssl_failures_become_reasons_and_sentences(
    err: BaseException, server_side: bool, reason: Reason, detail: str
) -> None:
    failure = translate(err, server_side=server_side)
    assert failure.reason is reason
    assert detail in failure.detail


def test_local_verification_and_a_received_alert_are_told_apart() -> None:
    """Our check of their certificate is PEER_CERT_*; their refusal of ours is not."""
    ours = translate(verify_error(20, "unable to get local issuer certificate"), server_side=True)
    theirs = translate(ssl_error("TLSV1_ALERT_UNKNOWN_CA"), server_side=False)
    assert ours.reason is Reason.PEER_CERT_UNTRUSTED
    assert theirs.reason is Reason.TLS_HANDSHAKE_FAILED


@given(
    reason=st.text(max_size=40),
    message=st.text(max_size=40),
    kind=st.sampled_from(
        [ssl.SSLError, ssl.SSLEOFError, ssl.SSLSyscallError, ssl.SSLZeroReturnError]
    ),
)
def test_translate_is_total(reason: str, message: str, kind: type[ssl.SSLError]) -> None:
    err = kind(1, message)
    err.reason = reason or None  # type: ignore[assignment]
    failure = translate(err, server_side=True)
    assert isinstance(failure, TlsFailure) and failure.detail
    assert failure.reason.info.stage.value  # a known data-plane reason


@given(st.sampled_from([ValueError("x"), RuntimeError(), OSError(), KeyError("k")]))
def test_translate_accepts_any_exception(err: BaseException) -> None:
    assert translate(err, server_side=False).reason is Reason.TLS_HANDSHAKE_FAILED


@pytest.mark.parametrize(
    "name", ["DECRYPTION_FAILED_OR_BAD_RECORD_MAC", "RECORD_LAYER_FAILURE", "SOMETHING_NEW"]
)
def test_a_failure_after_the_handshake_is_a_tls_stream_error(name: str) -> None:
    during = translate(ssl_error(name), server_side=True)
    after = translate(ssl_error(name), server_side=True, after_handshake=True)
    assert during.reason is Reason.TLS_HANDSHAKE_FAILED
    assert after.reason is Reason.TLS_STREAM_ERROR
    assert after.detail == f"after the handshake: {during.detail}"


def test_a_refusal_of_our_certificate_after_the_handshake_stays_a_handshake_failure() -> None:
    """TLS 1.3: a client learns on its first read that the server refused its certificate."""
    late = translate(ssl_error("TLSV1_ALERT_UNKNOWN_CA"), server_side=False, after_handshake=True)
    assert late.reason is Reason.TLS_HANDSHAKE_FAILED and "unknown ca" in late.detail
