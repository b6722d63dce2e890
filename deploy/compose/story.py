"""The compose demo's story: the same steps as `netshield demo`, played across containers.

    python3 story.py narrate   # in frontend's network namespace: calls, revokes, narrates
    python3 story.py attack    # on the network, no sidecar: looks for keys, plaintext, a
                               # self-made certificate, a tampered workload measured by the
                               # host's platform, a platform with old firmware

The narrator reads every outcome from where an operator would: the sidecars' connection records
(in the shared volume) and the CAS audit log (with the operator credential). It prints one line
per step with expected and observed outcome and exits 0 only if every step behaved.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from netshield.demo import (
    Narrator,
    http_get_through,
    read_records,
    record_words,
    verify_audit,
    wait_reattested,
    wait_record,
)
from netshield.intruder import present_self_made
from netshield.operator import admin_client
from netshield.trustdomain import load_admin

RECORDS = Path("/records")  # the `records` volume
OPERATOR = Path("/operator")  # the admin credential: only the operator's container mounts it
MESH_CA = Path("/public/mesh-ca.pem")
CAS_URL = os.environ.get("NETSHIELD_CAS", "https://cas:8443")
TRUST_DOMAIN = os.environ.get("NETSHIELD_TRUST_DOMAIN", "compose.netshield.local")
ORDERS = os.environ.get("ORDERS_ADDR", "127.0.0.1:15101")  # frontend's way to orders
ORDERS_SIDECAR = os.environ.get("ORDERS_SIDECAR", "orders:15001")  # what the attacker aims at
LEGACY = os.environ.get("LEGACY_ADDR", "legacy:8080")  # the native service, dialled as always
INGRESS = os.environ.get("INGRESS_ADDR", "frontend:8090")  # frontend's ingress WAF route to orders
ADMIN = "127.0.0.1:15000"  # frontend's sidecar admin listener (same network namespace)
WAIT = 90.0  # other containers' steps may still be starting
ATTACKER = Path("/attacker")
ATTACKER_DONE = ATTACKER / "done"


def say(text: str) -> None:
    print(text, flush=True)


async def wait_for_file(path: Path, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        await asyncio.sleep(0.2)
    return False


def has_reason(reason: str, rec: dict[str, Any]) -> bool:
    return rec.get("reason") == reason


async def audit_deny(reason: str, timeout: float = WAIT) -> dict[str, Any] | None:
    """The first attest.deny entry with `reason` in the CAS audit log (polled)."""
    deadline = time.monotonic() + timeout
    admin = load_admin(OPERATOR)
    while time.monotonic() < deadline:
        async with admin_client(CAS_URL, admin) as cas:
            entries = (await cas.audit(since=0, limit=1000))["entries"]
        for entry in entries:
            data = entry.get("data", {})
            if entry.get("event") == "attest.deny" and data.get("reason") == reason:
                return dict(data)
        await asyncio.sleep(0.5)
    return None


async def narrate() -> int:
    n = Narrator(sys.stdout, color=False)
    say("netshield compose demo: services talk only through attested mutual TLS sidecars")
    say(f"connection records: {RECORDS}/<service>.jsonl (volume `records`)")
    ready = subprocess.run(
        ["netshield", "wait", "--admin", ADMIN, "--timeout", "120", "--quiet"], check=False
    )
    if ready.returncode != 0:
        say("the frontend sidecar never became ready: nothing to narrate")
        return 1
    orders_log, intruder_log = RECORDS / "orders.jsonl", RECORDS / "intruder.jsonl"

    answer = await http_get_through(ORDERS, "/")
    rec = await wait_record(
        orders_log,
        lambda r: (
            r.get("direction") == "inbound"
            and str(r.get("peer_identity", "")).endswith("/svc/frontend")
        ),
    )
    status_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    n.step(
        "frontend calls orders through its sidecar",
        "allowed, mutual TLS 1.3",
        f"{status_line or 'no answer'}; {record_words(rec, 'orders', 'tls_version')}",
        b" 200 " in answer[:20]
        and rec is not None
        and rec.get("decision") == "allow"
        and rec.get("tls_version") == "TLSv1.3",
    )
    rec = await wait_record(
        intruder_log, lambda r: r.get("reason") == "PEER_NOT_AUTHORIZED", timeout=WAIT
    )
    n.step(
        "intruder (attested, but not in orders' allowed_callers) calls orders",
        "denied PEER_NOT_AUTHORIZED",
        record_words(rec, "intruder"),
        rec is not None and rec.get("decision") == "deny" and rec.get("bytes_out", 0) == 0,
    )
    for reason, title in (
        ("TLS_HANDSHAKE_FAILED", "the attacker sends plaintext to orders' sidecar"),
        ("PEER_CERT_UNTRUSTED", "the attacker presents a self-made certificate"),
    ):
        rec = await wait_record(orders_log, functools.partial(has_reason, reason), WAIT)
        n.step(
            title,
            f"denied {reason}, no byte to orders",
            record_words(rec, "orders"),
            rec is not None and rec.get("decision") == "deny",
        )
    await wait_for_file(ATTACKER_DONE)
    try:
        results = json.loads((ATTACKER / "results.json").read_text())
    except (OSError, ValueError):
        results = {}
    keys = results.get("keys")
    n.step(
        "the attacker looks for the mesh CA, platform, vendor and admin keys in its container",
        "none readable (each key is on its own volume, in one container)",
        f"readable private keys: {keys}" if keys is not None else "no result from the attacker",
        keys == [],
    )
    for reason, title in (
        (
            "MEASUREMENT_NOT_ALLOWED",
            "the attacker runs a tampered build of orders; the host's platform measures it",
        ),
        ("TCB_OUT_OF_DATE", "orders starts on platform p-old-firmware (TCB 3 < 5)"),
    ):
        entry = await audit_deny(reason)
        observed = (
            f"the CAS audit log says attest.deny {entry.get('reason')} "
            f"(platform {entry.get('platform_id')})"
            if entry
            else "no such refusal in the CAS audit log"
        )
        n.step(title, f"refused {reason} at attestation", observed, entry is not None)
    await revocation_step(n, orders_log)
    await waf_step(n, RECORDS / "frontend.jsonl")
    ingress_step(n, results, RECORDS / "frontend.jsonl")
    verdict, ok = await verify_audit(CAS_URL, OPERATOR)
    n.step("operator verifies the CAS audit log", "an intact hash chain", verdict, ok)
    say(f"\nevery connection left one JSON record in {RECORDS}/; read them with:")
    say(f"  docker-compose exec orders-sidecar netshield logs {orders_log}")
    say(f"  docker-compose exec orders-sidecar netshield logs --denied {orders_log}")
    if n.all_ok:
        say(f"\nall {len(n.results)} steps behaved as expected.")
        return 0
    failed = sum(1 for ok in n.results if not ok)
    say(f"\n{failed} of {len(n.results)} steps did not behave as expected.")
    return 1


async def waf_step(n: Narrator, frontend_log: Path) -> None:
    """frontend dials the native `legacy` service as always; capture sends it through the WAF."""
    benign = await http_get_through(LEGACY, "/")
    attack = await http_get_through(LEGACY, "/?id=1'%20OR%20'1'='1")
    rec = await wait_record(
        frontend_log,
        lambda r: has_reason("WAF_BLOCKED", r) and r.get("listener") != "ingress:orders",
        WAIT,
    )
    rules = (rec or {}).get("waf") or {}
    benign_line = benign.split(b"\r\n", 1)[0].decode(errors="replace")
    attack_line = attack.split(b"\r\n", 1)[0].decode(errors="replace")
    n.step(
        "frontend sends legacy (native, WAF route) a benign request and an SQL injection",
        "benign 200; injection 403 WAF_BLOCKED",
        f"benign {benign_line or 'no answer'}; injection {attack_line or 'no answer'} "
        f"rules {rules.get('rule_ids')}; {record_words(rec, 'frontend')}",
        " 200 " in benign_line
        and " 403 " in attack_line
        and rec is not None
        and rec.get("decision") == "deny"
        and "942100" in (rules.get("rule_ids") or [])  # ModSecurity + OWASP CRS
        and rules.get("engine") == "crs",
    )


def ingress_step(n: Narrator, results: dict[str, Any], frontend_log: Path) -> None:
    """The attacker container, a native client without a sidecar, calls orders through
    frontend's ingress WAF route: a benign request passes over mesh mTLS, an XSS does not."""
    statuses = results.get("ingress") or []
    recs = [
        r
        for r in read_records(frontend_log)
        if r.get("listener") == "ingress:orders" and r.get("reason") == "WAF_BLOCKED"
    ]
    rules = (recs[0].get("waf") or {}).get("rule_ids") if recs else None
    n.step(
        "a native client (the attacker container, no sidecar) calls orders through frontend's "
        "ingress WAF route",
        "benign 200 from orders over mesh mTLS; XSS 403 WAF_BLOCKED",
        f"statuses {statuses}; rules {rules}",
        statuses == [200, 403] and bool(rules),
    )


