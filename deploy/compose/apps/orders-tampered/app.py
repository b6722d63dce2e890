"""orders: a plain HTTP service that knows nothing about TLS; it listens on loopback only and is
reached from other services through its sidecar. GET / answers at once; GET /stream answers one
line every 200 ms for a minute (a long call that a revocation can cut off)."""

import http.server
import os
import time


class Orders(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        if self.path != "/stream":
            self.wfile.write(b"orders: 3 open orders (and a backdoor)\n")
            return
        try:
            for i in range(300):
                self.wfile.write(f"order update {i}\n".encode())
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the caller (or its sidecar) went away

    def log_message(self, format: str, *args: object) -> None:
        print(f"orders: {self.address_string()} {format % args}", flush=True)


port = int(os.environ.get("ORDERS_PORT", "8080"))
print(f"orders: listening on 127.0.0.1:{port}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Orders).serve_forever()
