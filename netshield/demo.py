"""`netshield demo`: the whole shield on one machine, no Docker, narrated step by step.

It makes a throwaway trust domain, starts the CAS, the host's platform service and five sidecars
as real processes (orders and frontend, the two confidential services the policy lets talk;
intruder, a service the policy does not allow to call orders, which quotes through the platform
service; a tampered build of orders; orders on a platform with old firmware) and plays what
the shield guarantees: frontend reaches orders; intruder is denied; the intruder's quote for
orders measures its own workload and is refused, and so is a certificate it made itself; the
tampered build and the old platform are refused at attestation; a replayed quote is refused;
a revoked instance is cut off mid-connection; an SQL injection sent to inventory (a native HTTP
service behind a WAF route) is blocked while a benign request passes; the CAS audit log
verifies. Each step prints one line with what was expected and what was observed, read from the
sidecars' connection records and admin APIs. The exit code is 0 only if every step behaved.

Without `--keep-running` every process is stopped at the end and the throwaway trust domain
(with its private keys) is deleted; the connection records and process logs stay for reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from netshield.attestation.measurement import measure
from netshield.attestation.platform import Platform, create_platform, save_platform
from netshield.attestation.quote import report_data_for
from netshield.casclient import CasClient, CasRefused
from netshield.errors import NetshieldError
from netshield.identity import SpiffeId
from netshield.intruder import attest_as, present_self_made
from netshield.operator import admin_client, audit_online
from netshield.pki.ca import load_ca
from netshield.pki.csr import build_csr
from netshield.pki.keys import generate_key, public_key_der
from netshield.serving import stop_on_signals
from netshield.tls.material import cas_client_context
from netshield.trustdomain import Layout, create_trust_domain, load_admin

TRUST_DOMAIN = "demo.netshield.local"
ENTRY = ["python3", "app.py"]
READY_TIMEOUT = 30.0
STEP_TIMEOUT = 15.0
APP_CODE = {
    "orders": b'print("orders service: pretend to serve orders")\n',
    "frontend": b'print("frontend: pretend to render pages")\n',
    "intruder": b'print("intruder: pretend to be a harmless batch job")\n',
}
TAMPERED_CODE = APP_CODE["orders"].replace(b"serve", b"steal")
_REFUSED = re.compile(r"CAS refused: ([A-Z][A-Z_]+)")

DEMO_POLICY = """\
# netshield demo policy (made by `netshield demo`)
trust_domain: {td}
certificates:
  lifetime: 10m
  min_epoch: 1
platforms:
  min_tcb: 5
  allow_debug: false
services:
  orders:
    measurements: ["{orders}"]
    allowed_callers: [frontend]
    addresses: ["{orders_address}"]
  frontend:
    measurements: ["{frontend}"]
  intruder:
    measurements: ["{intruder}"]
native_services:
  inventory:
    address: "{inventory_address}"
    waf: true
"""


@dataclass
class Narrator:
    out: IO[str]
    color: bool
    results: list[bool] = field(default_factory=list)

    def _mark(self, ok: bool) -> str:
        mark = "[ok]  " if ok else "[FAIL]"
        if not self.color:
            return mark
        return f"\x1b[{32 if ok else 31}m{mark}\x1b[0m"

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str, expected: str, observed: str, ok: bool) -> None:
        """One line per step: what happened, what was expected, what was observed."""
        self.results.append(ok)
        n = len(self.results)
        self.say(f"{self._mark(ok)} {n:>2}. {title}: expected {expected}; observed {observed}")

    @property
    def all_ok(self) -> bool:
        return all(self.results) and bool(self.results)


async def expect_refusal(
    n: Narrator, title: str, expected: str, action: Callable[[], Awaitable[Any]]
) -> None:
    """A step whose right outcome is the CAS refusing with reason code `expected`."""
    try:
        await action()
    except CasRefused as err:
        n.step(title, f"refused {expected}", f"refused {err.code}", err.code == expected)
        return
    n.step(title, f"refused {expected}", "a certificate was issued", False)


# --- processes -----------------------------------------------------------------------------------
@dataclass
class Child:
    """A netshield process started by the demo; `ready` is its ready line (None: not ready)."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    ready: dict[str, Any] | None = None

    def listen(self, key: str) -> str:
        assert self.ready is not None
        return str(self.ready["listen"][key])

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


