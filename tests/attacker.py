"""An attacker on the network, as a separate process (its own GIL and file descriptors), so that
the tests measure the sidecar and not the test process's scheduling.

    python tests/attacker.py MODE --target HOST:PORT [--source IP[,IP...]] [--count N] [--seconds S] ...

Modes:
- ``idle``: hold `count` TCP connections that send nothing; with ``--reopen`` reopen every one
  the far end drops, so that `count` stay open from this side (an attacker that keeps up);
  without, it ends once the far end dropped them all.
- ``slowloris``: like idle, but send one byte of a TLS ClientHello per second on each.
- ``churn``: open `count` connections in total, as fast as possible (``--inflight`` at a time),
  each closed by this side as soon as it is established.
- ``handshake``: `count` complete TLS 1.3 handshakes (``--cert``/``--key``: the client
  certificate to present, none without) from ``--threads`` threads; each sends ``--payload``
  (if any), reads one byte (or its refusal) and closes.
- ``bytes``: `count` connections that each send ``--payload`` (hex) and close.
- ``nonces``: POST /v1/nonce to a CAS over HTTPS (keep-alive) from ``--threads`` threads for
  ``--seconds``, counting the answers by status.
- ``slowhttp``: `count` TLS connections to a CAS that send a request head one byte a second
  (``--body``: a full head announcing a body that then trickles); counts how they ended.

Connections come from the ``--source`` addresses in turn (several: a distributed attacker).
It prints one JSON line ``{"event": "holding", ...}`` once it holds its connections (idle,
slowloris), runs until `seconds` pass or its standard input closes, closes everything, then
prints ``{"event": "done", "opened": ..., "dropped_by_peer": ..., "max_open": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import os
import re
import resource
import selectors
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

# A TLS 1.3 ClientHello prefix: record header, handshake header and the start of the body.
CLIENT_HELLO_START = bytes.fromhex("16030100f8010000f40303") + bytes(range(32)) * 8


class Stats:
    def __init__(self) -> None:
        self.opened = 0
        self.dropped_by_peer = 0
        self.max_open = 0
        self.connect_errors = 0
        self.outcomes: dict[str, int] = {}

    def outcome(self, name: str) -> None:
        self.outcomes[name] = self.outcomes.get(name, 0) + 1


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_socket(target: tuple[str, int], source: str) -> socket.socket | None:
    sock = socket.socket()
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        err = sock.connect_ex(target)
    except OSError:
        sock.close()
        return None
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        return None
    return sock


def stop_requested(deadline: float) -> bool:
    return time.monotonic() >= deadline


def watch_stdin(stop: threading.Event) -> None:
    def run() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.read()
        stop.set()

    threading.Thread(target=run, daemon=True).start()


def hold(args: argparse.Namespace, stats: Stats, stop: threading.Event) -> None:
    """idle / slowloris: keep `count` connections open, reopening dropped ones with --reopen."""
    target = (args.host, args.port)
    sel = selectors.DefaultSelector()
    sent: dict[socket.socket, int] = {}

    def add() -> None:
        sock = open_socket(target, next(args.sources))
        if sock is None:
            stats.connect_errors += 1
            return
        stats.opened += 1
        sent[sock] = 0
        sel.register(sock, selectors.EVENT_READ)

    for _ in range(args.count):
        add()
    stats.max_open = len(sent)
    print(json.dumps({"event": "holding", "open": len(sent)}), flush=True)
    deadline = time.monotonic() + args.seconds
    next_trickle = time.monotonic() + 1.0
    while not stop.is_set() and not stop_requested(deadline) and (sent or args.reopen):
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                continue  # an alert; the close follows
            sel.unregister(sock)
            sock.close()
            del sent[sock]
            stats.dropped_by_peer += 1
            if args.reopen:
                add()
        if args.mode == "slowloris" and time.monotonic() >= next_trickle:
            next_trickle += 1.0
            for sock, n in list(sent.items()):
                if n < len(CLIENT_HELLO_START):
                    with contextlib.suppress(OSError):
                        sock.send(CLIENT_HELLO_START[n : n + 1])
                        sent[sock] = n + 1
        stats.max_open = max(stats.max_open, len(sent))
    for sock in sent:
        sock.close()


def churn(args: argparse.Namespace, stats: Stats, stop: threading.Event) -> None:
    """Open `count` connections in total, `inflight` at a time, closing each once established."""
    target = (args.host, args.port)
    sel = selectors.DefaultSelector()
    inflight = 0
    deadline = time.monotonic() + args.seconds
    while (stats.opened < args.count or inflight) and not stop.is_set():
        if stop_requested(deadline):
            break
        while inflight < args.inflight and stats.opened < args.count:
            sock = open_socket(target, next(args.sources))
            if sock is None:
                stats.connect_errors += 1
                time.sleep(0.01)
                break
            stats.opened += 1
            inflight += 1
            sel.register(sock, selectors.EVENT_WRITE)
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sel.unregister(sock)
            sock.close()
            inflight -= 1
        stats.max_open = max(stats.max_open, inflight)


def handshakes(args: argparse.Namespace, stats: Stats, stop: threading.Event) -> None:
    """`count` complete TLS handshakes from `threads` threads."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    lock = threading.Lock()
    payload = bytes.fromhex(args.payload)

    def one(_i: int) -> None:
        if stop.is_set():
            return
        outcome = "completed"
        try:
            with (
                socket.create_connection(
                    (args.host, args.port), timeout=20, source_address=(next(args.sources), 0)
                ) as raw,
                ctx.wrap_socket(raw) as tls,
            ):
                if payload:
                    tls.sendall(payload)
                # TLS 1.3: a refused client certificate shows on the first read
                outcome = "data" if tls.recv(1) else "closed"
        except ssl.SSLError as err:
            outcome = str(err.reason or type(err).__name__)
        except OSError as err:
            outcome = type(err).__name__
        with lock:
            stats.opened += 1
            stats.outcome(outcome)

    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(one, range(args.count)))


