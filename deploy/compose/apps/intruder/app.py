"""intruder: an attested service that the policy does not allow to call orders. It tries once
its sidecar is ready and says what came back, then stays up (its sidecar shares its namespace)."""

import os
import signal
import socket
import subprocess
import sys

ready = subprocess.run(
    ["netshield", "wait", "--admin", "127.0.0.1:15000", "--timeout", "120", "--quiet"], check=False
)
if ready.returncode != 0:
    sys.exit("intruder: my sidecar never became ready")
host, _, port = os.environ.get("ORDERS_ADDR", "127.0.0.1:15101").rpartition(":")
got = b""
try:
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: orders\r\n\r\n")
        while chunk := s.recv(65536):
            got += chunk
except OSError as err:
    print(f"intruder: the call failed: {err}", flush=True)
print(f"intruder: called orders through my sidecar, {len(got)} bytes came back", flush=True)
signal.pause()