@dataclass
class Children:
    logs: Path
    started: list[Child] = field(default_factory=list)

    async def spawn(self, name: str, *args: str, wait_ready: bool = True) -> Child:
        """Start `netshield ARGS`; with wait_ready, return once it printed its ready line."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "netshield",
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if wait_ready else asyncio.subprocess.DEVNULL,
                stderr=log_file,
            )
        child = Child(name, proc, log)
        self.started.append(child)
        if wait_ready:
            child.ready = await _ready_line(child)
        return child

    async def stop_all(self) -> None:
        await asyncio.gather(*(c.stop() for c in reversed(self.started)))


async def _ready_line(child: Child) -> dict[str, Any]:
    assert child.proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = await asyncio.wait_for(child.proc.stdout.readline(), left)
        except TimeoutError:
            break
        if not line:
            raise NetshieldError(f"the {child.name} process exited early; see {child.log}")
        with contextlib.suppress(ValueError):
            ready = json.loads(line)
            if isinstance(ready, dict) and ready.get("event") == "ready":
                return ready
    raise NetshieldError(f"{child.name} was not ready within {READY_TIMEOUT:g} s; see {child.log}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the orders application (plain HTTP on loopback, behind its sidecar) ------------------------
async def _orders_index(_request: web.Request) -> web.Response:
    return web.Response(text="orders: 3 open orders\n")


async def _orders_stream(request: web.Request) -> web.StreamResponse:
    """A long answer (one line every 200 ms): a connection to cut off mid-flight."""
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        for i in range(300):
            await resp.write(f"order update {i}\n".encode())
            await asyncio.sleep(0.2)
    return resp


@contextlib.asynccontextmanager
async def serve_on_loopback(app: web.Application) -> AsyncIterator[str]:
    """Serve a demo application on 127.0.0.1, port 0; yields its ``host:port``."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def orders_app() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/", _orders_index)
    app.router.add_get("/stream", _orders_stream)
    async with serve_on_loopback(app) as address:
        yield address


