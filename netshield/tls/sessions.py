"""Offering a saved TLS session to a new client connection without CPython's copy of it.

Why: CPython 3.11 to 3.13 copy a session whenever one is set on a connection (`wrap_bio(session=)`,
`SSLObject.session = ...`) by encoding it to DER and parsing it back, the peer's certificates
included: ~0.2 ms of CPU per resumed connection, about what the resumed handshake itself costs.
OpenSSL's own `SSL_SESSION_dup` makes the same private copy (so a connection that ends badly
never marks the saved session unusable for the next one) but shares the parsed certificates.

Responsibility: `session_offer()` returns a `SessionOffer` when this interpreter's `_ssl` layout
is known and a self-test on a throw-away connection confirms it, else None (callers then use
`wrap_bio(session=)`, which always works). `SessionOffer.offer(obj, session)` sets a copy of
`session` on a client `SSLObject` before its handshake; `detached` turns a session read from a
live connection into one to keep (once per ticket). Nothing else of OpenSSL is touched: the
handshake, verification and the session's use are OpenSSL's as with `wrap_bio(session=)`.
"""

from __future__ import annotations

import ctypes
import functools
import ssl
import sys
import sysconfig

__all__ = ["SessionOffer", "session_offer"]

_KNOWN = ((3, 11), (3, 12), (3, 13))
"""CPython versions whose `_ssl` objects start with the fields read here."""
_HEAD = 16  # PyObject_HEAD on 64-bit builds: refcount, type
_SSL_AT = _HEAD + 8  # PySSLSocket: PyObject_HEAD, PyObject *Socket, SSL *ssl, ...
_CTX_AT = _HEAD  # PySSLContext: PyObject_HEAD, SSL_CTX *ctx, ...
_SESSION_AT = _HEAD  # PySSLSession: PyObject_HEAD, SSL_SESSION *session, ...


def _pointer_at(obj: object, offset: int) -> int:
    return ctypes.c_void_p.from_address(id(obj) + offset).value or 0


class SessionOffer:
    """Sets sessions on client connections through the libssl this interpreter's `ssl` uses."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._dup = lib.SSL_SESSION_dup
        self._dup.argtypes, self._dup.restype = [ctypes.c_void_p], ctypes.c_void_p
        self._free = lib.SSL_SESSION_free
        self._free.argtypes, self._free.restype = [ctypes.c_void_p], None
        self._set = lib.SSL_set_session
        self._set.argtypes, self._set.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
        self._ctx_of = lib.SSL_get_SSL_CTX
        self._ctx_of.argtypes, self._ctx_of.restype = [ctypes.c_void_p], ctypes.c_void_p
        self._is_server = lib.SSL_is_server
        self._is_server.argtypes, self._is_server.restype = [ctypes.c_void_p], ctypes.c_int

    def offer(self, obj: ssl.SSLObject, session: ssl.SSLSession) -> None:
        """Offer a copy of `session` on `obj` (a client connection that has not started its
        handshake). Raises `ssl.SSLError` if OpenSSL refuses (it never does for a session of
        the same context)."""
        raw = getattr(obj, "_sslobj", obj)
        copy = self._dup(_pointer_at(session, _SESSION_AT))
        if not copy:
            raise ssl.SSLError("cannot copy the TLS session")
        try:
            if self._set(_pointer_at(raw, _SSL_AT), copy) != 1:
                raise ssl.SSLError("OpenSSL refused the TLS session")
        finally:
            self._free(copy)  # SSL_set_session keeps its own reference

    @staticmethod
    def detached(ctx: ssl.SSLContext, session: ssl.SSLSession) -> ssl.SSLSession:
        """A copy of `session` (read from a live connection, which shares it) that no connection
        uses: OpenSSL marks a session unusable when a connection using it ends without a TLS
        close, and `offer` copies what it is given, marks included. Costs one DER round trip:
        do it once per ticket kept, not per connection."""
        holder = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), session=session)
        copy = holder.session  # the fresh copy the setter made; `holder` never handshakes
        return copy if copy is not None else session

    def _layout_holds(self) -> bool:
        """One throw-away client connection: do the pointers read here point where they must?"""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
        pointer = _pointer_at(getattr(obj, "_sslobj", obj), _SSL_AT)
        context = _pointer_at(ctx, _CTX_AT)
        return bool(pointer and context) and self._ctx_of(pointer) == context and (
            self._is_server(pointer) == 0
        )


def _loaded_libssl() -> str | None:
    """The path of the libssl mapped into this process (the one `_ssl` links), if any."""
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").rpartition(" ")[2]
                if "/libssl.so" in path:
                    return path
    except OSError:
        return None
    return None


@functools.cache
def session_offer() -> SessionOffer | None:
    """The `SessionOffer` of this process, or None where it cannot be trusted."""
    if sys.implementation.name != "cpython" or sys.version_info[:2] not in _KNOWN:
        return None
    if ctypes.sizeof(ctypes.c_void_p) != 8 or hasattr(sys, "gettotalrefcount"):
        return None  # 32-bit or a debug build: another object header
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None  # free-threaded builds have a larger object header
    path = _loaded_libssl()
    if path is None:
        return None
    try:
        offer = SessionOffer(ctypes.CDLL(path))
    except (OSError, AttributeError):
        return None
    return offer if offer._layout_holds() else None
