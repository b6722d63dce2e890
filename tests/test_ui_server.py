"""`netshield ui` as a real process: it serves the graph of the record files it follows (as they
grow, rotate and get truncated), streams changes as server-sent events, reads the policy and the
revocations from a real CAS, and refuses what a loopback-only plain-HTTP view must not do."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netshield.record import ConnectionRecord
from tests.mesh_support import Proc, start
from tests.support import Domain, cas_subprocess, make_domain, netshield_cmd
from tests.test_ui_graph import rec

pytestmark = pytest.mark.slow

ALLOWED = rec("outbound", "frontend", "orders", conn="a1", ts="2026-01-01T00:00:01.000Z")
DENIED = rec(
    "outbound",
    "intruder",
    None,
    decision="deny",
    reason="PEER_NOT_AUTHORIZED",
    dst="orders",
    close="PEER_NOT_AUTHORIZED",
    conn="d1",
    ts="2026-01-01T00:00:02.000Z",
)


def write(path: Path, *records: ConnectionRecord | bytes) -> None:
    with path.open("ab") as f:
        for r in records:
            f.write(r if isinstance(r, bytes) else (r.to_json() + "\n").encode())


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def run_ui(procs: list[Proc], workdir: Path, *args: str) -> Proc:
    proc = start("ui", ["ui", *args], workdir)
    procs.append(proc)
    return proc


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def wait_graph(proc: Proc, pred: Callable[[dict[str, Any]], bool], timeout: float = 8) -> Any:
    deadline = time.monotonic() + timeout
    graph: Any = None
    while time.monotonic() < deadline:
        graph = get_json(proc.ready["url"] + "api/graph")
        if pred(graph):
            return graph
        time.sleep(0.1)
    raise AssertionError(f"the graph never matched: {json.dumps(graph)[:2000]}")


def counts(graph: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int]]:
    return {(e["caller"], e["callee"]): (e["allowed"], e["denied"]) for e in graph["edges"]}


def test_ui_prints_a_ready_line_and_serves_the_graph_of_its_record_files(
    tmp_path: Path, procs: list[Proc]
) -> None:
    a, b = tmp_path / "frontend.jsonl", tmp_path / "intruder.jsonl"
    write(a, ALLOWED)
    write(b, DENIED)
    ui = run_ui(procs, tmp_path, "--records", str(a), str(b))
    assert ui.ready["component"] == "ui"
    assert ui.ready["url"].startswith("http://127.0.0.1:") and ui.ready["url"].endswith("/")
    assert ui.ready["records"] == [str(a), str(b)]
    graph = wait_graph(ui, lambda g: g["totals"]["records"] == 2)
    assert counts(graph) == {("frontend", "orders"): (1, 0), ("intruder", "orders"): (0, 1)}
    assert [s["state"] for s in graph["sources"]] == ["following", "following"]
    assert graph["cas"] is None


class EventStream:
    """A plain-socket reader of /api/events (HTTP/1.0, so no chunked framing to undo)."""

    def __init__(self, url: str) -> None:
        hostport = url.split("//", 1)[1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.sendall(f"GET /api/events HTTP/1.0\r\nHost: {hostport}\r\n\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._recv(time.monotonic() + 10)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode().lower()

    def _recv(self, deadline: float) -> bool:
        ready, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the event stream ended")
        self.buf += data
        return True

    def next_graph(self, timeout: float) -> dict[str, Any] | None:
        """The next `graph` event's data, or None if none came within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" in self.buf:
                block, self.buf = self.buf.split(b"\n\n", 1)
                fields = dict(
                    line.partition(": ")[::2]
                    for line in block.decode().splitlines()
                    if not line.startswith(":")
                )
                if fields.get("event") == "graph":
                    return dict(json.loads(fields["data"]))
            if not self._recv(deadline):
                return None

    def close(self) -> None:
        self.sock.close()