# --- the inventory application: a native (non-attested) HTTP service behind a WAF route -------
@contextlib.asynccontextmanager
async def inventory_app() -> AsyncIterator[tuple[str, list[str]]]:
    """A plain HTTP service; yields its address and the request targets that reached it."""
    seen: list[str] = []

    async def index(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.Response(text="inventory: 12 items in stock\n")

    app = web.Application()
    app.router.add_get("/{tail:.*}", index)
    async with serve_on_loopback(app) as address:
        yield address, seen


# --- small clients -------------------------------------------------------------------------------
async def http_get_through(address: str, path: str, timeout: float = STEP_TIMEOUT) -> bytes:
    """GET through a plaintext listener (an outbound listener); everything that came back."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: orders\r\nUser-Agent: netshield-demo\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            return await asyncio.wait_for(reader.read(), timeout)
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _admin_json(session: ClientSession, admin: str, path: str) -> dict[str, Any]:
    try:
        async with session.get(f"http://{admin}{path}") as resp:
            doc = await resp.json(content_type=None)
    except (ClientError, TimeoutError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def read_records(path: Path) -> list[dict[str, Any]]:
    """The connection records in a record file (one JSON object a line); [] when absent."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                records.append(doc)
    return records


async def wait_record(
    path: Path, pred: Callable[[dict[str, Any]], bool], timeout: float = STEP_TIMEOUT
) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in read_records(path):
            if pred(rec):
                return rec
        await asyncio.sleep(0.05)
    return None


def record_words(rec: dict[str, Any] | None, who: str, field: str = "reason") -> str:
    if rec is None:
        return f"no matching record in the {who} connection log"
    return (
        f"the {who} sidecar recorded {rec.get('decision')} {field} {rec.get(field)} "
        f"(conn {rec.get('conn_id')})"
    )


# --- the story -----------------------------------------------------------------------------------
async def run_demo(
    *, keep: bool = False, workdir: Path | None = None, out: IO[str] | None = None
) -> int:
    stream = out or sys.stdout
    narrator = Narrator(stream, color=stream.isatty())
    temp = workdir is None
    base = Path(tempfile.mkdtemp(prefix="netshield-demo-")) if workdir is None else workdir
    base.mkdir(parents=True, exist_ok=True)
    try:
        await _play(narrator, base, keep=keep)
    finally:
        if temp:  # the throwaway trust domain goes; the records and logs stay for reading
            for part in ("trust-domain", "platforms", "workloads", "config"):
                shutil.rmtree(base / part, ignore_errors=True)
    if temp:
        narrator.say(
            f"\nthe throwaway trust domain is deleted; the records and process logs stay in {base}"
        )
    if narrator.all_ok:
        narrator.say(f"\nall {len(narrator.results)} steps behaved as expected.")
        return 0
    failed = sum(1 for ok in narrator.results if not ok)
    narrator.say(f"\n{failed} of {len(narrator.results)} steps did not behave as expected.")
    return 1


@dataclass
class Stage:
    """Everything the steps need: where things are and how to reach them."""

    base: Path
    layout: Layout
    cas_url: str
    sidecars: dict[str, Child]
    admin_ports: dict[str, str]  # the admin listeners of the sidecars that never become ready
    platform_socket: Path  # the host's platform service (the intruder's sidecar quotes there)

    @property
    def records(self) -> Path:
        return self.base / "records"

    def record_file(self, service: str) -> Path:
        return self.records / f"{service}.jsonl"

    def admin(self, name: str) -> str:
        child = self.sidecars.get(name)
        if child is not None and child.ready is not None:
            return child.listen("admin")
        return self.admin_ports[name]


def _prepare(n: Narrator, base: Path) -> tuple[Layout, dict[str, str], Platform]:
    """The throwaway trust domain, workloads, platforms and policy on disk."""
    now = datetime.now(UTC)
    layout = Layout(base / "trust-domain")
    create_trust_domain(layout.root, trust_domain=TRUST_DOMAIN, admin_name="operator", now=now)
    vendor = load_ca(layout.vendor_dir / "vendor-root.pem", layout.vendor_dir / "vendor-root.key")
    measured: dict[str, str] = {}
    for name, code in (*APP_CODE.items(), ("orders-tampered", TAMPERED_CODE)):
        root = base / "workloads" / name
        root.mkdir(parents=True, exist_ok=True)
        (root / "app.py").write_bytes(code)
        measured[name] = measure(root, ENTRY)
    current = create_platform(vendor, platform_id="p-current", tcb_level=7, debug=False, now=now)
    old = create_platform(vendor, platform_id="p-old-firmware", tcb_level=3, debug=False, now=now)
    save_platform(current, base / "platforms" / "p-current")
    save_platform(old, base / "platforms" / "p-old-firmware")
    n.say(f"trust domain {TRUST_DOMAIN}: vendor root, mesh CA, operator credential, policy")
    n.say("  policy: orders accepts calls from frontend only; platforms need TCB level 5 or more")
    n.say(
        f"  orders measures {measured['orders'][:16]}…; "
        f"a tampered copy (one word changed) {measured['orders-tampered'][:16]}…"
    )
    return layout, measured, current


def _sidecar_config(
    base: Path, layout: Layout, cas_url: str, name: str, service: str, **sections: Any
) -> Path:
    workload = sections.pop("workload", service)
    platform = sections.pop("platform", "p-current")
    socket_path = sections.pop("platform_socket", None)
    quoting: dict[str, Any] = (
        {"platform": {"socket": str(socket_path)}}  # the host's platform measures the caller
        if socket_path is not None
        else {
            "platform": {"in_process": str(base / "platforms" / platform)},
            "workload": {"path": str(base / "workloads" / workload), "cmd": " ".join(ENTRY)},
        }
    )
    doc: dict[str, Any] = {
        "service": service,
        "cas": {
            "url": cas_url,
            "ca": str(layout.cas_state / "mesh-ca.pem"),
            "witness_file": str(base / "witness" / f"{name}.json"),
        },
        **quoting,
        "admin": {"listen": "127.0.0.1:0"},
        "records": {"file": str(base / "records" / f"{name}.jsonl")},
        "renewal": {"fraction": 0.5, "jitter": 0.1},
        **sections,
    }
    path = base / "config" / f"{name}.sidecar.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    (base / "witness").mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _platform_config(base: Path) -> tuple[Path, Path]:
    """The host's platform service for the intruder's uid (this user): its workload map says
    this uid runs the intruder's code, whatever a caller of that uid claims. (config, socket)"""
    home = base.resolve()  # the platform measures only real paths, no symlink on the way
    socket_path = home / "run" / "platform.sock"
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "platform": str(home / "platforms" / "p-current"),
        "socket": str(socket_path),
        "socket_mode": "0600",
        "workloads": [
            {
                "uid": os.getuid(),
                "path": str(home / "workloads" / "intruder"),
                "cmd": " ".join(ENTRY),
            }
        ],
    }
    path = base / "config" / "platform.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, socket_path