async def revocation_step(n: Narrator, orders_log: Path) -> None:
    title = "operator revokes the frontend instance during a long call to orders"
    expected = "cut off within 5 s, PEER_REVOKED"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{ADMIN}/identity") as resp,
    ):
        serial = str((await resp.json()).get("serial", ""))
    host, port = ORDERS.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    cut, took = False, 0.0
    try:
        writer.write(b"GET /stream HTTP/1.0\r\nHost: orders\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"order update 0"), 20)
        revoked_at = time.monotonic()
        async with admin_client(CAS_URL, load_admin(OPERATOR)) as admin:
            await admin.revoke("instance", serial, "compose demo: instance decommissioned")
        try:
            while await asyncio.wait_for(reader.read(65536), 20):
                pass
            cut = True
        except ConnectionError:
            cut = True
        except TimeoutError:
            cut = False
        took = time.monotonic() - revoked_at
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
        n.step(title, expected, f"the step broke: {err}", False)
        return
    finally:
        writer.close()
    rec = await wait_record(
        orders_log,
        lambda r: r.get("close_reason") == "PEER_REVOKED" and r.get("peer_serial") == serial,
    )
    observed = (
        f"the stream stopped {took:.2f} s after the revocation; "
        f"{record_words(rec, 'orders', 'close_reason')}"
        if cut
        else "the stream went on"
    )
    n.step(f"{title} (serial {serial})", expected, observed, cut and took < 5 and rec is not None)
    # the revoked instance re-attests with a fresh key (a new serial); let it settle
    await wait_reattested(ADMIN, serial)


# --- the attacker ----------------------------------------------------------------------------------
def plaintext_attempt() -> str:
    host, port = ORDERS_SIDECAR.rsplit(":", 1)
    got = b""
    try:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: orders\r\n\r\n")
            while chunk := s.recv(65536):
                got += chunk
    except OSError as err:
        return f"plaintext to {ORDERS_SIDECAR}: {type(err).__name__} after {len(got)} bytes"
    return f"plaintext to {ORDERS_SIDECAR}: {len(got)} bytes came back ({got[:40]!r})"


def self_made_certificate_attempt() -> str:
    presented = present_self_made(ORDERS_SIDECAR, trust_domain=TRUST_DOMAIN)
    return f"a self-made 'frontend' certificate: {presented.detail}"


def refused_sidecar(work: Path, name: str, platform_socket: Path, port: int) -> str:
    """Run a real sidecar for orders on the host's platform service and report what `netshield
    wait` says about it: the platform measures this container's /workload (a tampered build)."""
    config = {
        "service": "orders",
        "cas": {"url": CAS_URL, "ca": str(MESH_CA)},
        "platform": {"socket": str(platform_socket)},
        "admin": {"listen": f"127.0.0.1:{port}"},
        "records": {"file": str(work / f"{name}.jsonl")},
        "inbound": {"listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    with (work / f"{name}.log").open("wb") as log:
        sidecar = subprocess.Popen(
            ["netshield", "sidecar", "--config", str(path)], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + WAIT  # a busy host may take a while to attest
        while True:
            wait = subprocess.run(
                ["netshield", "wait", "--admin", f"127.0.0.1:{port}", "--timeout", "3"],
                check=False,
                capture_output=True,
                text=True,
            )
            refused = "last attestation error" in wait.stderr
            if wait.returncode == 0 or refused or time.monotonic() > deadline:
                break
    finally:
        sidecar.terminate()
        sidecar.wait(timeout=20)
    if wait.returncode == 0:
        return f"{name}: got a certificate!"
    return f"{name}: {wait.stderr.strip().removeprefix('netshield: error: ')}"


def ingress_attempt() -> list[int]:
    """As a native client: a benign request and an XSS to frontend's ingress WAF route."""
    host, port = INGRESS.rsplit(":", 1)
    deadline = time.monotonic() + WAIT
    statuses: list[int] = []
    for target in ("/?customer=O%27Brien", "/?q=%3Cscript%3Ealert(1)%3C/script%3E"):
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, int(port)), timeout=10) as s:
                    s.sendall(
                        f"GET {target} HTTP/1.1\r\nHost: orders\r\nUser-Agent: curl/8\r\n"
                        "Accept: */*\r\nConnection: close\r\n\r\n".encode()
                    )
                    head = s.recv(65536)
                statuses.append(int(head.split(b" ", 2)[1]))
                break
            except (OSError, IndexError, ValueError):
                time.sleep(1)
    return statuses


def attack() -> int:
    from probe import readable_private_keys

    work = Path(tempfile.mkdtemp(prefix="attacker-"))
    keys = readable_private_keys()
    say(f"attacker: private keys readable in this container: {keys or 'none'}")
    say(f"attacker: {plaintext_attempt()}")
    say(f"attacker: {self_made_certificate_attempt()}")
    current, old = Path("/run/netshield/platform.sock"), Path("/run/netshield-old/platform.sock")
    tampered = refused_sidecar(work, "tampered-orders", current, 15010)
    say(f"attacker: {tampered}")
    say("old firmware: " + refused_sidecar(work, "orders-on-old-firmware", old, 15011))
    ingress = ingress_attempt()
    say(f"attacker: as a native client through frontend's ingress WAF route: {ingress}")
    (ATTACKER / "results.json").write_text(
        json.dumps({"keys": keys, "tampered": tampered, "ingress": ingress})
    )
    say("attacker: done")
    ATTACKER_DONE.write_text("done\n")
    return 0


def main() -> int:
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "narrate":
        return asyncio.run(narrate())
    if role == "attack":
        return attack()
    print("usage: story.py narrate|attack", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
