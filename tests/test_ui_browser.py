"""The live view in a real browser: headless Chromium loads the page `netshield ui` serves over the
records a real mesh wrote (an allowed call, a denied caller, a revoked instance), and we check
both its DOM and a screenshot; then the page updates itself, without a reload, when a record is
appended. Every picture has its twin: records without a denial draw no denied colour."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from netshield.ui.page import COLORS
from tests.mesh_support import EchoServer, Mesh, Proc, http_get, make_mesh, roundtrip, start
from tests.test_ui_graph import rec

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 1200, 800
SERVICES = ("frontend", "orders", "intruder")


def rgb(hex_colour: str) -> tuple[int, int, int]:
    value = int(hex_colour.lstrip("#"), 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


DENY, REVOKED, ALLOW = rgb(COLORS["deny"]), rgb(COLORS["revoked"]), rgb(COLORS["allow"])


# --- the browser ---------------------------------------------------------------------------------
def chromium_flags(profile: Path) -> list[str]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("Debian's chromium package is not installed (scripts/test installs it as root)")
    return [
        binary,
        "--headless",
        "--no-sandbox",  # we run as root in CI
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--disable-dev-shm-usage",  # small /dev/shm in containers
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
    ]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = Path(tmp_path) / f"profile-{time.monotonic_ns()}"
    done = subprocess.run(
        [*chromium_flags(profile), *args], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def dump_dom(tmp_path: Path, url: str) -> str:
    return chromium(tmp_path, "--dump-dom", url).stdout


def screenshot(tmp_path: Path, url: str, name: str) -> Path:
    out = tmp_path / name
    chromium(tmp_path, f"--screenshot={out}", url)
    return out


# --- reading what it drew ------------------------------------------------------------------------
@dataclass
class Png:
    width: int
    height: int
    colours: Counter[tuple[int, int, int]]


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> Png:
    """A strict little PNG reader (8-bit RGB/RGBA, not interlaced): chunk CRCs, zlib, filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert header is not None, "no IHDR"
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1), "image data of the wrong size"
    colours: Counter[tuple[int, int, int]] = Counter()
    prev = bytearray(stride)
    for y in range(height):
        base = y * (stride + 1)
        kind, line = raw[base], bytearray(raw[base + 1 : base + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((x + p) & 255 for x, p in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                c = prev[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(a, prev[i], c)) & 255
        else:
            assert kind == 0, f"unknown PNG filter {kind}"
        colours.update(zip(line[0::bpp], line[1::bpp], line[2::bpp], strict=True))
        prev = line
    return Png(width, height, colours)


def near(colours: Counter[tuple[int, int, int]], target: tuple[int, int, int], within: int) -> int:
    return sum(
        n
        for c, n in colours.items()
        if max(abs(x - y) for x, y in zip(c, target, strict=True)) <= within
    )


class Dom(HTMLParser):
    """The elements of a dumped DOM, with their attributes and the text directly inside them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {"tag": tag, **{k: v or "" for k, v in attrs}, "text": ""}
        self.elements.append(element)
        if tag not in ("link", "meta", "br", "path", "circle"):
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append({"tag": tag, **{k: v or "" for k, v in attrs}, "text": ""})

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1]["text"] += data

    def find(self, tag: str, cls: str | None = None, **attrs: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.elements
            if e["tag"] == tag
            and (cls is None or cls in e.get("class", "").split())
            and all(e.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]


# --- a real mesh, recorded twice: calm (one allowed call) and after an incident ------------------
@dataclass
class Recorded:
    mesh: Mesh
    calm: list[Path]  # copies of the record files after the allowed call only
    incident: list[Path]  # the live files after a denied caller and a revocation
    revoked_serial: str


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    root = tmp_path_factory.mktemp("ui-mesh")
    mesh = make_mesh(root)
    echo = EchoServer()
    try:
        mesh.start_cas()
        assert mesh.cas is not None
        orders = mesh.start_sidecar(
            "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}
        )
        host, port = orders.addr("inbound")
        outbound = [{"service": "orders", "listen": "127.0.0.1:0", "address": f"{host}:{port}"}]
        frontend = mesh.start_sidecar("frontend", outbound=outbound)
        intruder = mesh.start_sidecar("intruder", outbound=outbound)
        # 1. an allowed call, recorded by both sidecars
        assert roundtrip(frontend.addr("outbound:orders"), b"hello") == b"hello"
        mesh.wait_record("orders", lambda r: r["decision"] == "allow")
        mesh.wait_record("frontend", lambda r: r["decision"] == "allow")
        calm_dir = root / "calm"
        calm_dir.mkdir()
        calm = []
        for svc in SERVICES:
            src = root / f"{svc}.records.jsonl"
            dst = calm_dir / src.name
            dst.write_bytes(src.read_bytes() if src.exists() else b"")
            calm.append(dst)
        # 2. a caller the policy does not allow
        assert roundtrip(intruder.addr("outbound:orders"), b"SELECT secrets") == b""
        mesh.wait_record("intruder", lambda r: r["decision"] == "deny")
        # 3. the operator revokes frontend's instance while it has a connection open
        status, ident = http_get(f"http://{':'.join(map(str, frontend.addr('admin')))}/identity")
        assert status == 200 and isinstance(ident, dict)
        with socket.create_connection(frontend.addr("outbound:orders"), timeout=10) as s:
            s.sendall(b"ping")
            assert s.recv(100) == b"ping"
            mesh.cas_admin("revoke", "--serial", ident["serial"])
            s.settimeout(10)
            with contextlib.suppress(OSError):
                assert s.recv(100) == b""
        mesh.wait_record("orders", lambda r: r["close_reason"] == "PEER_REVOKED")
        incident = [root / f"{svc}.records.jsonl" for svc in SERVICES]
        yield Recorded(mesh, calm, incident, str(ident["serial"]))
    finally:
        mesh.stop_all()
        echo.shutdown()
        echo.server_close()


def run_ui(workdir: Path, *args: str) -> Proc:
    return start(f"ui-{time.monotonic_ns()}", ["ui", *args], workdir)


def wait_graph(url: str, pred: Any, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    graph: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "api/graph", timeout=10) as resp:
            graph = json.loads(resp.read())
        if pred(graph):
            return graph
        time.sleep(0.1)
    raise AssertionError(f"the graph never matched: {json.dumps(graph)[:2000]}")


# --- the pictures --------------------------------------------------------------------------------
def test_chromium_draws_the_mesh_with_counts_a_denied_edge_and_the_revoked_instance(
    recorded: Recorded, tmp_path: Path
) -> None:
    mesh = recorded.mesh
    assert mesh.cas is not None
    records = [str(p) for p in recorded.incident]
    cas = mesh.admin_args()
    ui = run_ui(tmp_path, "--records", *records, *cas)
    try:
        url = ui.ready["url"]
        wait_graph(
            url,
            lambda g: (
                g["cas"]["reachable"]
                and g["totals"]["denied"] == 1
                and g["totals"]["allowed"] == 2
                and any(n["revoked_by"] == ["cas", "records"] for n in g["nodes"])
            ),
        )
        dom = Dom(dump_dom(tmp_path, url))
        png_path = screenshot(tmp_path, url, "incident.png")
    finally:
        ui.stop()
    nodes = {n["data-node"]: n for n in dom.find("g", "node")}
    assert set(nodes) == set(SERVICES)
    assert (
        nodes["frontend"]["data-revoked"] == "instance" and "revoked" in nodes["frontend"]["class"]
    )
    assert nodes["orders"]["data-revoked"] == nodes["intruder"]["data-revoked"] == ""
    allowed = dom.find("g", "edge", data_decision="allow")
    denied = dom.find("g", "edge", data_decision="deny")
    assert [(e["data-caller"], e["data-callee"], e["data-count"]) for e in allowed] == [
        ("frontend", "orders", "2")
    ]
    assert [(e["data-caller"], e["data-callee"], e["data-count"]) for e in denied] == [
        ("intruder", "orders", "1")
    ]
    labels = [e["text"] for e in dom.find("text", "edge-count")]
    assert "\u2713 2 allowed" in labels
    assert "\u2717 1 denied \u00b7 PEER_NOT_AUTHORIZED" in labels
    badges = [e["text"] for e in dom.find("text", "revoked-label", data_revoked_node="frontend")]
    assert badges == [f"\u2298 revoked instance {recorded.revoked_serial[:8]}\u2026"]
    flows = {(f["data-caller"], f["data-callee"]): f for f in dom.find("li", "flow")}
    assert (
        flows["intruder", "orders"]["data-denied"],
        flows["frontend", "orders"]["data-allowed"],
    ) == (
        "1",
        "2",
    )
    assert any(recorded.revoked_serial in e["text"] for e in dom.find("li", "revocation"))
    # the screenshot is a real picture of it
    png = decode_png(png_path.read_bytes())
    assert (png.width, png.height) == (WIDTH, HEIGHT)
    assert len(png.colours) > 50, "a blank or nearly blank picture"
    assert png.colours[DENY] > 150, "no denied edge drawn"
    assert png.colours[REVOKED] > 150, "no revoked marker drawn"
    assert png.colours[ALLOW] > 150, "no allowed edge drawn"


def test_chromium_draws_no_denied_edge_or_revocation_when_the_records_have_none(
    recorded: Recorded, tmp_path: Path
) -> None:
    ui = run_ui(tmp_path, "--records", *[str(p) for p in recorded.calm])
    try:
        url = ui.ready["url"]
        wait_graph(url, lambda g: g["totals"]["allowed"] == 1)
        dom = Dom(dump_dom(tmp_path, url))
        png_path = screenshot(tmp_path, url, "calm.png")
    finally:
        ui.stop()
    assert [(e["data-caller"], e["data-callee"]) for e in dom.find("g", "edge")] == [
        ("frontend", "orders")
    ]
    assert dom.find("g", "edge", data_decision="deny") == []
    assert all(n["data-revoked"] == "" for n in dom.find("g", "node"))
    assert dom.find("text", "revoked-label") == []
    png = decode_png(png_path.read_bytes())
    assert (png.width, png.height) == (WIDTH, HEIGHT)
    assert len(png.colours) > 50 and png.colours[ALLOW] > 150  # still a real picture
    assert near(png.colours, DENY, 40) == 0, "something red was drawn"
    assert near(png.colours, REVOKED, 40) == 0, "something purple was drawn"


# --- live: the open page follows the records -----------------------------------------------------
class DevTools:
    """Just enough of the Chrome DevTools Protocol to evaluate JavaScript in the open page."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def evaluate(self, expression: str) -> Any:
        self.next_id += 1
        await self.ws.send_json(
            {
                "id": self.next_id,
                "method": "Runtime.evaluate",
                "params": {"expression": expression, "returnByValue": True},
            }
        )
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 10)
            if msg.get("id") == self.next_id:
                return msg["result"]["result"].get("value")


@contextlib.asynccontextmanager
async def open_page(tmp_path: Path, url: str) -> AsyncIterator[DevTools]:
    args = [*chromium_flags(tmp_path / "live-profile"), "--remote-debugging-port=0", url]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        endpoint = None
        deadline = time.monotonic() + 30
        while endpoint is None and time.monotonic() < deadline:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "chromium exited before opening DevTools"
            found = re.search(r"DevTools listening on ws://([^/]+)/", line)
            endpoint = found.group(1) if found else None
        assert endpoint is not None
        async with aiohttp.ClientSession() as session:
            page = None
            while page is None and time.monotonic() < deadline:
                async with session.get(f"http://{endpoint}/json/list") as resp:
                    targets = await resp.json()
                page = next((t for t in targets if t["type"] == "page" and t["url"] == url), None)
                await asyncio.sleep(0.1)
            assert page is not None
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws)
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def until(tools: DevTools, expression: str, expected: Any, timeout: float = 8) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await tools.evaluate(expression)
        if value == expected:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{expression} stayed {value!r}, expected {expected!r}")


DENIED_EDGES = (
    "JSON.stringify([...document.querySelectorAll('g.edge.deny')]"
    ".map(e => [e.dataset.caller, e.dataset.callee, e.dataset.count]))"
)


async def test_the_open_page_redraws_as_records_arrive_without_reloading(tmp_path: Path) -> None:
    log = tmp_path / "records.jsonl"
    allowed = rec("outbound", "frontend", "orders", conn="a1")
    log.write_text(allowed.to_json() + "\n")
    ui = await asyncio.to_thread(run_ui, tmp_path, "--records", str(log))
    try:
        url = ui.ready["url"]
        async with open_page(tmp_path, url) as page:
            await until(page, "document.getElementById('status').textContent", "live")
            assert await page.evaluate(DENIED_EDGES) == "[]"
            await page.evaluate("window.sameDocument = 'yes'")  # gone if the page reloads
            denied = rec(
                "outbound",
                "intruder",
                None,
                decision="deny",
                reason="PEER_NOT_AUTHORIZED",
                dst="orders",
                close="PEER_NOT_AUTHORIZED",
                conn="d1",
            )
            with log.open("a") as f:
                f.write(denied.to_json() + "\n")
            await until(
                page, DENIED_EDGES, json.dumps([["intruder", "orders", "1"]], separators=(",", ":"))
            )
            assert await page.evaluate("window.sameDocument") == "yes"
            # a corrupt line changes no edge, only the skipped count
            with log.open("a") as f:
                f.write("{ not a record\n")
            await until(
                page,
                "document.querySelector('#sources li .muted').textContent",
                "following, 3 lines, 1 skipped",
            )
            assert await page.evaluate(DENIED_EDGES) == json.dumps(
                [["intruder", "orders", "1"]], separators=(",", ":")
            )
    finally:
        await asyncio.to_thread(ui.stop)