async def _play(n: Narrator, base: Path, *, keep: bool) -> None:
    n.say("netshield demo: services talk only through attested mutual TLS sidecars")
    n.say(f"work directory: {base}\n")
    (base / "logs").mkdir(exist_ok=True)
    (base / "records").mkdir(exist_ok=True)
    layout, measured, current = _prepare(n, base)
    orders_inbound = f"127.0.0.1:{_free_port()}"
    async with inventory_app() as (inventory_address, inventory_seen):
        layout.policy.write_text(
            DEMO_POLICY.format(
                td=TRUST_DOMAIN,
                orders=measured["orders"],
                frontend=measured["frontend"],
                intruder=measured["intruder"],
                orders_address=orders_inbound,
                inventory_address=inventory_address,
            )
        )
        children = Children(base / "logs")
        platform_config, platform_socket = _platform_config(base)
        try:
            async with orders_app() as app_address:
                cas, _platform = await asyncio.gather(
                    children.spawn(
                        "cas",
                        "cas",
                        "serve",
                        "--policy",
                        str(layout.policy),
                        "--state",
                        str(layout.cas_state),
                        "--listen",
                        "127.0.0.1:0",
                        "--counter",
                        str(base / "cas.counter"),
                    ),
                    children.spawn(
                        "platform", "platform", "serve", "--config", str(platform_config)
                    ),
                )
                assert cas.ready is not None
                url = str(cas.ready["url"])
                n.say(f"CAS running at {url}")
                n.say(
                    f"the host's platform service quotes on {platform_socket} (it measures its callers)"
                )
                stage = await _start_mesh(
                    n, children, base, layout, url, orders_inbound, app_address, platform_socket
                )
                await _data_plane_steps(n, stage)
                ca_pem = (layout.cas_state / "mesh-ca.pem").read_bytes()
                async with CasClient(url, ssl_context=cas_client_context(ca_pem=ca_pem)) as client:
                    await _intruder_steps(n, stage, client, measured)
                    await _attestation_refusal_steps(n, stage)
                    await _replay_step(n, client, current, measured["orders"])
                await _revocation_step(n, stage)
                await _waf_step(n, stage, inventory_seen)
                await _audit_step(n, stage)
                _print_logs(n, stage)
                if keep:
                    _print_try(n, stage)
                    await _until_stopped()
        finally:
            await children.stop_all()


