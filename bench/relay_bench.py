"""Throughput and connection rate through a netshield mTLS relay pair, against baselines.

    client --plain--> relay A (plain -> TLS client) --mTLS--> relay B (TLS server -> plain) --> backend

Each relay runs in its own process, like two sidecars. The same path is measured through
  * netshield       : netshield.net relays (TlsStream <-> PlainStream), mutual TLS 1.3
  * stunnel         : stunnel4 client + server with the same certificates (if installed)
  * plain-relay     : the same netshield relay code without TLS (PlainStream <-> PlainStream)
and netshield's numbers are printed as ratios to each baseline. Run by hand, not in the tests:

    python bench/relay_bench.py [--mib 512] [--conns 2000] [--concurrency 32] [--loop uvloop]

The backend reads each connection to EOF and answers with the byte count; a throughput run
sends --mib MiB on one connection (and on 4 at once), a connection run opens --conns
connections (--concurrency at a time), each sending one byte and waiting for the answer.
The certificates are throw-away test certificates written to a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netshield.casclient import Credentials
from netshield.identity import SpiffeId
from netshield.net.relay import relay
from netshield.net.streams import PlainStream, Stream, TlsStream
from netshield.pki.ca import create_root_ca, issue_certificate
from netshield.pki.certext import AttestationClaims
from netshield.pki.keys import certs_pem, generate_key, load_private_key, private_key_pem
from netshield.tls.contexts import client_context, server_context
from netshield.tls.credentials import MeshCredentials

MiB = 1024 * 1024
TD = "bench.netshield.test"


# --- processes: backend and relays -----------------------------------------------------------


async def serve_backend(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while chunk := await reader.read(256 * 1024):
            total += len(chunk)
        writer.write(str(total).encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def load_creds(directory: Path, name: str) -> MeshCredentials:
    answer = Credentials(
        chain_pem=(directory / f"{name}.pem").read_bytes(),
        trust_bundle_pem=(directory / "ca.pem").read_bytes(),
        spiffe_id="",
        serial="",
        not_after="",
        policy_version=1,
        epoch=1,
        policy={},
    )
    return MeshCredentials.from_attestation(answer, load_private_key(directory / f"{name}.key"))


async def serve_relay(mode: str, listen: int, connect: int, directory: Path) -> None:
    """mode: outbound (plain -> TLS), inbound (TLS -> plain), plain (plain -> plain)."""
    loop = asyncio.get_running_loop()
    if mode == "outbound":
        ctx = client_context(load_creds(directory, "frontend"))
    elif mode == "inbound":
        ctx = server_context(load_creds(directory, "orders"))
    tasks: set[asyncio.Task[None]] = set()

    async def handle(sock: socket.socket) -> None:
        down: Stream
        up: Stream
        if mode == "inbound":
            _, tls = await loop.connect_accepted_socket(
                lambda: TlsStream(ctx, server_side=True), sock
            )
            await tls.handshake(10)
            down = tls
        else:
            _, down = await loop.connect_accepted_socket(PlainStream, sock)
        if mode == "outbound":
            _, client = await loop.create_connection(
                lambda: TlsStream(ctx, server_side=False), "127.0.0.1", connect
            )
            await client.handshake(10)
            up = client
        else:
            _, up = await loop.create_connection(PlainStream, "127.0.0.1", connect)
        await relay(down, up, idle_timeout=60)

    async def run(sock: socket.socket) -> None:
        try:
            await handle(sock)
        except Exception as exc:  # a benchmark relay reports and goes on
            print(f"relay error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    listener = socket.create_server(("127.0.0.1", listen), backlog=1024)
    listener.setblocking(False)
    print("ready", flush=True)
    while True:
        sock, _ = await loop.sock_accept(listener)
        task = asyncio.create_task(run(sock))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def run_loop(coro_factory: object, loop_kind: str) -> None:
    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(coro_factory)  # type: ignore[arg-type]
    else:
        asyncio.run(coro_factory)  # type: ignore[arg-type]


# --- the measuring client --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


async def send_bytes(port: int, total: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = os.urandom(MiB)
    for _ in range(total // MiB):
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    answer = await reader.read()
    writer.close()
    if int(answer or b"0") != total:
        raise RuntimeError(f"backend got {answer!r} bytes, expected {total}")


async def throughput(port: int, mib: int, streams: int) -> float:
    """MiB/s over `streams` connections sending `mib` MiB in total."""
    per = mib // streams * MiB
    started = time.perf_counter()
    await asyncio.gather(*(send_bytes(port, per) for _ in range(streams)))
    return per * streams / MiB / (time.perf_counter() - started)


async def connection_rate(port: int, count: int, concurrency: int) -> float:
    """Connections per second, each sending one byte and waiting for the answer."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x")
            writer.write_eof()
            if await reader.read() != b"1":
                raise RuntimeError("bad answer")
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - started)


@dataclass
class Result:
    name: str
    single: float
    parallel: float
    rate: float


