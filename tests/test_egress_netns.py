"""Strict transparent mode leaves no hole for non-TCP traffic (root, network namespaces).

Host `a` runs a shielded service's namespace with `netshield iptables install` (strict, the
default); host `b` runs a UDP sink on ports 53 and 9999, IPv4 and IPv6, that logs every datagram
it receives. The service's UDP and ICMP leave nothing on `b`, IPv4 and IPv6, and are counted;
DNS to the named resolver and the sidecar's own traffic pass. The twin: permissive mode lets the
same datagrams through.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns_lab import ENV, SIDECAR_UID, Host, Lab, as_user, have_root_tools, lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(have_root_tools() is not None, reason=str(have_root_tools())),
]

APP_UID = 1002

SINK = r"""
import json, select, socket, sys
log = open(sys.argv[1], "a")
socks = []
for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for port in (53, 9999):
        s = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        socks.append(s)
print(json.dumps({"event": "ready"}), flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, src = s.recvfrom(2048)
        log.write(json.dumps({"data": data.decode(errors="replace"), "port": s.getsockname()[1]}) + "\n")
        log.flush()
"""

SEND = r"""
import socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family, socket.SOCK_DGRAM) as s:
    for _ in range(3):
        try:
            s.sendto(payload, (host, port))
        except OSError as err:  # a dropped datagram: EPERM from the netfilter DROP
            print(f"refused: {err}")
"""


PING = r"""
import socket, struct, sys
target = sys.argv[1]
v6 = ":" in target
family, proto, kind = (
    (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP, 8)
)
body = struct.pack("!BBHHH", kind, 0, 0, 0x4E53, 1) + b"netshield!"  # an even length
if not v6:  # the kernel fills in the ICMPv6 checksum itself
    total = sum(struct.unpack("!%dH" % (len(body) // 2), body + b"\0" * (len(body) % 2)))
    total = (total >> 16) + (total & 0xFFFF)
    body = body[:2] + struct.pack("!H", ~(total + (total >> 16)) & 0xFFFF) + body[4:]
with socket.socket(family, socket.SOCK_RAW, proto) as s:
    try:
        s.sendto(body, (target, 0))
    except OSError as err:
        print(f"refused: {err}")
"""


def send(host: Host, uid: int, target: str, port: int, payload: str) -> str:
    done = subprocess.run(
        [*host.enter, *as_user(uid), sys.executable, "-c", SEND, target, str(port), payload],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
        check=True,
    )
    return done.stdout


def install(host: Host, *args: str) -> str:
    return host.run(
        sys.executable, "-m", "netshield", "iptables", "install",
        "--proxy-uid", str(SIDECAR_UID), "--inbound-ports", "", *args,
    )  # fmt: skip


def received(log: Path) -> set[str]:
    if not log.exists():
        return set()
    return {json.loads(line)["data"] for line in log.read_text().splitlines() if line}


def wait_for(log: Path, expected: set[str]) -> set[str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not expected <= received(log):
        time.sleep(0.1)
    return received(log)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Lab, Host, Host, Path]]:
    tmp_path.chmod(0o755)
    with lab(tmp_path) as the_lab:
        a = the_lab.add_host("a", 2)
        b = the_lab.add_host("b", 3)
        log = tmp_path / "sink.jsonl"
        script = tmp_path / "sink.py"
        script.write_text(SINK)
        the_lab.start(b, "sink", [sys.executable, str(script), str(log)])
        yield the_lab, a, b, log


def test_strict_mode_drops_udp_and_icmp_v4_and_v6_but_lets_named_dns_through(
    hosts: tuple[Lab, Host, Host, Path],
) -> None:
    _lab, a, b, log = hosts
    said = install(a, "--allow-dns", f"{b.ip},{b.ip6}")
    assert "non-TCP egress dropped except DNS to" in said
    for target, tag in ((b.ip, "v4"), (b.ip6, "v6")):
        send(a, APP_UID, target, 9999, f"app-udp-{tag}")  # plaintext UDP: must not leave
        send(a, APP_UID, target, 53, f"app-dns-{tag}")  # DNS to the named resolver: passes
        send(a, SIDECAR_UID, target, 9999, f"sidecar-udp-{tag}")  # the sidecar's own: passes
    for target in (b.ip, b.ip6):  # an ICMP echo request, from root (not the sidecar's uid)
        a.run(sys.executable, "-c", PING, target)
    allowed = {f"{kind}-{tag}" for kind in ("app-dns", "sidecar-udp") for tag in ("v4", "v6")}
    got = wait_for(log, allowed)
    assert allowed <= got
    assert not {"app-udp-v4", "app-udp-v6"} & got
    shown = a.run(sys.executable, "-m", "netshield", "iptables", "show", "--installed")
    v4, v6 = (line for line in shown.splitlines() if line.startswith("# dropped non-TCP egress"))
    assert "(IPv4): udp 3 packets" in v4 and "icmp 1 packets" in v4
    assert "(IPv6): udp 3 packets" in v6 and "icmp 1 packets" in v6
    # remove takes the filter rules out again
    a.run(sys.executable, "-m", "netshield", "iptables", "remove")
    assert "NETSHIELD" not in a.run("iptables-nft-save") + a.run("ip6tables-nft-save")


def test_the_twins_permissive_mode_and_a_resolver_not_named(
    hosts: tuple[Lab, Host, Host, Path],
) -> None:
    _lab, a, b, log = hosts
    install(a, "--allow-dns", "10.77.0.99")  # strict, but b is not the named resolver
    send(a, APP_UID, b.ip, 53, "dns-to-unnamed")
    install(a, "--mode", "permissive")
    assert "NETSHIELD_EGRESS" not in a.run("iptables-nft-save")
    send(a, APP_UID, b.ip, 9999, "permissive-v4")
    send(a, APP_UID, b.ip6, 9999, "permissive-v6")
    got = wait_for(log, {"permissive-v4", "permissive-v6"})
    assert {"permissive-v4", "permissive-v6"} <= got
    assert "dns-to-unnamed" not in got