def send_bytes(args: argparse.Namespace, stats: Stats, stop: threading.Event) -> None:
    payload = bytes.fromhex(args.payload)
    for _ in range(args.count):
        if stop.is_set():
            break
        try:
            with socket.create_connection(
                (args.host, args.port), timeout=10, source_address=(next(args.sources), 0)
            ) as sock:
                stats.opened += 1
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                with contextlib.suppress(OSError):
                    while sock.recv(4096):
                        pass
        except OSError:
            stats.connect_errors += 1


def nonces(args: argparse.Namespace, stats: Stats, stop: threading.Event) -> None:
    import http.client

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + args.seconds
    lock = threading.Lock()

    def run() -> None:
        source = next(args.sources)
        conn: http.client.HTTPSConnection | None = None
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection(
                        args.host, args.port, context=ctx, timeout=10, source_address=(source, 0)
                    )
                conn.request("POST", "/v1/nonce", body=b"", headers={"Content-Length": "0"})
                response = conn.getresponse()
                response.read()
                outcome = str(response.status)
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as err:
                outcome = type(err).__name__
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                stats.opened += 1
                stats.outcome(outcome)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def slow_http(args: argparse.Namespace, stats: Stats, stop: threading.Event) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    path = b"/v1/attest" if args.body else b"/v1/nonce"
    head = b"POST " + path + b" HTTP/1.1\r\nHost: cas\r\nContent-Type: application/json\r\n"
    if args.body:
        head += b"Content-Length: 1000\r\n\r\n{"  # a head, then a body that never comes
    conns: list[ssl.SSLSocket] = []
    for _ in range(args.count):
        raw = socket.create_connection(
            (args.host, args.port), timeout=10, source_address=(next(args.sources), 0)
        )
        tls = ctx.wrap_socket(raw)
        if args.body:
            tls.sendall(head)  # at once: the head is complete, the body then never comes
        tls.setblocking(False)
        conns.append(tls)
        stats.opened += 1
    print(json.dumps({"event": "holding", "open": len(conns)}), flush=True)
    sent = 0 if not args.body else len(head)
    deadline = time.monotonic() + args.seconds
    alive = set(range(len(conns)))
    while alive and not stop.is_set() and time.monotonic() < deadline:
        for i in list(alive):
            tls = conns[i]
            try:
                data = tls.recv(4096)
                if not data:
                    raise ConnectionResetError
                status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "data"
                if b'"reason"' not in data:  # the rest of the answer: its reason code
                    with contextlib.suppress(OSError):
                        tls.setblocking(True)
                        tls.settimeout(2)
                        data += tls.recv(4096)
                code = re.search(rb'"reason": ?"([A-Z_]+)"', data)
                stats.outcome(f"answered {status}" + (f" {code.group(1).decode()}" if code else ""))
                alive.discard(i)
                stats.dropped_by_peer += 1
                continue
            except (ssl.SSLWantReadError, BlockingIOError):
                pass
            except OSError:
                stats.outcome("closed")
                stats.dropped_by_peer += 1
                alive.discard(i)
                continue
            if not args.body and sent < len(head):
                with contextlib.suppress(OSError):
                    tls.send(head[sent : sent + 1])
        sent += 1
        time.sleep(1.0)
    stats.max_open = len(alive)
    for tls in conns:
        tls.close()


MODES = {
    "idle": hold,
    "slowloris": hold,
    "churn": churn,
    "handshake": handshakes,
    "bytes": send_bytes,
    "nonces": nonces,
    "slowhttp": slow_http,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--target", required=True)
    parser.add_argument("--source", default="127.0.0.2")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--reopen", action="store_true")
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--payload", default="")
    parser.add_argument("--body", action="store_true")
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    args.host, args.port = host, int(port)
    args.sources = itertools.cycle(args.source.split(","))
    raise_fd_limit()
    stats, stop = Stats(), threading.Event()
    watch_stdin(stop)
    MODES[args.mode](args, stats, stop)
    print(json.dumps({"event": "done", **vars(stats)}), flush=True)
    os._exit(0)  # threads blocked on stdin must not keep the process alive


if __name__ == "__main__":
    sys.exit(main())
