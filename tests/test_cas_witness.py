"""Sidecars witness the CAS's history: restoring the CAS's state *and* its counter from one
snapshot passes the CAS's own rollback check, but every sidecar remembers the newest audit
checkpoint the CAS signed that it saw and refuses the rolled-back CAS: `CAS_ROLLED_BACK` on
`/readyz` and in metrics, in the feed and at attestation (a sidecar restarted on its witness
file gets no certificate). `netshield cas audit --verify --witness` shows the same offline.
The twins: a plain CAS restart is accepted, and so is the newest state put back."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from netshield.agent.witness import CasWitness, fork_problem, rollback_problem
from netshield.errors import NetshieldError
from netshield.pki.ca import CertificateAuthority, create_root_ca
from netshield.pki.checkpoint import Checkpoint, CheckpointSigner, verify_checkpoint
from netshield.reasons import Reason
from tests.mesh_support import TD, Mesh, Proc, http_get, make_mesh, start
from tests.support import netshield_cmd

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
STATE = "0b7c5a3e-0000-4000-8000-000000000001"


def ts(seconds: int = 0) -> str:
    return (NOW + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def cp(seq: int, version: int = 1, head: str = "ab", state: str = STATE) -> Checkpoint:
    return Checkpoint(state, seq, head * 32, version, ts(seq))


@pytest.fixture(scope="module")
def mesh_ca() -> CertificateAuthority:
    return create_root_ca(f"netshield mesh CA ({TD})", now=NOW - timedelta(days=1))


def bound(
    ca: CertificateAuthority, path: Path | None = None
) -> tuple[CasWitness, CheckpointSigner]:
    witness = CasWitness.load(path)
    witness.bind(lambda s: verify_checkpoint(s, [ca.cert], trust_domain=TD))
    return witness, CheckpointSigner(ca, TD)


# --- the comparison (pure) -------------------------------------------------------------------


def test_rollback_problem_names_what_went_back_and_accepts_the_same_or_newer() -> None:
    seen = cp(12, version=3)
    assert rollback_problem(cp(12, version=3), seen) is None  # the twins
    assert rollback_problem(cp(20, version=4), seen) is None
    assert rollback_problem(cp(1), None) is None
    assert "entry 8, but this sidecar saw it at entry 12" in str(rollback_problem(cp(8, 3), seen))
    assert "policy version 2, but this sidecar saw version 3" in str(
        rollback_problem(cp(20, version=2), seen)
    )
    assert "replaced by another copy" in str(rollback_problem(cp(12, 3, head="cd"), seen))
    assert "presents state other" in str(rollback_problem(cp(30, 3, state="other"), seen))
    assert fork_problem(cp(12, 3), seen) is None
    assert "a different history since" in str(fork_problem(cp(12, 3, head="cd"), seen))
    assert "holds no signed checkpoint of audit entry 12" in str(fork_problem(None, seen))


# --- the witness: memory, file, verification --------------------------------------------------


def test_the_witness_remembers_only_verified_checkpoints_and_never_goes_back(
    tmp_path: Path, mesh_ca: CertificateAuthority
) -> None:
    path = tmp_path / "witness.json"
    witness, signer = bound(mesh_ca, path)
    newer, older = signer.sign(cp(12, 3)), signer.sign(cp(5, 1))
    assert witness.check(newer.to_json(), baseline=None) == newer
    witness.remember(newer)
    witness.remember(older)  # never lowered
    again, _ = bound(mesh_ca, path)
    assert again.seen == cp(12, 3)
    with pytest.raises(NetshieldError) as info:
        again.check(older.to_json(), baseline=again.seen)
    assert info.value.reason is Reason.CAS_ROLLED_BACK
    at_seen = signer.sign(cp(12, 3, head="cd"))  # the CAS's entry 12 is another one now
    with pytest.raises(NetshieldError, match="a different history since"):
        again.check(
            signer.sign(cp(20, 3)).to_json(), baseline=again.seen, at_seen=at_seen.to_json()
        )
    with pytest.raises(NetshieldError, match="holds no signed checkpoint of audit entry 12"):
        again.check(signer.sign(cp(20, 3)).to_json(), baseline=again.seen, at_seen=None)
    same = again.check(
        signer.sign(cp(20, 3)).to_json(), baseline=again.seen, at_seen=newer.to_json()
    )
    assert same.checkpoint.seq == 20  # the twin: a newer head over the same history


def test_a_checkpoint_the_mesh_ca_did_not_certify_is_invalid_and_not_remembered(
    tmp_path: Path, mesh_ca: CertificateAuthority
) -> None:
    witness, _signer = bound(mesh_ca)
    stranger = CheckpointSigner(create_root_ca("stranger", now=NOW - timedelta(days=1)), TD)
    for doc in (stranger.sign(cp(99)).to_json(), None, {"format": "x"}):
        with pytest.raises(NetshieldError) as info:
            witness.check(doc, baseline=None)
        assert info.value.reason is Reason.CHECKPOINT_INVALID
    assert witness.seen is None


def test_a_damaged_or_forged_witness_file_stops_the_sidecar_naming_it(
    tmp_path: Path, mesh_ca: CertificateAuthority
) -> None:
    path = tmp_path / "witness.json"
    path.write_text("{not json")
    with pytest.raises(NetshieldError, match=r"cas\.witness_file .*witness\.json: unreadable"):
        CasWitness.load(path)
    stranger = CheckpointSigner(create_root_ca("stranger", now=NOW - timedelta(days=1)), TD)
    doc = {"format": "netshield-witness/1", "checkpoint": stranger.sign(cp(7)).to_json()}
    path.write_text(json.dumps(doc))
    with pytest.raises(NetshieldError, match="its checkpoint does not verify"):
        bound(mesh_ca, path)


# --- end to end: a CAS restored with its counter ---------------------------------------------


def cas_on(mesh: Mesh, port: int) -> Proc:
    proc = start(
        "cas",
        ["cas", "serve", "--policy", str(mesh.layout.policy), "--state", str(mesh.layout.cas_state),
         "--listen", f"127.0.0.1:{port}", "--counter", str(mesh.root / "cas.counter")],
        mesh.root,
    )  # fmt: skip
    mesh.procs.append(proc)
    mesh.cas = proc
    return proc


def readyz(admin: str, want: int, timeout: float = 60) -> object:
    """The /readyz body once it answers ``want`` (the timeout only guards against a hang)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = http_get(f"http://{admin}/readyz")
        if status == want or time.monotonic() > deadline:
            assert status == want, body
            return body
        time.sleep(0.2)