async def _start_mesh(
    n: Narrator,
    children: Children,
    base: Path,
    layout: Layout,
    url: str,
    orders_inbound: str,
    app_address: str,
    platform_socket: Path,
) -> Stage:
    """Start the five sidecars at once; return when the three good ones are ready."""
    admin_ports = {"orders-tampered": f"127.0.0.1:{_free_port()}"}
    admin_ports["orders-old-tcb"] = f"127.0.0.1:{_free_port()}"

    def config(name: str, service: str, **sections: Any) -> str:
        return str(_sidecar_config(base, layout, url, name, service, **sections))

    outbound = [{"service": "orders", "listen": "127.0.0.1:0"}]
    specs: list[tuple[str, str, bool]] = [
        (
            "orders",
            config("orders", "orders", inbound={"listen": orders_inbound, "upstream": app_address}),
            True,
        ),
        (
            "frontend",
            config(
                "frontend",
                "frontend",
                outbound=[*outbound, {"service": "inventory", "listen": "127.0.0.1:0"}],
                waf={"engine": "auto"},  # ModSecurity + OWASP CRS when installed
                ingress=[{"listen": "127.0.0.1:0", "service": "orders"}],
            ),
            True,
        ),
        (
            "intruder",
            config("intruder", "intruder", outbound=outbound, platform_socket=platform_socket),
            True,
        ),
        (
            "orders-tampered",
            config(
                "orders-tampered",
                "orders",
                workload="orders-tampered",
                admin={"listen": admin_ports["orders-tampered"]},
                inbound={"listen": "127.0.0.1:0", "upstream": app_address},
            ),
            False,
        ),
        (
            "orders-old-tcb",
            config(
                "orders-old-tcb",
                "orders",
                platform="p-old-firmware",
                admin={"listen": admin_ports["orders-old-tcb"]},
                inbound={"listen": "127.0.0.1:0", "upstream": app_address},
            ),
            False,
        ),
    ]
    started = await asyncio.gather(
        *(
            children.spawn(f"sidecar-{name}", "sidecar", "--config", path, wait_ready=ready)
            for name, path, ready in specs
        )
    )
    sidecars = {name: child for (name, _p, _r), child in zip(specs, started, strict=True)}
    stage = Stage(base, layout, url, sidecars, admin_ports, platform_socket)
    n.say(
        f"sidecars attested and ready: orders (inbound {orders_inbound} -> app {app_address}), "
        f"frontend and intruder (outbound listeners to orders; the intruder's quote comes from "
        f"the platform service); frontend also has a WAF route "
        f"to inventory, a native HTTP service without a sidecar, and an ingress WAF route "
        f"for native clients of orders"
    )
    frontend_ready = sidecars["frontend"].ready or {}
    for line in frontend_ready.get("waf", []):
        n.say(f"  WAF route {line}")
    n.say(f"connection records: {stage.records}/<sidecar>.jsonl\n")
    return stage


