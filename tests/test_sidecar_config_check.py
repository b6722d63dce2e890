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
