"""`netshield config check FILE` tells a sidecar config from a policy and checks either."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from netshield.cli import main
from tests.support import POLICY


def sidecar_file(tmp_path: Path, **extra: object) -> Path:
    (tmp_path / "mesh-ca.pem").write_text("pem")
    (tmp_path / "p1").mkdir(exist_ok=True)
    (tmp_path / "app").mkdir(exist_ok=True)
    doc = {
        "service": "frontend",
        "cas": {"url": "https://127.0.0.1:8443", "ca": "mesh-ca.pem"},
        "platform": {"in_process": "p1"},
        "workload": {"path": "app", "cmd": "python3 app.py"},
        "outbound": [{"service": "orders", "listen": "127.0.0.1:15101"}],
        **extra,
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_valid_sidecar_config_is_reported_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sidecar_file(tmp_path)
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid sidecar config for service frontend" in out
    assert "1 outbound listeners" in out and "admin on 127.0.0.1:15000" in out


def test_broken_sidecar_config_lists_every_problem_by_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sidecar_file(
        tmp_path,
        outbound=[{"service": "orders", "listen": "0.0.0.0:15101"}],
        limits={"idle_timout": "5m"},
    )
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{path}: 2 problem(s)"
    assert (
        "  outbound[0].listen: plaintext listeners must be on loopback "
        "(127.0.0.1, ::1 or localhost), got 0.0.0.0:15101" in err
    )
    assert "  limits.idle_timout: unknown key (did you mean 'idle_timeout'?)" in err


def test_sidecar_config_naming_missing_files_fails_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sidecar_file(tmp_path, platform={"in_process": "no-such-platform"})
    assert main(["config", "check", str(path)]) == 1
    assert "  platform.in_process: no such directory" in capsys.readouterr().err


def test_a_policy_is_still_checked_as_a_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    assert main(["config", "check", str(path)]) == 0
    assert "valid policy for trust domain" in capsys.readouterr().out
    path.write_text(POLICY + "\nsurprise: 1\n")
    assert main(["config", "check", str(path)]) == 1
    assert "surprise: unknown key" in capsys.readouterr().err


def test_yaml_syntax_error_is_a_problem_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("service: frontend\ncas: [\n")
    assert main(["config", "check", str(path)]) == 1
    assert "line" in capsys.readouterr().err


# --- the platform service's config (`netshield platform serve --config`) -----------------------


def platform_file(tmp_path: Path, **extra: object) -> Path:
    from datetime import UTC, datetime

    from netshield.attestation.platform import create_platform, save_platform
    from netshield.pki.ca import create_root_ca

    vendor = create_root_ca("vendor", now=datetime.now(UTC))
    platform = create_platform(
        vendor, platform_id="p-host", tcb_level=7, debug=False, now=datetime.now(UTC)
    )
    if not (tmp_path / "platform").exists():
        save_platform(platform, tmp_path / "platform")
    (tmp_path / "run").mkdir(exist_ok=True)
    doc = {
        "platform": "platform",
        "socket": "run/platform.sock",
        "socket_mode": "0660",
        "workloads": [
            {"uid": 10011, "path": "/workload", "cmd": "python3 app.py"},
            {"path": "/app", "cmd": "python3 main.py"},
        ],
        **extra,
    }
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_platform_service_config_is_checked_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = platform_file(tmp_path)
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: valid platform service config: platform p-host (TCB level 7, debug off)" in out
    assert "(mode 0660)" in out
    assert "uid 10011: /workload (python3 app.py); any other caller: /app (python3 main.py)" in out
    assert not (tmp_path / "run" / "platform.sock").exists()  # nothing was started


def test_a_broken_platform_service_config_lists_every_problem_by_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = platform_file(
        tmp_path,
        socket_mode="0999",
        workloads=[{"path": "workload", "cmd": "python3 app.py", "uid": -1}],
        sockets="typo",
    )
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "socket_mode: not an octal file mode" in err
    assert "workloads[0].path: must be an absolute path" in err
    assert "workloads[0].uid:" in err
    assert "sockets:" in err and "Traceback" not in err
    # the twin on disk: a platform directory that does not load, a socket directory missing
    path = platform_file(tmp_path, platform="nowhere", socket="gone/platform.sock")
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "platform: " in err and "netshield platform init" in err
    assert f"socket: no such directory: {tmp_path / 'gone'}" in err


def test_the_shipped_compose_platform_config_is_recognised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On a machine that is not the compose host only its files are missing: the schema holds."""
    shipped = Path(__file__).resolve().parent.parent / "deploy" / "compose" / "platform.yaml"
    assert main(["config", "check", str(shipped)]) == 1
    head, *problems = capsys.readouterr().err.splitlines()
    assert head.startswith(f"{shipped}: ") and head.endswith(" problem(s)")
    assert problems[0].strip().startswith("platform: ") and "/etc/netshield/platform" in problems[0]
    assert all(p.strip().startswith(("platform: ", "socket: ")) for p in problems), problems


def test_a_sidecar_that_quotes_through_the_platform_service_is_still_a_sidecar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sidecar_file(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["platform"] = {"socket": "/run/netshield/platform.sock"}
    del doc["workload"]
    path.write_text(yaml.safe_dump(doc))
    assert main(["config", "check", str(path)]) == 0
    assert "valid sidecar config for service frontend" in capsys.readouterr().out