async def _data_plane_steps(n: Narrator, stage: Stage) -> None:
    answer = await http_get_through(stage.sidecars["frontend"].listen("outbound:orders"), "/")
    status_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    rec = await wait_record(
        stage.record_file("orders"),
        lambda r: (
            r.get("direction") == "inbound"
            and str(r.get("peer_identity", "")).endswith("/svc/frontend")
        ),
    )
    got = answer.rsplit(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()
    n.step(
        "frontend calls orders through its sidecar",
        "allowed, mutual TLS 1.3",
        f"{status_line or 'no answer'} {got!r}; {record_words(rec, 'orders', 'tls_version')}",
        " 200 " in status_line
        and rec is not None
        and rec.get("decision") == "allow"
        and rec.get("tls_version") == "TLSv1.3",
    )

    answer = await http_get_through(stage.sidecars["intruder"].listen("outbound:orders"), "/")
    rec = await wait_record(
        stage.record_file("intruder"), lambda r: r.get("reason") == "PEER_NOT_AUTHORIZED"
    )
    n.step(
        "intruder (attested, but not in orders' allowed_callers) calls orders",
        "denied PEER_NOT_AUTHORIZED, no byte through",
        f"{len(answer)} bytes back; {record_words(rec, 'intruder')}",
        answer == b"" and rec is not None and rec.get("decision") == "deny",
    )


async def _intruder_steps(
    n: Narrator, stage: Stage, cas: CasClient, measured: dict[str, str]
) -> None:
    """The intruder, holding its own service's uid, tries to become orders and frontend."""
    tried = await attest_as(cas, stage.platform_socket, "orders", trust_domain=TRUST_DOMAIN)
    got = tried.measurement or ""
    whose = {m: name for name, m in measured.items()}.get(got, "nobody's")
    n.step(
        "intruder asks the host's platform service for a quote to attest as orders (orders' "
        "measurement is public in the policy)",
        "a quote of its own workload, refused MEASUREMENT_NOT_ALLOWED",
        f"the platform measured {got[:16] or 'nothing'}… ({whose}; orders' is "
        f"{measured['orders'][:16]}…); refused {tried.outcome}",
        got == measured["intruder"] and tried.outcome == "MEASUREMENT_NOT_ALLOWED",
    )
    presented = await asyncio.to_thread(
        present_self_made,
        stage.sidecars["orders"].listen("inbound"),
        trust_domain=TRUST_DOMAIN,
        measurement=measured["frontend"],
    )
    rec = await wait_record(
        stage.record_file("orders"), lambda r: r.get("reason") == "PEER_CERT_UNTRUSTED"
    )
    n.step(
        "intruder presents a certificate for frontend from a CA of its own to orders",
        "refused PEER_CERT_UNTRUSTED, no byte through",
        f"{presented.detail}, {len(presented.got)} bytes back; {record_words(rec, 'orders')}",
        presented.refused and rec is not None and rec.get("decision") == "deny",
    )


def _rule_of_sqli(rules: list[str]) -> str | None:
    """The SQL injection rule that fired: CRS 942100 (libinjection) or the compact NS-942100."""
    return next((r for r in rules if r in ("942100", "NS-942100")), None)


async def _waf_step(n: Narrator, stage: Stage, seen: list[str]) -> None:
    route = stage.sidecars["frontend"].listen("outbound:inventory")
    benign = await http_get_through(route, "/items?supplier=O%27Reilly")
    attack = await http_get_through(route, "/items?id=1'%20OR%20'1'='1")
    rec = await wait_record(
        stage.record_file("frontend"),
        lambda r: r.get("reason") == "WAF_BLOCKED" and r.get("listener") != "ingress:orders",
    )
    waf = (rec or {}).get("waf") or {}
    rule = _rule_of_sqli(waf.get("rule_ids") or [])
    benign_line = benign.split(b"\r\n", 1)[0].decode(errors="replace")
    attack_line = attack.split(b"\r\n", 1)[0].decode(errors="replace")
    reached = [target for target in seen if "id=" in target]
    n.step(
        "frontend sends inventory (native, WAF route) a benign request with an apostrophe and "
        "an SQL injection",
        "benign 200; injection 403 WAF_BLOCKED with its rule id, never reaches inventory",
        f"benign {benign_line or 'no answer'}; injection {attack_line or 'no answer'} "
        f"rule {rule} ({waf.get('engine') or '?'} engine, rules {waf.get('rule_ids')}); "
        f"{record_words(rec, 'frontend')}; {len(reached)} injected requests reached inventory",
        " 200 " in benign_line
        and " 403 " in attack_line
        and rec is not None
        and rec.get("decision") == "deny"
        and rule is not None
        and not reached
        and "/items?supplier=O%27Reilly" in seen,
    )
    await _ingress_step(n, stage)


async def _ingress_step(n: Narrator, stage: Stage) -> None:
    route = stage.sidecars["frontend"].listen("ingress:orders")
    benign = await http_get_through(route, "/?customer=O%27Brien")
    attack = await http_get_through(route, "/?q=%3Cscript%3Ealert(1)%3C/script%3E")
    rec = await wait_record(
        stage.record_file("frontend"),
        lambda r: r.get("listener") == "ingress:orders" and r.get("reason") == "WAF_BLOCKED",
    )
    benign_line = benign.split(b"\r\n", 1)[0].decode(errors="replace")
    attack_line = attack.split(b"\r\n", 1)[0].decode(errors="replace")
    waf = (rec or {}).get("waf") or {}
    n.step(
        "a native client (no sidecar) calls orders through frontend's ingress WAF route",
        "benign 200 from orders over mesh mTLS; XSS 403 WAF_BLOCKED at the ingress",
        f"benign {benign_line or 'no answer'}; XSS {attack_line or 'no answer'} "
        f"rules {waf.get('rule_ids')}",
        " 200 " in benign_line and " 403 " in attack_line and bool(waf.get("rule_ids")),
    )


async def _refusal_seen(admin: str, timeout: float = STEP_TIMEOUT) -> tuple[str, bool]:
    """The CAS's refusal code in a never-ready sidecar's /status, and whether /readyz is 503."""
    deadline = time.monotonic() + timeout
    code, not_ready = "", False
    async with ClientSession(timeout=ClientTimeout(total=3)) as session:
        while time.monotonic() < deadline:
            status = await _admin_json(session, admin, "/status")
            last = status.get("agent", {}).get("last_error") if status else None
            match = _REFUSED.search(last) if isinstance(last, str) else None
            if match:
                ready = await _admin_json(session, admin, "/readyz")
                return match.group(1), ready.get("ready") is False
            await asyncio.sleep(0.1)
    return code, not_ready


async def _attestation_refusal_steps(n: Narrator, stage: Stage) -> None:
    for name, title, expected in (
        (
            "orders-tampered",
            "a tampered build of orders starts with its sidecar",
            "MEASUREMENT_NOT_ALLOWED",
        ),
        (
            "orders-old-tcb",
            "orders starts on platform p-old-firmware (TCB 3 < 5)",
            "TCB_OUT_OF_DATE",
        ),
    ):
        code, not_ready = await _refusal_seen(stage.admin(name))
        observed = (
            f"refused {code}, the sidecar holds no certificate (/readyz 503)"
            if code
            else "no refusal seen"
        )
        n.step(
            title, f"refused {expected} at attestation", observed, code == expected and not_ready
        )
        # it would retry forever (with backoff): the story has shown what it needed
        await stage.sidecars[name].stop()


async def _replay_step(n: Narrator, cas: CasClient, platform: Platform, good_m: str) -> None:
    key = generate_key()
    csr = build_csr(key, SpiffeId.for_service(TRUST_DOMAIN, "orders"))
    nonce = await cas.nonce()
    quote = platform.quote(
        measurement=good_m,
        signer="0" * 64,
        product_id=0,
        svn=0,
        report_data=report_data_for(public_key_der(key.public_key()), nonce),
    )
    await cas.attest(service="orders", nonce=nonce, quote=quote, csr_pem=csr)
    await expect_refusal(
        n,
        "an eavesdropper replays a captured quote",
        "NONCE_REUSED",
        lambda: cas.attest(service="orders", nonce=nonce, quote=quote, csr_pem=csr),
    )


async def _revocation_step(n: Narrator, stage: Stage) -> None:
    title = "operator revokes the frontend instance during a long call to orders"
    expected = "cut off within 5 s, PEER_REVOKED"
    async with ClientSession(timeout=ClientTimeout(total=5)) as session:
        ident = await _admin_json(session, stage.admin("frontend"), "/identity")
    serial = str(ident.get("serial", ""))
    host, port = stage.sidecars["frontend"].listen("outbound:orders").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /stream HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"order update 0"), STEP_TIMEOUT)
        revoked_at = time.monotonic()
        async with admin_client(stage.cas_url, load_admin(stage.layout.admin_dir)) as admin:
            await admin.revoke("instance", serial, "demo: instance decommissioned")
        cut = False
        try:
            while await asyncio.wait_for(reader.read(65536), STEP_TIMEOUT):
                pass
            cut = True
        except ConnectionError:
            cut = True  # reset: the caller sees the cut, not a clean end of the response
        except TimeoutError:
            pass
        took = time.monotonic() - revoked_at
    except (OSError, TimeoutError, asyncio.IncompleteReadError, CasRefused) as err:
        n.step(title, expected, f"the step broke: {err}", False)
        return
    finally:
        writer.close()
    rec = await wait_record(
        stage.record_file("orders"),
        lambda r: r.get("close_reason") == "PEER_REVOKED" and r.get("peer_serial") == serial,
    )
    observed = (
        f"the stream stopped {took:.2f} s after the revocation; {record_words(rec, 'orders', 'close_reason')}"
        if cut
        else "the stream went on"
    )
    n.step(
        f"{title} (serial {serial})",
        expected,
        observed,
        bool(first) and cut and took < 5 and rec is not None,
    )
    # the revoked instance re-attests with a fresh key (a new serial); let it settle
    await wait_reattested(stage.admin("frontend"), serial)


