"""`netshield platform serve`: the host's platform measures its callers itself.

The sidecar sends nothing but report data; the platform names the caller by SO_PEERCRED, measures
the workload its own map names for that caller inside the caller's root (``/proc/<pid>/root``),
and signs over its own measurement. Unit tests run against this process as the caller; the
end-to-end tests run a real CAS, a real platform service, a sidecar and an intruder process of
another uid (root only, always in CI)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import yaml

from netshield.attestation.measurement import measure
from netshield.attestation.platform import create_platform, save_platform
from netshield.attestation.verifier import SimulatedQuoteVerifier
from netshield.attestation.workload import WorkloadConfig
from netshield.errors import ConfigError, NetshieldError
from netshield.pki.ca import create_root_ca
from netshield.quoting.client import PlatformSocket
from netshield.quoting.config import QuotingConfig, WorkloadRule, parse_quoting_config
from netshield.quoting.procfs import PeerCred, WorkloadError, measure_caller
from netshield.quoting.server import running_platform
from netshield.reasons import Reason
from tests.mesh_support import ENTRY, Mesh, make_mesh, start

NOW = datetime.now(UTC)
REPORT = "ab" * 32
NOBODY = 65534


def me() -> PeerCred:
    return PeerCred(os.getpid(), os.getuid(), os.getgid())


def workload(tmp_path: Path, name: str = "app", text: str = "print('orders')\n") -> Path:
    path = tmp_path / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "app.py").write_text(text)
    return path


# --- what is measured ----------------------------------------------------------------------------
def test_the_platform_measures_the_callers_workload_inside_the_callers_root(tmp_path):
    app = workload(tmp_path)
    got = measure_caller(me(), WorkloadConfig(app, ("python3", "app.py")))
    assert got == measure(app, ["python3", "app.py"])
    (app / "app.py").write_text("print('orders, with a backdoor')\n")
    assert measure_caller(me(), WorkloadConfig(app, ("python3", "app.py"))) != got


def test_a_symlink_on_the_workload_path_is_refused(tmp_path):
    real = workload(tmp_path, "real")
    (tmp_path / "link").symlink_to(real)
    assert measure_caller(me(), WorkloadConfig(real))  # the twin: the real path measures
    with pytest.raises(WorkloadError, match="is a symlink") as err:
        measure_caller(me(), WorkloadConfig(tmp_path / "link"))
    assert err.value.reason is Reason.WORKLOAD_NOT_MEASURABLE


def test_a_caller_outside_the_platforms_pid_namespace_or_gone_is_refused(tmp_path):
    app = workload(tmp_path)
    with pytest.raises(WorkloadError, match="pid namespace") as err:
        measure_caller(PeerCred(0, 1000, 1000), WorkloadConfig(app))
    assert "hostPID" in err.value.hint
    with pytest.raises(WorkloadError, match=r"cannot find"):
        measure_caller(me(), WorkloadConfig(tmp_path / "missing"))


# --- its config ----------------------------------------------------------------------------------
GOOD_CONFIG = {
    "platform": "platform",
    "socket": "run/platform.sock",
    "workloads": [
        {"uid": 10011, "path": "/workload", "cmd": "python3 app.py", "svn": 2},
        {"path": "/workload", "cmd": "python3 app.py"},
    ],
}


def test_platform_config_parses_a_workload_map_and_takes_the_first_matching_rule():
    config = parse_quoting_config(yaml.safe_dump(GOOD_CONFIG), base_dir=Path("/etc/ns"))
    assert config.platform == Path("/etc/ns/platform") and config.socket_mode == 0o666
    rule = config.rule_for(10011)
    assert rule is not None and rule.uid == 10011 and rule.workload.svn == 2
    fallback = config.rule_for(10012)
    assert fallback is not None and fallback.uid is None
    only_uid = QuotingConfig(Path("p"), Path("s"), workloads=config.workloads[:1])
    assert only_uid.rule_for(10012) is None


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        ({"workloads": [{"path": "workload"}]}, "workloads[0].path", "absolute path"),
        ({"workloads": [{"path": "/a/../b"}]}, "workloads[0].path", "'..'"),
        ({"workloads": []}, "workloads", "at least one rule"),
        (
            {"workloads": [{"uid": 5, "path": "/a"}, {"uid": 5, "path": "/b"}]},
            "workloads[1]",
            "already covered",
        ),
        (
            {"workloads": [{"path": "/a"}, {"uid": 5, "path": "/b"}]},
            "workloads[1]",
            "never matches",
        ),
        ({"socket_mode": "0999"}, "socket_mode", "octal"),
        ({"platfrom": "x"}, "platfrom", "did you mean"),
    ],
)
def test_platform_config_problems_are_named_by_key_path(change, where, says):
    with pytest.raises(ConfigError) as err:
        parse_quoting_config(yaml.safe_dump({**GOOD_CONFIG, **change}))
    assert any(p.path == where and says in p.message for p in err.value.problems), err.value


# --- the service, in process ---------------------------------------------------------------------
@pytest.fixture
def platform_dir(tmp_path: Path) -> tuple[Path, object]:
    vendor = create_root_ca("vendor", now=NOW)
    save_platform(
        create_platform(vendor, platform_id="host-a", tcb_level=5, debug=False, now=NOW),
        tmp_path / "platform",
    )
    return tmp_path / "platform", vendor


@pytest.fixture
async def service(tmp_path: Path, platform_dir) -> AsyncIterator[tuple[Path, Path, object]]:
    app = workload(tmp_path)
    config = QuotingConfig(
        platform=platform_dir[0],
        socket=tmp_path / "run" / "platform.sock",
        workloads=(
            WorkloadRule(os.getuid(), WorkloadConfig(app, ("python3", "app.py"), svn=4)),
            WorkloadRule(NOBODY, WorkloadConfig(tmp_path / "other")),
        ),
    )
    async with running_platform(config):
        yield config.socket, app, platform_dir[1]


async def test_a_quote_over_the_socket_carries_the_platforms_own_measurement(service):
    sock, app, vendor = service
    quoter = PlatformSocket(sock)
    data = await quoter.quote(REPORT)
    verified = SimulatedQuoteVerifier([vendor.cert]).verify(data, now=datetime.now(UTC))
    assert verified.body.measurement == measure(app, ["python3", "app.py"])
    assert (verified.body.report_data, verified.body.svn, verified.platform_id) == (
        REPORT,
        4,
        "host-a",
    )
    assert quoter.platform_id == "host-a" and quoter.last_measurement == verified.body.measurement
    assert oct(sock.stat().st_mode & 0o777) == "0o666"


async def test_a_caller_without_a_workload_rule_gets_no_quote(tmp_path, platform_dir):
    config = QuotingConfig(
        platform=platform_dir[0],
        socket=tmp_path / "platform.sock",
        workloads=(WorkloadRule(os.getuid() + 1, WorkloadConfig(workload(tmp_path))),),
    )
    async with running_platform(config):
        with pytest.raises(NetshieldError, match="no workload rule covers uid") as err:
            await PlatformSocket(config.socket).quote(REPORT)
    assert err.value.reason is Reason.WORKLOAD_NOT_MEASURABLE


async def test_the_request_names_only_report_data(service):
    sock = service[0]
    connector = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(connector=connector) as session:
        for body in ({"report_data": REPORT, "measurement": "ee" * 32}, {"report_data": "xyz"}, []):
            async with session.post("http://p/v1/quote", json=body) as resp:
                answer = await resp.json()
            assert resp.status == 400 and answer["error"]["reason"] == "REQUEST_MALFORMED"
        async with session.post("http://p/v1/quote", json={"report_data": REPORT}) as resp:
            assert resp.status == 200  # the twin


async def test_no_platform_service_is_platform_unavailable(tmp_path):
    with pytest.raises(NetshieldError, match="does not answer") as err:
        await PlatformSocket(tmp_path / "nothing.sock", timeout=2).quote(REPORT)
    assert err.value.reason is Reason.PLATFORM_UNAVAILABLE


# --- end to end: CAS, platform service, a sidecar, an intruder of another uid ---------------------
INTRUDER = textwrap.dedent(
    """
    import asyncio, encodings.idna, json, os, sys  # idna: loaded lazily by ssl
    from pathlib import Path
    from netshield.agent.attest import attest
    from netshield.casclient import CasClient
    from netshield.errors import NetshieldError
    from netshield.quoting.client import PlatformSocket
    from netshield.tls.material import cas_client_context

    cas_url, ca, sock, key, uid = sys.argv[1:6]
    if uid != "-":  # started by root (the interpreter lives in root's home), drops to `uid` first
        os.setgroups([])
        os.setgid(int(uid))
        os.setuid(int(uid))
    out = {}
    try:
        Path(key).read_bytes()
        out["read_key"] = "read it"
    except OSError as err:
        out["read_key"] = type(err).__name__

    async def main():
        quoter = PlatformSocket(Path(sock))
        ctx = cas_client_context(ca_pem=Path(ca).read_bytes())
        async with CasClient(cas_url, ssl_context=ctx) as cas:
            try:
                await attest(cas, quoter, "orders", trust_domain="mesh.netshield.test")
                out["attest"] = "OK"
            except NetshieldError as err:
                out["attest"] = err.reason.value
        out["measurement"] = quoter.last_measurement
    asyncio.run(main())
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Path, Path]]:
    if os.geteuid() != 0:
        pytest.skip("callers of other uids need root")
    mesh = make_mesh(tmp_path_factory.mktemp("mesh"))
    # what an unprivileged intruder can reach: its own workload, the CA bundle, the socket
    shared = Path(tempfile.mkdtemp(prefix="ns-platform-"))
    shared.chmod(0o755)
    try:
        intruder_app = shared / "intruder"
        shutil.copytree(mesh.root / "workloads" / "intruder", intruder_app)
        shutil.copy(mesh.ca_pem, shared / "mesh-ca.pem")
        (shared / "intruder.py").write_text(INTRUDER)
        config = {
            "platform": str(mesh.root / "platforms" / "p1"),
            "socket": str(shared / "run" / "platform.sock"),
            "workloads": [
                {"uid": 0, "path": str(mesh.root / "workloads" / "orders"), "cmd": ENTRY},
                {"uid": NOBODY, "path": str(intruder_app), "cmd": ENTRY},
            ],
        }
        (mesh.root / "platform.yaml").write_text(yaml.safe_dump(config))
        mesh.start_cas()
        mesh.procs.append(
            start(
                "platform",
                ["platform", "serve", "--config", str(mesh.root / "platform.yaml")],
                mesh.root,
            )
        )
        yield mesh, shared, shared / "run" / "platform.sock"
    finally:
        mesh.stop_all()
        shutil.rmtree(shared, ignore_errors=True)


