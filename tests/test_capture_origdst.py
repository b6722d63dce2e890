"""SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST: decoding (pure, property-tested) and the real kernel
answer behind `netshield iptables install` in a network namespace (root)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import socket
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.capture.origdst import decode_sockaddr
from netshield.netaddr import HostPort
from tests.netns_lab import SIDECAR_UID, Lab, as_user, have_root_tools


def _sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", port, socket.inet_aton(ip))


def _sockaddr_in6(ip: str, port: int, scope: int = 0) -> bytes:
    packed = ipaddress.IPv6Address(ip).packed
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI16sI", port, 0, packed, scope)


def test_decodes_an_ipv4_sockaddr() -> None:
    assert decode_sockaddr(_sockaddr_in("10.77.0.2", 8080)) == HostPort("10.77.0.2", 8080)


def test_decodes_an_ipv6_sockaddr_and_unmaps_ipv4_mapped_addresses() -> None:
    assert decode_sockaddr(_sockaddr_in6("fd77::2", 443)) == HostPort("fd77::2", 443)
    assert decode_sockaddr(_sockaddr_in6("::ffff:10.0.0.1", 80)) == HostPort("10.0.0.1", 80)


def test_rejects_short_or_foreign_sockaddrs() -> None:
    with pytest.raises(ValueError, match="not a sockaddr"):
        decode_sockaddr(_sockaddr_in("10.0.0.1", 1)[:8])
    with pytest.raises(ValueError, match="not a sockaddr"):
        decode_sockaddr(struct.pack("=H", socket.AF_UNIX) + bytes(14))


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_ipv4_sockaddrs_round_trip(ip: ipaddress.IPv4Address, port: int) -> None:
    assert decode_sockaddr(_sockaddr_in(str(ip), port)) == HostPort(str(ip), port)


@given(st.ip_addresses(v=6), st.integers(0, 65535), st.integers(0, 2**32 - 1))
def test_ipv6_sockaddrs_round_trip(ip: ipaddress.IPv6Address, port: int, scope: int) -> None:
    expected = str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)
    assert decode_sockaddr(_sockaddr_in6(str(ip), port, scope)) == HostPort(expected, port)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_value_error(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_sockaddr(raw)


# --- the kernel's answer (root) ------------------------------------------------------------------

PROBE = r"""
import json, socket, sys
from netshield.capture.origdst import original_dst, was_redirected
port = int(sys.argv[1])
targets = [(sys.argv[2], 4321), (sys.argv[3], 4321), ("127.0.0.1", port)]
listeners = {}
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(8); s.settimeout(5)
    listeners[family] = s
out = []
for host, tport in targets:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    c = socket.create_connection((host, tport), timeout=5)
    conn, _ = listeners[family].accept()
    found = original_dst(conn)
    out.append({"dialled": f"{host}:{tport}", "original": None if found is None else str(found),
                "redirected": was_redirected(conn, found)})
    conn.close(); c.close()
print(json.dumps(out))
"""

UNCAPTURED = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], 4321), timeout=5).close()
    print("connected")
except OSError as err:
    print(type(err).__name__)
"""


@pytest.fixture(scope="module")
def captured_host() -> Iterator[tuple[Lab, str, str]]:
    reason = have_root_tools()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="netshield-origdst-"))
    root.chmod(0o755)
    lab = Lab(root)
    try:
        host = lab.add_host("h", 1)
        peer = lab.add_host("peer", 2)  # nothing listens there: an uncaptured dial is refused
        host.run(
            sys.executable, "-m", "netshield", "iptables", "install",
            "--proxy-uid", str(SIDECAR_UID), "--inbound-ports", "", "--outbound-port", "15001",
        )  # fmt: skip
        yield lab, peer.ip, peer.ip6
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.root
def test_kernel_hands_back_the_original_destination_for_ipv4_and_ipv6(
    captured_host: tuple[Lab, str, str],
) -> None:
    lab, ip4, ip6 = captured_host
    found = json.loads(lab.hosts["h"].run(sys.executable, "-c", PROBE, "15001", ip4, ip6))
    assert found[0] == {"dialled": f"{ip4}:4321", "original": f"{ip4}:4321", "redirected": True}
    assert found[1] == {"dialled": f"{ip6}:4321", "original": f"[{ip6}]:4321", "redirected": True}
    # dialled directly, the capture port is no redirect: the flows refuse such connections
    assert found[2]["redirected"] is False


@pytest.mark.root
def test_the_sidecar_uid_is_not_captured(captured_host: tuple[Lab, str, str]) -> None:
    lab, ip4, ip6 = captured_host
    host = lab.hosts["h"]
    for target in (ip4, ip6):
        # root's dial is captured (and would reach a listener on 15001, see above); the sidecar
        # uid's dial goes out as it is and the peer, with nothing on 4321, refuses it
        assert host.run(
            *as_user(SIDECAR_UID), sys.executable, "-c", UNCAPTURED, target
        ).strip() == ("ConnectionRefusedError")
