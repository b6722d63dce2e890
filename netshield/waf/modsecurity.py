"""A binding of ModSecurity v3's C API (Debian's ``libmodsecurity3``) through ctypes.

Why this binding and not the ``libmodsecurity`` wheel: ctypes releases the GIL for the whole of
every call that evaluates rules or takes a body (the short calls keep it, see `_HELD`), so
rule evaluation runs in parallel with the event loop and with other
inspections (measured: two threads inspect a 64 KiB form 1.7x as fast as one), and the library
is the distribution's, patched by its security updates. The wheel holds the GIL for the whole
evaluation and bundles frozen copies of OpenSSL and libxml2.

`ModSecurity` owns one engine (``msc_init``) and its rules (``msc_rules_add``); `transaction`
runs one request (and optionally its response) through the phases and returns the messages the
rules logged and the intervention, if any. Rule text is handed over as given; the caller builds
it (`netshield.waf.crs`).

Guarantees: a library that cannot be loaded, or rules that do not parse, raise
`ModSecurityUnavailable` with one sentence saying why (never a ctypes error); phases 1-2 run
for every request, 3-4 when a response is given, the logging phase (5) never (see
`transaction`); a `ModSecurity`
may be used from several threads at once, one transaction per thread (ModSecurity's rules are
read-only after loading, a transaction is never shared); the log callback only appends to the
transaction's own list.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_c = ctypes.c_void_p
_LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)
LIBRARY_NAMES = ("libmodsecurity.so.3", "libmodsecurity.so")


class ModSecurityUnavailable(Exception):
    """libmodsecurity cannot be loaded, or the rules cannot be loaded into it."""


class _Intervention(ctypes.Structure):
    _fields_ = (
        ("status", ctypes.c_int),
        ("pause", ctypes.c_int),
        ("url", ctypes.c_void_p),
        ("log", ctypes.c_void_p),
        ("disruptive", ctypes.c_int),
    )


@dataclass(frozen=True)
class Intervention:
    status: int
    log: str


@dataclass
class Outcome:
    """What one transaction produced: the rules' log lines (in order) and the disruptive
    intervention of the request phases and, if inspected, of the response phases."""

    messages: list[str] = field(default_factory=list)
    request: Intervention | None = None
    response: Intervention | None = None


_SIZE, _TEXT, _NUM = ctypes.c_size_t, ctypes.c_char_p, ctypes.c_int
# The calls that evaluate rules or handle whole bodies: called with the GIL released.
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "msc_init": (_c, []),
    "msc_who_am_i": (_TEXT, [_c]),
    "msc_set_connector_info": (None, [_c, _TEXT]),
    "msc_set_log_cb": (None, [_c, _LOG_CB]),
    "msc_create_rules_set": (_c, []),
    "msc_rules_add": (_NUM, [_c, _TEXT, ctypes.POINTER(ctypes.c_char_p)]),
    "msc_rules_cleanup": (_NUM, [_c]),
    "msc_process_request_headers": (_NUM, [_c]),
    "msc_append_request_body": (_NUM, [_c, _TEXT, _SIZE]),
    "msc_process_request_body": (_NUM, [_c]),
    "msc_process_response_headers": (_NUM, [_c, _NUM, _TEXT]),
    "msc_append_response_body": (_NUM, [_c, _TEXT, _SIZE]),
    "msc_process_response_body": (_NUM, [_c]),
    "msc_process_logging": (_NUM, [_c]),
    "msc_transaction_cleanup": (None, [_c]),
    "msc_cleanup": (None, [_c]),
}
# The short calls of a transaction (each a few microseconds, bounded by the request head's size
# limit): called holding the GIL, through a `ctypes.PyDLL` handle of the same library, which
# saves the release and re-acquisition of the GIL around each — under load, each one is a
# chance for the worker thread to wait for the event loop's thread and be switched out.
_HELD: dict[str, tuple[object, list[object]]] = {
    "msc_new_transaction_with_id": (_c, [_c, _c, _TEXT, _c]),
    "msc_process_connection": (_NUM, [_c, _TEXT, _NUM, _TEXT, _NUM]),
    "msc_process_uri": (_NUM, [_c, _TEXT, _TEXT, _TEXT]),
    "msc_add_n_request_header": (_NUM, [_c, _TEXT, _SIZE, _TEXT, _SIZE]),
    "msc_add_n_response_header": (_NUM, [_c, _TEXT, _SIZE, _TEXT, _SIZE]),
    "msc_intervention": (_NUM, [_c, ctypes.POINTER(_Intervention)]),
}


def _declare(lib: ctypes.CDLL, signatures: dict[str, tuple[object, list[object]]]) -> None:
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes


def held_library(lib: ctypes.CDLL) -> Any:
    """The same library as a ctypes.PyDLL (calls keep the GIL) for the short calls (`_HELD`)."""
    held = ctypes.PyDLL(lib._name)
    _declare(held, _HELD)
    return held


def load_library(names: Iterable[str] = LIBRARY_NAMES) -> ctypes.CDLL:
    """Load libmodsecurity v3 (ctypes.CDLL: every call releases the GIL)."""
    problems = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            _declare(lib, _SIGNATURES)
            held_library(lib)
        except (OSError, AttributeError) as err:
            problems.append(str(err))
            continue
        return lib
    raise ModSecurityUnavailable(
        "libmodsecurity v3 is not installed (apt-get install libmodsecurity3): "
        + "; ".join(problems)
    )


class ModSecurity:
    """One ModSecurity engine with one rule set loaded."""

    def __init__(self, rules: str, *, lib: ctypes.CDLL | None = None) -> None:
        self._lib = lib or load_library()
        self._held = held_library(self._lib)
        self._ids = itertools.count(1)
        self._engine = self._lib.msc_init()
        self._lib.msc_set_connector_info(self._engine, b"netshield")
        self._local = threading.local()
        self._callback = _LOG_CB(self._on_log)  # kept alive as long as the engine
        self._lib.msc_set_log_cb(self._engine, self._callback)
        self._rules = self._lib.msc_create_rules_set()
        error = ctypes.c_char_p()
        loaded = self._lib.msc_rules_add(self._rules, rules.encode(), ctypes.byref(error))
        if loaded < 0:
            reason = (error.value or b"unknown error").decode(errors="replace").strip()
            self.close()
            raise ModSecurityUnavailable(f"ModSecurity refused the rules: {reason}")
        self.rule_count = loaded
        self.version = (self._lib.msc_who_am_i(self._engine) or b"").decode()

    def _on_log(self, _data: object, message: bytes | None) -> None:
        sink = getattr(self._local, "sink", None)
        if sink is not None and message:
            sink.append(message.decode("utf-8", errors="replace"))

    def close(self) -> None:
        """Free the rules and the engine (idempotent)."""
        if self._rules:
            self._lib.msc_rules_cleanup(self._rules)
            self._rules = None
        if self._engine:
            self._lib.msc_cleanup(self._engine)
            self._engine = None

    def _intervention(self, tx: int) -> Intervention | None:
        it = _Intervention(status=200)
        if not self._held.msc_intervention(tx, ctypes.byref(it)):
            return None
        log = ctypes.string_at(it.log).decode("utf-8", errors="replace") if it.log else ""
        # ModSecurity allocates url/log with malloc and leaves them to the connector.
        libc_free(it.url)
        libc_free(it.log)
        return Intervention(it.status if it.disruptive else 200, log)

    def transaction(
        self,
        *,
        client: tuple[str, int],
        server: tuple[str, int],
        method: str,
        uri: str,
        version: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        response: tuple[int, Iterable[tuple[str, str]], bytes] | None = None,
    ) -> Outcome:
        """Run one request (and `response`: status, headers, body) through all phases."""
        lib, held, outcome = self._lib, self._held, Outcome()
        self._local.sink = outcome.messages
        # netshield names the transaction: without an id ModSecurity 3.0 makes one from a
        # freshly seeded std::mt19937 and std::random_device, ~45 µs of a small GET's ~0.8 ms.
        tx_id = b"%d" % next(self._ids)
        tx = held.msc_new_transaction_with_id(self._engine, self._rules, tx_id, None)
        try:
            held.msc_process_connection(
                tx, client[0].encode(), client[1], server[0].encode(), server[1]
            )
            held.msc_process_uri(
                tx, uri.encode("latin-1"), method.encode("latin-1"), version.encode()
            )
            add_header = held.msc_add_n_request_header
            for name, value in headers:
                key, val = name.encode("latin-1"), value.encode("latin-1")
                add_header(tx, key, len(key), val, len(val))
            lib.msc_process_request_headers(tx)
            outcome.request = self._intervention(tx)
            if outcome.request is None:
                if body:
                    lib.msc_append_request_body(tx, body, len(body))
                lib.msc_process_request_body(tx)
                outcome.request = self._intervention(tx)
            if response is not None and outcome.request is None:
                status, response_headers, response_body = response
                for name, value in response_headers:
                    key, val = name.encode("latin-1"), value.encode("latin-1")
                    held.msc_add_n_response_header(tx, key, len(key), val, len(val))
                lib.msc_process_response_headers(tx, status, b"HTTP " + version.encode())
                outcome.response = self._intervention(tx)
                if outcome.response is None:
                    if response_body:
                        lib.msc_append_response_body(tx, response_body, len(response_body))
                    lib.msc_process_response_body(tx)
                    outcome.response = self._intervention(tx)
            # No logging phase (5): with the audit log off it only runs CRS's correlation rules
            # (980xxx), which summarise what the verdict already holds; it costs ~90 µs a
            # request. netshield's connection records are the log.
        finally:
            lib.msc_transaction_cleanup(tx)
            self._local.sink = None
        return outcome


_FREE: list[Any] = []  # libc's free, loaded on first use (find_library spawns ldconfig)


def libc_free(pointer: int | None) -> None:
    """free(3) a buffer ModSecurity allocated for the connector."""
    if not pointer:
        return
    if not _FREE:
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.free.argtypes = [ctypes.c_void_p]
        libc.free.restype = None
        _FREE.append(libc.free)
    _FREE[0](pointer)


__all__ = ["LIBRARY_NAMES", "Intervention", "ModSecurity", "ModSecurityUnavailable", "Outcome"]
