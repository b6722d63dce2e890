"""A small network of hosts for root tests: `ip netns` namespaces joined by veth pairs to a bridge.

Every address lives inside the lab's own namespaces (10.77.0.0/24, fd77::/64); nothing is routed
anywhere else. Names carry a random suffix so parallel runs never collide, and `Lab.close` kills
what the lab started and deletes its namespaces (with their veths and iptables rules) even when a
test failed half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIDECAR_UID = 1337
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
SUBNET = "10.77.0"
SUBNET6 = "fd77::"


def have_root_tools() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for tool in (
        "ip",
        "iptables-nft-restore",
        "iptables-legacy-restore",
        "nft",
        "tcpdump",
        "setpriv",
        "nsenter",
        "unshare",
        "openssl",
    ):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/test installs iproute2, iptables, nftables, tcpdump as root)"
    return None


def sh(*argv: str, check: bool = True, timeout: float = 30, stdin: str | None = None) -> str:
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
        env=ENV,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def as_user(uid: int) -> list[str]:
    """The prefix that runs a command as `uid` (gid the same, no supplementary groups).

    Where this Python lives below a directory `uid` may not search (e.g. pyenv under /root,
    mode 0700), the process keeps CAP_DAC_READ_SEARCH so it can load its interpreter and
    libraries; it still runs as `uid`, which is all the netfilter owner match looks at, and it
    holds no CAP_NET_ADMIN (it cannot touch the rules)."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or probe.stdout.strip() != sys.prefix:
        prefix += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return [*prefix, "--"]


