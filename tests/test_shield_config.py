"""The in-process shield's config: the sidecar's sections, its own rules, every problem by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from netshield.errors import ConfigError
from netshield.shield.config import parse_pattern, parse_shield_config

BASE = """
service: frontend
cas: {url: "https://cas.test:8443", ca: ca.pem}
platform: {in_process: p1}
"""


def test_a_minimal_config_is_strict_by_default() -> None:
    config = parse_shield_config(BASE)
    assert config.outbound.default == "refuse" and config.inbound.default == "protected"
    assert config.admin is None and config.workload.path is None
    view = config.sidecar_view(Path("/app"), ("python3", "app.py"))
    assert view.workload is not None and view.workload.cmd == ("python3", "app.py")


def test_every_problem_is_reported_with_its_key_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_shield_config(
            BASE.replace("{in_process: p1}", "{socket: /run/p.sock}")
            + "workload: {path: ., cmd: python3 app.py}\n"
            + "outbound:\n  default: protected\n  destinations:\n"
            + '    - {address: "10.0.0.1:80"}\n'
            + "    - {service: orders, mode: refuse}\n"
            + '    - {address: "a b:1", mode: refuse}\n'
            + "    - {}\n"
            + "inbound: {ports: [{port: 80}, {port: 80, mode: nope}]}\n"
            + "admin: {listen: 0.0.0.0:15000}\n"
        )
    text = str(err.value)
    for fragment in (
        "workload.cmd: unknown key",
        "workload: only a platform held in process measures the workload itself",
        "outbound.default: 'protected' is not allowed",
        "outbound.destinations[0]: protected needs the service",
        "outbound.destinations[1].mode: a mesh service is always protected",
        "outbound.destinations[2].address:",
        "outbound.destinations[3]: needs service",
        "inbound.ports[1].mode:",
        "inbound.ports[1].port: 80 is listed twice",
        "admin.listen: the admin listener is loopback-only",
    ):
        assert fragment in text, (fragment, text)


def test_a_correct_config_with_every_section_parses() -> None:
    config = parse_shield_config(
        BASE
        + "outbound:\n  default: unprotected\n  destinations:\n"
        + '    - {service: orders, address: "10.0.0.2:8080", names: [orders]}\n'
        + '    - {address: "*:53", mode: unprotected}\n'
        + "inbound: {default: refuse, ports: [{port: 8080}], tls_min_version: '1.2'}\n"
        + "admin: {listen: 127.0.0.1:0}\n"
        + "limits: {connect_timeout: 2s}\n"
    )
    assert config.outbound.destinations[0].service == "orders"
    assert config.inbound.mode_of(8080) == "protected" and config.inbound.mode_of(1) == "refuse"
    assert config.admin is not None and config.limits.connect_timeout.total_seconds() == 2


@pytest.mark.parametrize("text", ["nocolon", ":80", "host:0", "host:x", "1.2.3.4/40:*", "::1:80"])
def test_bad_address_patterns_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text)):
        parse_pattern(text)


def test_config_check_recognises_a_shield_config_and_lists_its_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from netshield.cli import main

    (tmp_path / "ca.pem").write_text("")
    (tmp_path / "p1").mkdir()
    good = tmp_path / "shield.yaml"
    good.write_text(BASE + "outbound: {default: unprotected}\nadmin: {listen: 127.0.0.1:0}\n")
    assert main(["config", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "valid in-process shield config for service frontend" in out
    assert "outside the mesh unprotected" in out and "admin on 127.0.0.1:0" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("p1", "missing") + "outbound: {default: nope}\n")
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "outbound.default: 'nope' is not allowed" in err
    assert "platform.in_process: no such directory" not in err  # parse problems come first
