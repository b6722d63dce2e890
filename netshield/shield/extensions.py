"""C extensions that open sockets of their own, beside Python's `socket` module: the in-process
shield cannot protect those connections, so it refuses to let such a module load (or, with
`c_extensions: allow`, says once that its connections bypass the shield).

Responsibility: the list of known modules and what each is (pure). The engine checks every
import against it through an audit hook (`sys.addaudithook`, the "import" event, raised before a
module is searched for), so the refusal is an `ImportError` naming the module, the library and
what to do, at the moment the program imports it -- before it could open a connection.

The list covers what Python services commonly load; the sockets of a module not on it are found
after the fact (`netshield.shield.bypass`). On the list: libpq (psycopg 2 and 3; asyncpg does
not use it), MySQL's C client, gRPC's C core, libcurl, uvloop's libuv loop, ZeroMQ,
libmemcached, FreeTDS, gevent's sockets.
"""

from __future__ import annotations

KNOWN: dict[str, str] = {
    "psycopg2._psycopg": "libpq (psycopg2)",
    "psycopg.pq": "libpq (psycopg 3)",
    "psycopg_c": "libpq (psycopg 3, C build)",
    "psycopg_binary": "libpq (psycopg 3, binary build)",
    "MySQLdb._mysql": "libmysqlclient (mysqlclient)",
    "grpc._cython.cygrpc": "gRPC's C core (grpcio)",
    "pycurl": "libcurl (pycurl)",
    "uvloop.loop": "libuv (uvloop)",
    "zmq.backend.cython": "libzmq (pyzmq)",
    "zmq.backend.cffi": "libzmq (pyzmq)",
    "pylibmc._pylibmc": "libmemcached (pylibmc)",
    "_pymssql": "FreeTDS (pymssql)",
    "pymssql._pymssql": "FreeTDS (pymssql)",
    "gevent._socket3": "gevent's own sockets",
}


def library_of(module: str) -> str | None:
    """What `module` is, if it is a known module with sockets of its own."""
    return KNOWN.get(module)


def refusal_text(module: str, library: str) -> str:
    return (
        f"netshield EXTENSION_SOCKETS: {module} opens its connections with {library}, not through "
        "Python's socket module, so the in-process shield cannot protect them; use a pure-Python "
        "client, run this service beside a sidecar, or set c_extensions: allow (its connections "
        "then bypass the shield)"
    )


__all__ = ["KNOWN", "library_of", "refusal_text"]