@dataclass
class Host:
    """One host: a network namespace (named with `ip netns`, or held by a process: a "pod")."""

    name: str
    ns: str  # the `ip netns` name, or "" for a pod held by `holder`
    ip: str
    ip6: str
    holder: subprocess.Popen[bytes] | None = None

    @property
    def enter(self) -> list[str]:
        """The prefix that runs a command inside this host's network namespace."""
        if self.holder is not None:
            return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--"]
        return ["ip", "netns", "exec", self.ns]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30, stdin: str | None = None
    ) -> str:
        return sh(*self.enter, *argv, check=check, timeout=timeout, stdin=stdin)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[str]
    ready: dict[str, Any]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Lab:
    root: Path  # a world-readable work directory (the sidecars run as another uid)
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    pods: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    switch: str = ""

    def __post_init__(self) -> None:
        self.switch = f"ns4-{self.tag}-sw"
        sh("ip", "netns", "add", self.switch)
        self.namespaces.append(self.switch)
        try:
            self._in_switch("ip", "link", "set", "lo", "up")
            self._in_switch("ip", "link", "add", "br0", "type", "bridge")
            self._in_switch("ip", "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _in_switch(self, *argv: str) -> str:
        return sh("ip", "netns", "exec", self.switch, *argv)

    def add_host(self, name: str, octet: int, *, pod: bool = False) -> Host:
        """A host on the lab's bridge at 10.77.0.<octet> and fd77::<octet>.

        `pod`: the namespace is held by a sleeping process (as a Kubernetes pod's pause container
        holds it) and joined with nsenter, instead of being an `ip netns` name."""
        host = Host(name, "", f"{SUBNET}.{octet}", f"{SUBNET6}{octet:x}")
        if pod:
            holder = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
            self.pods.append(holder)
            host.holder = holder
            deadline = time.monotonic() + 5
            while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
                assert time.monotonic() < deadline, "unshare did not make a network namespace"
                time.sleep(0.01)
            target = ["netns", str(holder.pid)]
        else:
            host.ns = f"ns4-{self.tag}-{name}"
            sh("ip", "netns", "add", host.ns)
            self.namespaces.append(host.ns)
            target = ["netns", host.ns]
        port = f"p{self.tag}{name}"[:15]
        self._in_switch("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0")
        self._in_switch("ip", "link", "set", "eth0", *target)
        self._in_switch("ip", "link", "set", port, "master", "br0", "up")
        host.run("ip", "link", "set", "lo", "up")
        host.run("ip", "addr", "add", f"{host.ip}/24", "dev", "eth0")
        host.run("ip", "-6", "addr", "add", f"{host.ip6}/64", "dev", "eth0", "nodad")
        host.run("ip", "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def start(
        self,
        host: Host,
        name: str,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        timeout: float = 40,
        ready_event: str = "ready",
    ) -> Proc:
        """Run `argv` in `host` (as `uid` if given) and wait for its JSON ready line."""
        err = self.root / f"{name}.stderr"
        prefix = list(host.enter)
        if uid is not None:
            prefix += as_user(uid)
        popen = subprocess.Popen(
            [*prefix, *argv],
            stdout=subprocess.PIPE,
            stderr=err.open("w"),
            text=True,
            env={**ENV, "HOME": str(self.root)},
            cwd=self.root,
        )
        proc = Proc(name, popen, {}, err)
        self.procs.append(proc)
        assert popen.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(popen.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                line = popen.stdout.readline()
                if not line:
                    break
                with contextlib.suppress(ValueError):
                    ready = json.loads(line)
                    if isinstance(ready, dict) and ready.get("event") == ready_event:
                        proc.ready = ready
                        return proc
            if popen.poll() is not None:
                break
        raise AssertionError(f"{name} did not become ready: {err.read_text(errors='replace')}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=10)
        for holder in self.pods:
            with contextlib.suppress(Exception):
                holder.kill()
                holder.wait(timeout=5)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def lab(root: Path) -> Iterator[Lab]:
    the_lab = Lab(root)
    try:
        yield the_lab
    finally:
        the_lab.close()


# --- plain services: know nothing about TLS ------------------------------------------------------

SERVER = r"""
import json, socket, sys, threading
port, log, tag = int(sys.argv[1]), sys.argv[2], sys.argv[3]
srv = socket.create_server(("0.0.0.0", port), reuse_port=False)
print(json.dumps({"event": "ready", "port": port}), flush=True)
def handle(conn):
    with conn:
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        with open(log, "ab") as f:
            f.write(data)
        try:
            conn.sendall(b"ANSWER " + tag.encode() + b" to " + data)
        except OSError:
            pass
while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""

CLIENT = r"""
import socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode() + b"\n"
try:
    with socket.create_connection((host, port), timeout=15) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    sys.stdout.write(data.decode(errors="replace"))
except OSError as err:
    sys.stdout.write(f"ERROR {type(err).__name__}: {err}")
"""


def start_server(lab: Lab, host: Host, port: int, tag: str) -> tuple[Proc, Path]:
    log = lab.root / f"{host.name}-{port}.received"
    log.write_bytes(b"")
    proc = lab.start(
        host, f"server-{host.name}-{port}", [sys.executable, "-c", SERVER, str(port), str(log), tag]
    )
    return proc, log


def client(host: Host, target: str, port: int, payload: str, *, uid: int | None = None) -> str:
    """Run the plain client in `host`; what came back (or "ERROR ...")."""
    prefix = as_user(uid) if uid is not None else []
    return host.run(*prefix, sys.executable, "-c", CLIENT, target, str(port), payload, timeout=40)


# --- packet capture ------------------------------------------------------------------------------


@dataclass
class Capture:
    """tcpdump on one interface, written to a pcap file; `stop` then read the packets."""

    popen: subprocess.Popen[bytes]
    path: Path
    stderr_path: Path

    def stop(self) -> list[bytes]:
        """Stop tcpdump and return the TCP payloads it saw (one bytes per packet)."""
        if self.popen.poll() is None:
            time.sleep(0.3)  # let the last packets reach the file (-U writes per packet)
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return tcp_payloads(self.path.read_bytes())


def start_capture(lab: Lab, host: Host, bpf: str, name: str, *, interface: str = "eth0") -> Capture:
    path = lab.root / f"{name}.pcap"
    err = lab.root / f"{name}.tcpdump.stderr"
    popen = subprocess.Popen(
        [
            *host.enter,
            "tcpdump",
            "--immediate-mode",
            "-i",
            interface,
            "-n",
            "-U",
            "-s",
            "0",
            "-Z",
            "root",
            "-w",
            str(path),
            bpf,
        ],
        stdout=subprocess.DEVNULL,
        stderr=err.open("w"),
    )
    deadline = time.monotonic() + 10
    while "listening on" not in err.read_text(errors="replace"):
        if popen.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"tcpdump did not start: {err.read_text(errors='replace')}")
        time.sleep(0.05)
    return Capture(popen, path, err)


def tcp_payloads(pcap: bytes) -> list[bytes]:
    """The TCP payload of every Ethernet/IPv4-or-IPv6 packet in a classic pcap file."""
    if len(pcap) < 24:
        return []
    magic = pcap[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    payloads: list[bytes] = []
    offset = 24
    while offset + 16 <= len(pcap):
        _sec, _frac, caplen, _len = struct.unpack_from(f"{endian}IIII", pcap, offset)
        frame = pcap[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < 14:
            continue
        ethertype = int.from_bytes(frame[12:14], "big")
        ip = frame[14:]
        if ethertype == 0x0800 and len(ip) >= 20 and ip[9] == 6:
            ihl = (ip[0] & 0x0F) * 4
            total = int.from_bytes(ip[2:4], "big")
            tcp = ip[ihl:total]
        elif ethertype == 0x86DD and len(ip) >= 40 and ip[6] == 6:
            tcp = ip[40 : 40 + int.from_bytes(ip[4:6], "big")]
        else:
            continue
        if len(tcp) >= 20:
            payloads.append(tcp[(tcp[12] >> 4) * 4 :])
    return payloads


def tls_record_types(payloads: list[bytes]) -> set[int]:
    """TLS record content types that start a TCP payload (22 handshake, 23 application data)."""
    return {p[0] for p in payloads if len(p) >= 5 and p[0] in (20, 21, 22, 23) and p[1] == 3}


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_record(path: Path, pred: Any, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in records(path):
            if pred(rec):
                return rec
        time.sleep(0.05)
    raise AssertionError(f"no matching record in {path}: {records(path)}")