def run_intruder(
    mesh: Mesh, shared: Path, sock: Path, *prefix: str, uid: int | None = NOBODY
) -> dict:
    assert mesh.cas is not None
    proc = subprocess.run(
        [*prefix, sys.executable, str(shared / "intruder.py"), str(mesh.cas.ready["url"]),
         str(shared / "mesh-ca.pem"), str(sock), str(mesh.root / "platforms" / "p1" / "platform.key"),
         "-" if uid is None else str(uid)],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_a_sidecar_attests_through_the_platform_service_and_never_holds_the_key(e2e):
    mesh, _shared, sock = e2e
    sidecar = mesh.start_sidecar(
        "orders",
        platform={"socket": str(sock)},
        workload=None,
        inbound={"listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
    )
    admin = "{}:{}".format(*sidecar.addr("admin"))
    with aiohttp_get(f"http://{admin}/identity") as identity:
        assert identity["measurement"] == mesh.measurements["orders"]
    assert "platform.key" not in sidecar.stderr() and "held in process" not in sidecar.stderr()


def test_the_intruder_gets_a_quote_of_its_own_workload_and_measurement_not_allowed(e2e):
    mesh, shared, sock = e2e
    out = run_intruder(mesh, shared, sock)
    assert out["read_key"] == "PermissionError"  # the platform key is the platform's alone
    assert out["measurement"] == mesh.measurements["intruder"]  # not the one it wanted
    assert out["attest"] == "MEASUREMENT_NOT_ALLOWED"
    platform_log = (mesh.root / "platform.stderr").read_text()
    assert f"uid {NOBODY}: measurement {mesh.measurements['intruder']}" in platform_log


def test_callers_without_a_rule_or_in_a_user_namespace_of_their_own_get_no_quote(e2e):
    mesh, shared, sock = e2e
    assert run_intruder(mesh, shared, sock, uid=NOBODY - 1)["attest"] == "WORKLOAD_NOT_MEASURABLE"
    # a process that made its own user (and mount) namespace could mount anything over its
    # workload: refused even with the uid of orders' rule (0 here)
    unshared = run_intruder(mesh, shared, sock, "unshare", "--user", "--mount", uid=None)
    assert unshared["attest"] == "WORKLOAD_NOT_MEASURABLE"
    assert "user namespace of its own" in (mesh.root / "platform.stderr").read_text()


class aiohttp_get:
    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> dict:
        async def get() -> dict:
            async with aiohttp.ClientSession() as s, s.get(self.url) as resp:
                return dict(await resp.json())

        return asyncio.run(get())

    def __exit__(self, *exc: object) -> None:
        return None