async def wait_reattested(admin: str, old_serial: str, timeout: float = STEP_TIMEOUT) -> bool:
    """True once the sidecar at `admin` holds a certificate with another serial than `old_serial`."""
    deadline = time.monotonic() + timeout
    async with ClientSession(timeout=ClientTimeout(total=3)) as session:
        while time.monotonic() < deadline:
            ident = await _admin_json(session, admin, "/identity")
            if ident.get("serial") not in (None, old_serial):
                return True
            await asyncio.sleep(0.1)
    return False


async def verify_audit(url: str, admin_dir: Path, attempts: int = 3) -> tuple[str, bool]:
    """`netshield cas audit --verify` online: the verdict line and whether the log is intact.

    A verdict taken while the CAS appends can see the counter one entry ahead of the entries it
    read; a real break persists, so a few reads a moment apart settle it.
    """
    verdict, ok = "", False
    for attempt in range(attempts):
        lines, ok = await audit_online(
            url, load_admin(admin_dir), since=0, limit=0, verify=True, as_json=False
        )
        verdict = " ".join(line.strip() for line in lines).removeprefix("audit log ")
        if ok:
            break
        if attempt + 1 < attempts:
            await asyncio.sleep(0.5)
    return verdict, ok


async def _audit_step(n: Narrator, stage: Stage) -> None:
    verdict, ok = await verify_audit(stage.cas_url, stage.layout.admin_dir)
    n.step(
        "operator verifies the CAS audit log", "an intact hash chain the CAS signed", verdict, ok
    )


