"""What a TLS server can tell from a client's first flight before OpenSSL sees it: whether the
ClientHello offers a pre-shared key (a TLS 1.3 session ticket), i.e. whether the client came to
resume.

Responsibility: `offers_psk(first)` reads the first TLS record of a connection. Pure, no I/O.
Guarantees: never raises. It answers True only for a well-formed handshake record holding a
ClientHello whose extensions include `pre_shared_key` (41); False for anything else (another
record type, a malformed or fragmented ClientHello, no such extension); None while the first
record is not complete yet (at most `MAX_FIRST_RECORD` bytes are worth waiting for). The answer
only tunes ticket issuance (a resuming client already holds a reusable ticket); OpenSSL still
parses and verifies the real handshake, so a wrong answer costs a ticket, never security.
"""

from __future__ import annotations

__all__ = ["MAX_FIRST_RECORD", "PRE_SHARED_KEY", "offers_psk"]

PRE_SHARED_KEY = 41
"""The TLS extension type of `pre_shared_key` (RFC 8446 §4.2.11)."""
MAX_FIRST_RECORD = 5 + 2**14
"""A TLS record header and the largest plaintext record."""
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01


def offers_psk(first: bytes | bytearray | memoryview) -> bool | None:
    """Whether the ClientHello in `first` (the connection's first bytes) offers a PSK."""
    data = bytes(first[:MAX_FIRST_RECORD])
    if len(data) < 5:
        return None if data[:1] in (b"", bytes([_HANDSHAKE])) else False
    if data[0] != _HANDSHAKE:
        return False
    end = 5 + int.from_bytes(data[3:5], "big")
    if end > MAX_FIRST_RECORD:
        return False
    if len(data) < end:
        return None
    return _psk_in_client_hello(data[5:end])


def _psk_in_client_hello(body: bytes) -> bool:
    if len(body) < 4 or body[0] != _CLIENT_HELLO:
        return False
    hello_end = 4 + int.from_bytes(body[1:4], "big")
    if hello_end > len(body):
        return False  # fragmented over several records: not worth reassembling
    pos = 4 + 2 + 32  # legacy_version, random
    for length_bytes in (1, 2, 1):  # legacy_session_id, cipher_suites, compression_methods
        if pos + length_bytes > hello_end:
            return False
        pos += length_bytes + int.from_bytes(body[pos : pos + length_bytes], "big")
    if pos + 2 > hello_end:
        return False
    ext_end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    if ext_end > hello_end:
        return False
    pos += 2
    while pos + 4 <= ext_end:
        kind = int.from_bytes(body[pos : pos + 2], "big")
        size = int.from_bytes(body[pos + 2 : pos + 4], "big")
        if pos + 4 + size > ext_end:
            return False
        if kind == PRE_SHARED_KEY:
            return True
        pos += 4 + size
    return False