def test_records_appended_later_are_pushed_to_open_event_streams(
    tmp_path: Path, procs: list[Proc]
) -> None:
    log = tmp_path / "records.jsonl"
    write(log, ALLOWED)
    ui = run_ui(procs, tmp_path, "--records", str(log))
    wait_graph(ui, lambda g: g["totals"]["records"] == 1)
    stream = EventStream(ui.ready["url"])
    try:
        assert "content-type: text/event-stream" in stream.head
        first = stream.next_graph(5)
        assert first is not None and counts(first) == {("frontend", "orders"): (1, 0)}
        # the twin: nothing written, nothing pushed
        assert stream.next_graph(1.5) is None
        write(log, DENIED)
        pushed = stream.next_graph(5)
    finally:
        stream.close()
    assert pushed is not None and pushed["version"] > first["version"]
    assert counts(pushed) == {("frontend", "orders"): (1, 0), ("intruder", "orders"): (0, 1)}


def test_the_view_follows_a_file_through_rotation_and_truncation(
    tmp_path: Path, procs: list[Proc]
) -> None:
    log = tmp_path / "records.jsonl"
    ui = run_ui(procs, tmp_path, "--records", str(log))
    graph = wait_graph(ui, lambda g: g["sources"][0]["state"] == "waiting")  # not there yet
    write(log, ALLOWED)
    wait_graph(ui, lambda g: g["totals"]["records"] == 1)

    def conn(i: int) -> ConnectionRecord:
        return rec("outbound", "frontend", "orders", conn=f"r{i}")

    # rename rotation: the writer finishes the old file after the rename, then a new one starts
    rotated = tmp_path / "records.jsonl.1"
    os.rename(log, rotated)
    write(rotated, conn(2))
    write(log, conn(3))
    graph = wait_graph(ui, lambda g: g["totals"]["records"] == 3)
    assert graph["sources"][0]["rotations"] == 1
    assert counts(graph) == {("frontend", "orders"): (3, 0)}
    # copytruncate: the same file, emptied
    time.sleep(0.6)  # let the view catch up before the file shrinks
    with log.open("r+b") as f:
        f.truncate(0)
    write(log, DENIED)
    graph = wait_graph(ui, lambda g: g["totals"]["records"] == 4)
    assert graph["sources"][0]["truncations"] == 1
    assert counts(graph) == {("frontend", "orders"): (3, 0), ("intruder", "orders"): (0, 1)}


def test_corrupt_and_truncated_lines_are_skipped_and_counted(
    tmp_path: Path, procs: list[Proc]
) -> None:
    bad, good = tmp_path / "bad.jsonl", tmp_path / "good.jsonl"
    write(bad, b"not json at all\n", ALLOWED, ALLOWED.to_json()[:40].encode() + b"\n", b"\n")
    write(bad, b'{"schema": 99}\n', DENIED)
    write(good, rec("inbound", "orders", "frontend", conn="b1"))  # ALLOWED, seen by the callee
    ui = run_ui(procs, tmp_path, "--records", str(bad), str(good))
    graph = wait_graph(ui, lambda g: g["totals"]["records"] == 3)
    assert [s["skipped"] for s in graph["sources"]] == [4, 0]  # the empty line too
    assert graph["sources"][0]["first_problem"].startswith(f"{bad}:1: not a record")
    assert counts(graph) == {("frontend", "orders"): (1, 0), ("intruder", "orders"): (0, 1)}
    assert ui.popen.poll() is None