def _print_logs(n: Narrator, stage: Stage) -> None:
    n.say(f"\nevery connection left one JSON record in {stage.records}/; read them with:")
    n.say(f"  netshield logs {stage.record_file('orders')}")
    n.say(f"  netshield logs --denied {stage.record_file('intruder')}")


async def _until_stopped() -> None:
    """Wait for Ctrl-C or SIGTERM; the caller then stops every process."""
    with stop_on_signals() as stop:
        await stop.wait()


def _print_try(n: Narrator, stage: Stage) -> None:
    frontend = stage.sidecars["frontend"]
    n.say(f"\nthe mesh stays up (CAS at {stage.cas_url}); try (Ctrl-C stops everything):")
    n.say(f"  curl http://{frontend.listen('outbound:orders')}/    # frontend -> orders, mTLS")
    n.say(f"  curl http://{stage.sidecars['intruder'].listen('outbound:orders')}/    # denied")
    n.say(
        f"  curl \"http://{frontend.listen('outbound:inventory')}/?id=1'%20OR%20'1'='1\""
        "    # WAF: 403"
    )
    n.say(f"  curl http://{frontend.listen('ingress:orders')}/    # ingress WAF route -> orders")
    n.say(f"  netshield logs --follow {stage.record_file('orders')}")
    n.say(f"  netshield status --admin {frontend.listen('admin')}")
    n.say(f"  export NETSHIELD_CAS={stage.cas_url} NETSHIELD_ADMIN={stage.layout.admin_dir}")
    n.say("  netshield cas audit --verify")
    n.say("  netshield cas revoke --service intruder --note 'try it'")
