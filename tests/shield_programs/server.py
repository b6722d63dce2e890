"""An ordinary Python service that knows nothing about netshield: five servers in one process,
one per way Python programs listen (ports from the environment)."""

import asyncio
import http.server
import json
import os
import socket
import threading

from aiohttp import web

PORTS = json.loads(os.environ["APP_PORTS"])
HOST = os.environ.get("APP_HOST", "127.0.0.1")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply({"server": "http.server", "peer": self.client_address[0], "path": self.path})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self._reply({"server": "http.server", "peer": self.client_address[0], "echo": body})

    def log_message(self, *args: object) -> None:
        pass


def blocking_echo(srv: socket.socket) -> None:
    while True:
        conn, peer = srv.accept()

        def serve(conn: socket.socket = conn, peer: tuple = peer) -> None:
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(f"socket {peer[0]} ".encode() + data)

        threading.Thread(target=serve, daemon=True).start()


async def streams_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    line = await reader.readline()
    peer = writer.get_extra_info("peername")
    writer.write(f"streams {peer[0]} ".encode() + line)
    await writer.drain()
    writer.close()


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.data.endswith(b"\n"):
            peer = self.transport.get_extra_info("peername")
            self.transport.write(f"protocol {peer[0]} ".encode() + self.data)
            self.transport.close()


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"server": "aiohttp", "peer": request.remote, "path": request.path})


async def main() -> None:
    loop = asyncio.get_running_loop()
    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, HOST, PORTS["aiohttp"]).start()
    await asyncio.start_server(streams_echo, HOST, PORTS["streams"])
    await loop.create_server(EchoProtocol, HOST, PORTS["protocol"])
    httpd = http.server.ThreadingHTTPServer((HOST, PORTS["http"]), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    srv = socket.create_server((HOST, PORTS["socket"]))
    threading.Thread(target=blocking_echo, args=(srv,), daemon=True).start()
    print(json.dumps({"event": "app-ready", "http": httpd.server_address[1]}), flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