def metric(admin: str, name: str) -> str:
    _status, text = http_get(f"http://{admin}/metrics")
    return next(line for line in str(text).splitlines() if line.startswith(name + " "))


def seen_by(admin: str) -> int:
    """The audit entry of the newest checkpoint a sidecar saw (its /status)."""
    _status, body = http_get(f"http://{admin}/status")
    assert isinstance(body, dict), body
    return int(body["agent"].get("checkpoint_seen") or 0)


def save(mesh: Mesh, to: Path) -> None:
    shutil.copytree(mesh.layout.cas_state, to / "state")
    shutil.copy(mesh.root / "cas.counter", to / "cas.counter")


def put_back(mesh: Mesh, saved: Path) -> None:
    shutil.rmtree(mesh.layout.cas_state)
    shutil.copytree(saved / "state", mesh.layout.cas_state)
    shutil.copy(saved / "cas.counter", mesh.root / "cas.counter")


def audit_verify(mesh: Mesh, *witnesses: Path) -> subprocess.CompletedProcess[str]:
    args = ["cas", "audit", "--verify", "--state", str(mesh.layout.cas_state),
            "--counter", str(mesh.root / "cas.counter")]  # fmt: skip
    for w in witnesses:
        args += ["--witness", str(w)]
    return subprocess.run(netshield_cmd(*args), capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_sidecars_refuse_a_cas_restored_with_its_counter(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path)
    try:
        port = mesh.start_cas().addr("api")[1]
        cas = {"url": f"https://127.0.0.1:{port}", "ca": str(mesh.ca_pem)}
        witness = tmp_path / "orders.witness.json"
        inbound = {"listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}
        orders = mesh.start_sidecar(
            "orders", cas={**cas, "witness_file": str(witness)}, inbound=inbound
        )
        frontend = mesh.start_sidecar("frontend", cas=cas, inbound=inbound)  # memory only
        admins = ["{}:{}".format(*p.addr("admin")) for p in (orders, frontend)]
        for admin in admins:
            readyz(admin, 200)
        mesh.cas.stop()  # type: ignore[union-attr]
        save(mesh, tmp_path / "snapshot")  # one snapshot of both volumes
        cas_on(mesh, port)  # the twin: a plain restart is the same history
        mesh.cas_admin("revoke", "--service", "intruder", "--note", "history moves on")
        head = json.loads(mesh.cas_admin("audit", "--json").stdout.splitlines()[-1])["seq"]
        deadline = time.monotonic() + 60
        while min(seen_by(admin) for admin in admins) < head:
            assert time.monotonic() < deadline, "the sidecars never saw the revocation"
            time.sleep(0.2)
        seen = seen_by(admins[0])
        assert seen == seen_by(admins[1]) == (CasWitness.load(witness).seen or cp(1)).seq
        for admin in admins:
            readyz(admin, 200)
            assert metric(admin, "netshield_cas_rolled_back") == "netshield_cas_rolled_back 0.0"
        assert "audit log intact" in audit_verify(mesh, witness).stdout

        # restore state and counter together: the CAS's own check cannot tell
        mesh.cas.stop()  # type: ignore[union-attr]
        save(mesh, tmp_path / "newest")
        put_back(mesh, tmp_path / "snapshot")
        cas_on(mesh, port)  # it starts: chain, rows and counter agree
        for admin in admins:
            body = readyz(admin, 503)
            assert isinstance(body, dict) and body["error"]["reason"] == "CAS_ROLLED_BACK", body
            assert f"but this sidecar saw it at entry {seen}" in body["error"]["message"], body
            assert metric(admin, "netshield_cas_rolled_back") == "netshield_cas_rolled_back 1.0"
        assert "CAS_ROLLED_BACK" in orders.stderr() and "CAS_ROLLED_BACK" in frontend.stderr()

        # offline, the operator sees it too, but only with a witness file
        assert "audit log intact" in audit_verify(mesh).stdout
        offline = audit_verify(mesh, witness)
        assert offline.returncode != 0
        assert f"saw entry {seen} signed by the CAS (rolled back, together with its counter)" in (
            offline.stdout
        ), offline.stdout

        # a sidecar restarted on its witness file refuses the CAS at attestation
        orders.stop()
        restarted = subprocess.Popen(
            netshield_cmd("sidecar", "--config", str(tmp_path / "orders.sidecar.yaml")),
            stdout=subprocess.PIPE,
            stderr=(tmp_path / "orders-again.stderr").open("w"),
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            log = tmp_path / "orders-again.stderr"
            while "refusing certificate" not in log.read_text():
                assert restarted.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert "CAS_ROLLED_BACK" in log.read_text()
        finally:
            restarted.terminate()
            out, _ = restarted.communicate(timeout=20)
        assert '"event": "ready"' not in out  # no certificate, no listeners

        # the twin: the newest state put back is accepted again
        mesh.cas.stop()  # type: ignore[union-attr]
        put_back(mesh, tmp_path / "newest")
        cas_on(mesh, port)
        readyz(admins[1], 200)
        assert "presents its newest history again" in frontend.stderr()
    finally:
        mesh.stop_all()


def test_a_witness_file_that_cannot_be_written_is_logged_and_memory_goes_on(
    tmp_path: Path, mesh_ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    gone = tmp_path / "gone" / "witness.json"  # its directory does not exist
    witness, signer = bound(mesh_ca, gone)
    witness.remember(signer.sign(cp(3)))
    witness.remember(signer.sign(cp(4)))
    assert witness.seen == cp(4)
    assert caplog.text.count("cannot write") == 1  # once, not per checkpoint
    gone.parent.mkdir()
    witness.remember(signer.sign(cp(5)))  # the twin: writable again
    assert CasWitness.load(gone).seen == cp(5) and "written again" in caplog.text