async def measure(name: str, port: int, args: argparse.Namespace) -> Result:
    await throughput(port, 32, 1)  # warm up
    await connection_rate(port, 50, 8)
    single = await throughput(port, args.mib, 1)
    parallel = await throughput(port, args.mib, 4)
    rate = await connection_rate(port, args.conns, args.concurrency)
    result = Result(name, single, parallel, rate)
    print(
        f"  {name:12s} 1 stream {single:8.1f} MiB/s   4 streams {parallel:8.1f} MiB/s   "
        f"{rate:8.1f} conn/s",
        flush=True,
    )
    return result


# --- set-ups ---------------------------------------------------------------------------------


def make_pki(directory: Path) -> None:
    now = datetime.now(UTC)
    ca = create_root_ca("bench mesh CA", now=now)
    (directory / "ca.pem").write_bytes(ca.bundle_pem())
    for name in ("frontend", "orders"):
        key = generate_key()
        cert = issue_certificate(
            ca,
            public_key=key.public_key(),
            spiffe_id=SpiffeId.for_service(TD, name),
            now=now,
            lifetime=timedelta(hours=1),
            claims=AttestationClaims("00" * 32, 1, 1, "bench"),
        )
        (directory / f"{name}.pem").write_bytes(certs_pem([cert]))
        key_path = directory / f"{name}.key"
        key_path.write_bytes(private_key_pem(key))
        key_path.chmod(0o600)


@contextlib.contextmanager
def processes(*commands: list[str], ready_line: bool = True) -> Iterator[None]:
    """Start the commands (in order, each after the previous printed its ready line)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for cmd in commands:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if ready_line else None)
            procs.append(proc)
            if ready_line:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != b"ready":
                    raise RuntimeError(f"{cmd} did not start")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def self_cmd(args: argparse.Namespace, *rest: str) -> list[str]:
    return [sys.executable, __file__, "--loop", args.loop, *rest]


def stunnel_configs(directory: Path, a: int, b: int, backend: int) -> tuple[Path, Path]:
    common = "foreground = yes\npid =\ndebug = 2\n"
    tls = (
        f"CAfile = {directory / 'ca.pem'}\nverifyChain = yes\nsslVersionMin = TLSv1.3\n"
        "options = NO_TICKET\nsessionResume = no\n"  # full handshakes, like netshield
    )
    client = directory / "stunnel-client.conf"
    client.write_text(
        f"{common}[out]\nclient = yes\naccept = 127.0.0.1:{a}\nconnect = 127.0.0.1:{b}\n"
        f"cert = {directory / 'frontend.pem'}\nkey = {directory / 'frontend.key'}\n{tls}"
    )
    server = directory / "stunnel-server.conf"
    server.write_text(
        f"{common}[in]\naccept = 127.0.0.1:{b}\nconnect = 127.0.0.1:{backend}\n"
        f"cert = {directory / 'orders.pem'}\nkey = {directory / 'orders.key'}\n{tls}"
    )
    return client, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "backend":
        run_loop(serve_backend(int(args.ports)), args.loop)
        return
    if args.role:
        listen, connect = (int(p) for p in args.ports.split(","))
        run_loop(serve_relay(args.role, listen, connect, Path(args.dir)), args.loop)
        return

    with tempfile.TemporaryDirectory(prefix="netshield-bench-") as tmp:
        directory = Path(tmp)
        make_pki(directory)
        backend = free_port()
        results: dict[str, Result] = {}
        print(f"relay bench: {args.mib} MiB, {args.conns} connections, loop {args.loop}")
        with processes(self_cmd(args, "--role", "backend", "--ports", str(backend))):
            for name, roles in (
                ("netshield", ("outbound", "inbound")),
                ("plain-relay", ("plain", "plain")),
            ):
                a, b = free_port(), free_port()
                with processes(
                    self_cmd(args, "--role", roles[1], "--ports", f"{b},{backend}", "--dir", tmp),
                    self_cmd(args, "--role", roles[0], "--ports", f"{a},{b}", "--dir", tmp),
                ):
                    results[name] = asyncio.run(measure(name, a, args))
            stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
            if stunnel:
                a, b = free_port(), free_port()
                client_conf, server_conf = stunnel_configs(directory, a, b, backend)
                with processes(
                    [stunnel, str(client_conf)], [stunnel, str(server_conf)], ready_line=False
                ):
                    wait_port(a)
                    wait_port(b)
                    results["stunnel"] = asyncio.run(measure("stunnel", a, args))
            else:
                print("  (stunnel4 not installed: apt-get install -y stunnel4)")
        ours = results["netshield"]
        for name, base in results.items():
            if name == "netshield":
                continue
            print(
                f"netshield / {name}: 1 stream x{ours.single / base.single:.2f}, "
                f"4 streams x{ours.parallel / base.parallel:.2f}, "
                f"connections/s x{ours.rate / base.rate:.2f}"
            )


if __name__ == "__main__":
    main()