def curl(*args: str) -> tuple[int, str, str]:
    out = subprocess.run(
        ["curl", "-s", "-D", "-", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    head, _, rest = out.partition("\n\n")  # text mode turned CRLF into LF
    body, _, code = rest.rpartition("\n")
    return int(code), head.lower(), body


def test_only_requests_for_the_loopback_address_are_answered(
    tmp_path: Path, procs: list[Proc]
) -> None:
    log = tmp_path / "records.jsonl"
    write(log, ALLOWED)
    ui = run_ui(procs, tmp_path, "--records", str(log))
    url, port = ui.ready["url"], ui.ready["listen"]["http"].rsplit(":", 1)[1]
    # a DNS-rebound name pointing at 127.0.0.1 must not read the mesh's metadata
    status, _, body = curl("-H", f"Host: attacker.example:{port}", url + "api/graph")
    assert status == 404 and json.loads(body)["error"]["reason"] == "NOT_FOUND"
    status, _, body = curl("-X", "POST", url + "api/graph")
    assert status == 405 and json.loads(body)["error"]["reason"] == "METHOD_NOT_ALLOWED"
    # the twins: the loopback names get the page, with a policy that forbids anything else
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        status, head, body = curl("-H", f"Host: {host}", url)
        assert status == 200 and "content-type: text/html" in head
        assert "content-security-policy: default-src 'none'" in head
        assert '<svg id="mesh"' in body


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--listen", "0.0.0.0:0"], "loopback only"),
        (["--listen", "nonsense"], "--listen"),
        (["--cas", "https://127.0.0.1:1"], "--cas needs --admin"),
        (["--cas", "https://127.0.0.1:1", "--admin", "/nonexistent"], "missing"),
        (["--records", "/"], "not a regular file"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    base = ["--records", str(tmp_path / "r.jsonl")] if "--records" not in args else []
    done = subprocess.run(
        netshield_cmd("ui", *base, *args), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.fixture
def domain(tmp_path: Path) -> Domain:
    return make_domain(tmp_path)


def test_policy_and_revocations_come_from_the_cas(
    domain: Domain, tmp_path: Path, procs: list[Proc]
) -> None:
    log = tmp_path / "records.jsonl"
    log.touch()
    with cas_subprocess(domain) as cas:
        admin = str(domain.layout.admin_dir)
        ui = run_ui(procs, tmp_path, "--records", str(log), "--cas", cas.url, "--admin", admin)
        graph = wait_graph(ui, lambda g: bool(g["cas"]["reachable"]))
        ids = {n["id"]: n for n in graph["nodes"]}
        assert set(ids) == {"debuggy", "frontend", "legacy", "orders", "retired"}
        assert ids["legacy"]["kind"] == "native" and ids["retired"]["enabled"] is False
        assert graph["permitted_unused"] == [{"caller": "frontend", "callee": "orders"}]
        assert graph["cas"]["policy_version"] == 1
        assert all(n["revoked"] is None for n in graph["nodes"])  # the twin: nothing revoked yet
        subprocess.run(
            netshield_cmd(
                "cas", "revoke", "--service", "debuggy", "--cas", cas.url, "--admin", admin
            ),
            check=True,
            capture_output=True,
            timeout=30,
        )
        graph = wait_graph(ui, lambda g: g["totals"]["revoked_nodes"] == 1, timeout=15)
    revoked = [n for n in graph["nodes"] if n["revoked"]]
    assert [(n["id"], n["revoked"], n["revoked_by"]) for n in revoked] == [
        ("debuggy", "service", ["cas"])
    ]
    # the CAS went away: the view says so and keeps what it knew
    graph = wait_graph(ui, lambda g: not g["cas"]["reachable"], timeout=20)
    assert "unreachable" in graph["cas"]["error"]
    assert graph["totals"]["revoked_nodes"] == 1


def test_an_unreachable_cas_is_shown_and_the_records_are_still_drawn(
    domain: Domain, tmp_path: Path, procs: list[Proc]
) -> None:
    log = tmp_path / "records.jsonl"
    write(log, DENIED)
    admin = str(domain.layout.admin_dir)
    ui = run_ui(
        procs, tmp_path, "--records", str(log), "--cas", "https://127.0.0.1:1", "--admin", admin
    )
    graph = wait_graph(
        ui, lambda g: g["totals"]["records"] == 1 and g["cas"]["error"] != "not contacted yet"
    )
    assert graph["cas"]["reachable"] is False and "unreachable" in graph["cas"]["error"]
    assert counts(graph) == {("intruder", "orders"): (0, 1)}
    assert "unreachable" in ui.stderr() and "Traceback" not in ui.stderr()


def test_sigterm_stops_the_view_promptly_even_with_a_stream_open(
    tmp_path: Path, procs: list[Proc]
) -> None:
    log = tmp_path / "records.jsonl"
    ui = run_ui(procs, tmp_path, "--records", str(log))
    stream = EventStream(ui.ready["url"])
    try:
        assert stream.next_graph(5) is not None
        began = time.monotonic()
        assert ui.stop(timeout=10) == 0
    finally:
        stream.close()
    assert time.monotonic() - began < 5
    assert "Traceback" not in ui.stderr()
