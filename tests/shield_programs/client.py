"""An ordinary Python client that knows nothing about netshield: one request the way the
APP_MODE library makes it, to APP_TARGET; prints one JSON line with what came back."""

import asyncio
import http.client
import json
import os
import socket
import sys
import urllib.request

MODE = os.environ["APP_MODE"]
HOST = os.environ["APP_TARGET"]
PORTS = json.loads(os.environ["APP_PORTS"])
MARKER = os.environ.get("APP_MARKER", "hello")


def via_socket() -> str:
    with socket.create_connection((HOST, PORTS["socket"]), timeout=20) as s:
        s.sendall(f"{MARKER}\n".encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data.decode()


def via_http_client() -> str:
    conn = http.client.HTTPConnection(HOST, PORTS["http"], timeout=20)
    conn.request("POST", "/echo", body=MARKER, headers={"Content-Type": "text/plain"})
    body = conn.getresponse().read().decode()
    conn.request("GET", f"/again/{MARKER}")  # the same kept-alive connection
    body2 = conn.getresponse().read().decode()
    conn.close()
    return json.dumps([json.loads(body), json.loads(body2)])


def via_urllib() -> str:
    with urllib.request.urlopen(f"http://{HOST}:{PORTS['aiohttp']}/{MARKER}", timeout=20) as r:
        return r.read().decode()


def via_requests() -> str:
    import requests

    with requests.Session() as session:
        first = session.post(f"http://{HOST}:{PORTS['http']}/echo", data=MARKER, timeout=20)
        second = session.get(f"http://{HOST}:{PORTS['http']}/{MARKER}", timeout=20)
        return json.dumps([first.json(), second.json()])


async def via_streams() -> str:
    reader, writer = await asyncio.open_connection(HOST, PORTS["streams"])
    writer.write(f"{MARKER}\n".encode())
    await writer.drain()
    line = await reader.read()
    peer = writer.get_extra_info("peername")
    writer.close()
    return json.dumps({"reply": line.decode(), "peername": list(peer)})


async def via_protocol() -> str:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.data = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(f"{MARKER}\n".encode())  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.data += data

        def connection_lost(self, exc: Exception | None) -> None:
            done.set_result(self.data)

    await loop.create_connection(Client, HOST, PORTS["protocol"])
    return (await asyncio.wait_for(done, 20)).decode()


async def via_aiohttp() -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{HOST}:{PORTS['aiohttp']}/{MARKER}") as resp:
            return await resp.text()


def via_many() -> str:
    """200 concurrent aiohttp requests, then 8 threads of requests sessions, at once."""
    import threading

    import aiohttp
    import requests

    async def gathered() -> int:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> bool:
                url = f"http://{HOST}:{PORTS['aiohttp']}/n{i}"
                async with session.get(url) as resp:
                    return (await resp.json())["path"] == f"/n{i}"

            return sum(await asyncio.gather(*(one(i) for i in range(200))))

    good: list[bool] = []

    def worker(i: int) -> None:
        with requests.Session() as session:
            for j in range(10):
                url = f"http://{HOST}:{PORTS['http']}/t{i}-{j}"
                good.append(session.get(url, timeout=30).json()["path"] == f"/t{i}-{j}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    in_asyncio = asyncio.run(gathered())
    for t in threads:
        t.join()
    return f"asyncio {in_asyncio}/200 threads {sum(good)}/80"


def via_ctypes() -> str:
    """A TCP connection opened with libc directly, as a C extension would: past Python's socket
    module. Reports whether it still works a few seconds later."""
    import ctypes
    import struct
    import time

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    addr = (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", PORTS["socket"])
        + socket.inet_aton(HOST)
        + bytes(8)
    )
    if libc.connect(fd, addr, len(addr)) != 0:
        return f"connect failed: {os.strerror(ctypes.get_errno())}"
    message = f"{MARKER}\n".encode()
    first = libc.send(fd, message, len(message), socket.MSG_NOSIGNAL)
    time.sleep(2.5)
    later = libc.send(fd, message, len(message), socket.MSG_NOSIGNAL)
    libc.close(fd)
    return f"first {first} later {'cut' if later < 0 else 'open'}"


def via_udp() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(MARKER.encode(), (HOST, PORTS["http"]))
    return "sent"


def via_fork() -> str:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its socket calls, reported to the parent
        try:
            socket.create_connection((HOST, PORTS["socket"]), timeout=5).close()
            message = "connected"
        except OSError as err:
            message = str(err)
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as f:
        return f.read()


def via_hold() -> str:
    with socket.create_connection((HOST, PORTS["streams"]), timeout=60) as s:
        print(json.dumps({"event": "app-ready"}), flush=True)
        s.settimeout(60)
        while s.recv(65536):
            pass
    return "closed"


def via_uvloop() -> str:
    import uvloop

    return f"imported {uvloop.__name__}"


MODES = {
    "ctypes": via_ctypes,
    "many": via_many,
    "uvloop": via_uvloop,
    "udp": via_udp,
    "fork": via_fork,
    "hold": via_hold,
    "socket": via_socket,
    "http.client": via_http_client,
    "urllib": via_urllib,
    "requests": via_requests,
    "asyncio-streams": lambda: asyncio.run(via_streams()),
    "asyncio-protocol": lambda: asyncio.run(via_protocol()),
    "aiohttp": lambda: asyncio.run(via_aiohttp()),
}

try:
    print(json.dumps({"ok": True, "reply": MODES[MODE]()}), flush=True)
except (Exception, ImportError) as err:  # what the library raised, as the program saw it
    print(
        json.dumps(
            {
                "ok": False,
                "error": type(err).__name__,
                "errno": getattr(err, "errno", None),
                "message": str(err),
            }
        ),
        flush=True,
    )
    sys.exit(3)
