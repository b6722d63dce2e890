"""Faults, each against real processes: the CAS killed (SIGKILL) during a burst of attestations
and renewals; a sidecar killed mid-transfer; the records' disk full; an upstream that resets
mid-stream. (The CAS down for longer than a certificate's lifetime is
test_sidecar_behaviour_e2e.py::test_cas_down_during_renewal_serves_until_expiry_then_fails_closed_and_recovers;
an upstream that is down, ..._unreachable_upstreams_are_recorded there; a link between network
namespaces cut and restored, test_netns_faults.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from netshield.attestation.platform import load_platform
from netshield.attestation.quote import report_data_for
from netshield.casclient import CasClient, CasRefused, CasUnreachable
from netshield.identity import SpiffeId
from netshield.pki.csr import build_csr
from netshield.pki.keys import generate_key, public_key_der
from netshield.tls.material import cas_client_context
from tests.attack_support import checked_roundtrip
from tests.mesh_support import TD, EchoServer, Mesh, Proc, http_get, make_mesh
from tests.support import netshield_cmd

pytestmark = pytest.mark.slow


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def running_mesh(root: Path, **kwargs: Any) -> Iterator[Mesh]:
    mesh = make_mesh(root, **kwargs)
    mesh.start_cas()
    try:
        yield mesh
    finally:
        mesh.stop_all()


def metric(proc: Proc, name: str) -> float:
    host, port = proc.addr("admin")
    _, body = http_get(f"http://{host}:{port}/metrics")
    total = 0.0
    for line in str(body).splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


# --- the CAS killed mid-burst -----------------------------------------------------------------------
class Burst:
    """Attestations of `service` as fast as `workers` threads can, against the mesh's CAS; keeps
    one successful (nonce, quote, CSR) to replay later."""

    def __init__(self, mesh: Mesh, service: str, workers: int = 4) -> None:
        self.mesh, self.service = mesh, service
        self.platform = load_platform(mesh.root / "platforms" / "p1")
        self.ok = 0
        self.failed = 0
        self.replayable: tuple[bytes, bytes, bytes] | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def __enter__(self) -> Burst:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def client(self) -> CasClient:
        assert self.mesh.cas is not None
        ctx = cas_client_context(ca_pem=self.mesh.ca_pem.read_bytes())
        return CasClient(str(self.mesh.cas.ready["url"]), ssl_context=ctx, timeout=5)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        measurement = self.mesh.measurements[self.service]
        while not self._stop.is_set():
            try:
                async with self.client() as cas:
                    key, nonce = generate_key(), await cas.nonce()
                    quote = self.platform.quote(
                        measurement=measurement,
                        signer="0" * 64,
                        product_id=0,
                        svn=0,
                        report_data=report_data_for(public_key_der(key.public_key()), nonce),
                    )
                    csr = build_csr(key, SpiffeId.for_service(TD, self.service))
                    await cas.attest(service=self.service, nonce=nonce, quote=quote, csr_pem=csr)
                    self.ok += 1
                    self.replayable = self.replayable or (nonce, quote, csr)
            except (CasRefused, CasUnreachable, OSError):
                self.failed += 1
                await asyncio.sleep(0.05)


def test_cas_killed_mid_burst_restarts_consistent_and_sidecars_recover(
    tmp_path: Path, echo: EchoServer
) -> None:
    with running_mesh(tmp_path, lifetime="1m") as mesh:
        renew = {"fraction": 0.1, "jitter": 0.05}  # a renewal every ~6 s
        orders = mesh.start_sidecar(
            "orders",
            inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"},
            renewal=renew,
        )
        address = "{}:{}".format(*orders.addr("inbound"))
        frontend = mesh.start_sidecar(
            "frontend",
            outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": address}],
            renewal=renew,
        )
        outbound = frontend.addr("outbound:orders")
        assert mesh.cas is not None
        with Burst(mesh, "orders") as burst:
            wait_until(lambda: burst.ok >= 10, 60, "10 attestations")
            mesh.cas.popen.send_signal(signal.SIGKILL)  # mid-burst, mid-renewals
            mesh.cas.popen.wait(timeout=10)
            ok_at_kill = burst.ok
            # the data plane does not need the CAS: traffic flows on the certificates held
            assert checked_roundtrip(outbound, 64 * 1024) == (True, "")
            time.sleep(1)
            mesh.restart_cas()  # same address; the state must open (no rollback, chain intact)
            wait_until(lambda: burst.ok > ok_at_kill + 5, 60, "attestations after the restart")
        verified = mesh.cas_admin("audit", "--verify")
        assert "intact" in verified.stdout, verified.stdout
        # no nonce is usable twice: the first quote attested before the kill is refused now
        assert burst.replayable is not None
        nonce, quote, csr = burst.replayable

        async def replay() -> str:
            async with burst.client() as cas:
                try:
                    await cas.attest(service="orders", nonce=nonce, quote=quote, csr_pem=csr)
                except CasRefused as err:
                    return err.code
            return "OK"

        assert asyncio.run(replay()) == "NONCE_REUSED"
        # the sidecars recover by themselves: they renew against the restarted CAS
        renewals = {p.name: metric(p, "netshield_renewals_total") for p in (orders, frontend)}
        for proc in (orders, frontend):
            wait_until(
                lambda p=proc: metric(p, "netshield_renewals_total") > renewals[p.name],
                45,
                f"{proc.name} to renew after the restart",
            )
            assert http_get("http://{}:{}/readyz".format(*proc.addr("admin")))[0] == 200
        assert checked_roundtrip(outbound, 64 * 1024) == (True, "")
        print(
            f"\n[fault] CAS SIGKILL mid-burst: {ok_at_kill} attestations before the kill, "
            f"{burst.ok - ok_at_kill} after the restart, {burst.failed} failed while it was down; "
            "audit intact, replay refused, both sidecars renewed"
        )


# --- a sidecar killed mid-transfer ---------------------------------------------------------------------
def server_public_key(addr: tuple[str, int], ca: Path) -> bytes:
    """The public key in the certificate a sidecar's inbound presents (our handshake is refused
    afterwards, which does not matter here)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ca))
    with socket.create_connection(addr, timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_sidecar_killed_mid_transfer_restarts_with_a_new_key_and_its_records_verify(
    tmp_path: Path, echo: EchoServer
) -> None:
    with running_mesh(tmp_path) as mesh:
        orders = mesh.start_sidecar(
            "orders", inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}
        )
        address = "{}:{}".format(*orders.addr("inbound"))
        sections = {
            "outbound": [{"service": "orders", "listen": "127.0.0.1:0", "address": address}],
            "inbound": {"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"},
        }
        frontend = mesh.start_sidecar("frontend", **sections)
        before = server_public_key(frontend.addr("inbound"), mesh.ca_pem)
        for _ in range(5):  # a few finished connections: records on disk
            assert checked_roundtrip(frontend.addr("outbound:orders"), 4096) == (True, "")
        result: list[tuple[bool, str]] = []
        transfer = threading.Thread(
            target=lambda: result.append(
                checked_roundtrip(frontend.addr("outbound:orders"), 200 * 2**20)
            )
        )
        transfer.start()
        wait_until(lambda: echo.bytes_received > 1_000_000, 30, "the transfer to be under way")
        frontend.popen.send_signal(signal.SIGKILL)
        frontend.popen.wait(timeout=10)
        transfer.join(timeout=60)
        assert result and result[0][0] is False  # the caller saw the connection break
        again = mesh.start_sidecar("frontend", **sections)  # the same config, a new process
        after = server_public_key(again.addr("inbound"), mesh.ca_pem)
        assert after != before  # it attested again, with a key it made in memory
        assert checked_roundtrip(again.addr("outbound:orders"), 4096) == (True, "")
        log = mesh.root / "frontend.records.jsonl"
        verify = subprocess.run(
            netshield_cmd("logs", str(log), "--verify"), capture_output=True, text=True, timeout=60
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert sum(1 for r in lines if r["decision"] == "allow") == 6  # the killed one: none


# --- the records' disk full ---------------------------------------------------------------------
@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_records_disk_full_keeps_proxying_counts_the_lost_records_and_says_so(
    tmp_path: Path, echo: EchoServer
) -> None:
    """The documented choice: the data plane keeps running; the lost records are counted
    (netshield_records_dropped_total) and one log line says so; writing resumes on its own when
    there is room again, and the chain still verifies."""
    disk = tmp_path / "records-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        with running_mesh(tmp_path / "m") as mesh:
            log = disk / "orders.records.jsonl"
            orders = mesh.start_sidecar(
                "orders",
                inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"},
                records={"file": str(log), "max_bytes": 0},
            )
            inbound = orders.addr("inbound")
            address = "{}:{}".format(*inbound)
            frontend = mesh.start_sidecar(
                "frontend",
                outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": address}],
            )
            outbound = frontend.addr("outbound:orders")
            assert checked_roundtrip(outbound, 1024) == (True, "")
            # its record is on the disk before the disk fills (on a busy host it may not be yet)
            wait_until(lambda: log.exists() and log.read_text().count("\n") >= 1, 20, "a record")
            filler = disk / "filler"
            with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
                while True:  # until the disk is full
                    f.write(secrets.token_bytes(4096))
            results = []
            while metric(orders, "netshield_records_dropped_total") < 5:  # the page's slack first
                results.append(checked_roundtrip(outbound, 1024))
                assert len(results) < 60, "no record was dropped on a full disk"
            assert set(results) == {(True, "")}  # proxying went on throughout
            assert orders.stderr().count("cannot write connection records to") == 1
            filler.unlink()  # room again
            wait_until(
                lambda: (
                    checked_roundtrip(outbound, 1024) == (True, "")
                    and "writing connection records to" in orders.stderr()
                ),
                20,
                "the recovery line",
            )
            wait_until(lambda: len(log.read_text().splitlines()) >= 2, 20, "records again")
            records = [json.loads(line) for line in log.read_text().splitlines()]  # whole lines
            dropped = metric(orders, "netshield_records_dropped_total")
            assert all(r["decision"] == "allow" for r in records)
            print(
                f"\n[fault] records disk full: {len(results)} connections proxied while full, "
                f"{dropped:.0f} records lost and counted, {len(records)} on disk, chain verifies"
            )
            verify = subprocess.run(
                netshield_cmd("logs", str(log), "--verify"),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# --- an upstream that resets mid-stream -------------------------------------------------------------
class ResettingUpstream:
    """Reads `after` bytes, then resets the connection (SO_LINGER 0). Its twin, an upstream that
    closes cleanly (CLOSED), is test_sidecar_e2e.py's echo service."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                got = 0
                while got < self.after:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()


def test_an_upstream_that_resets_mid_stream_is_recorded_as_such(
    tmp_path: Path, echo: EchoServer
) -> None:
    resetting = ResettingUpstream(after=100_000)
    with running_mesh(tmp_path) as mesh:
        orders = mesh.start_sidecar(
            "orders",
            inbound={"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{resetting.port}"},
        )
        address = "{}:{}".format(*orders.addr("inbound"))
        frontend = mesh.start_sidecar(
            "frontend",
            outbound=[{"service": "orders", "listen": "127.0.0.1:0", "address": address}],
        )
        ok, _why = checked_roundtrip(frontend.addr("outbound:orders"), 2 * 2**20)
        assert not ok
        rec = mesh.wait_record("orders", lambda r: r["decision"] == "allow")
        assert rec["close_reason"] == "UPSTREAM_RESET" and rec["bytes_in"] >= 100_000
    resetting.sock.close()
