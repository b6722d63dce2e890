"""WAF route settings in the sidecar config are validated like every other key, and
`netshield config check` says which engine and rule set version each route runs."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from netshield.errors import ConfigError
from netshield.sidecar.config import parse_sidecar_config
from netshield.waf.settings import Exclusion

BASE = """
service: frontend
cas: {url: "https://127.0.0.1:1", ca: ca.pem}
platform: {in_process: platform}
workload: {path: ., cmd: "true"}
"""


def parse(extra: str):  # type: ignore[no-untyped-def]
    return parse_sidecar_config(BASE + extra, base_dir=Path("/etc/netshield"))


def test_waf_defaults_routes_and_ingress_are_built_with_their_overrides() -> None:
    config = parse(
        """
waf:
  mode: detect
  paranoia: 2
  exclusions: [{rule: 942100, target: "ARGS:q"}]
  request_timeout: 10s
  routes:
    legacy: {mode: block, exclusions: [{rule: 920350}]}
ingress:
  - {listen: "0.0.0.0:8080", service: orders, tls: server, waf: {paranoia: 3}}
"""
    )
    defaults = config.waf.defaults
    assert config.waf.configured and defaults.engine == "crs" and defaults.mode == "detect"
    assert defaults.paranoia == 2 and defaults.request_timeout == timedelta(seconds=10)
    legacy = config.waf.for_native("legacy")
    assert legacy.mode == "block" and legacy.paranoia == 2
    assert legacy.exclusions == (Exclusion(942100, "ARGS:q"), Exclusion(920350))
    assert config.waf.for_native("other") == defaults
    (ingress,) = config.ingress
    assert ingress.service == "orders" and ingress.tls == "server" and ingress.waf.paranoia == 3
    assert ingress.name == "ingress:orders"


def test_without_a_waf_section_routes_use_crs_when_installed_else_the_compact_set() -> None:
    config = parse("")
    assert not config.waf.configured and config.waf.defaults.engine == "auto"
    assert config.ingress == ()


@pytest.mark.parametrize(
    ("extra", "path", "words"),
    [
        ("waf: {paranoia: 5}", "waf.paranoia", "at most 4"),
        ("waf: {mode: blok}", "waf.mode", "block"),
        ("waf: {engine: coraza}", "waf.engine", "not allowed"),
        ("waf: {inbound_threshold: 0}", "waf.inbound_threshold", "at least 1"),
        ("waf: {exclusions: [{rule: x}]}", "waf.exclusions[0].rule", "rule id"),
        (
            "waf: {exclusions: [{rule: 1, target: 'args;q'}]}",
            "waf.exclusions[0].target",
            "ModSecurity variable",
        ),
        ("waf: {max_bodyy: 10}", "waf.max_bodyy", "unknown"),
        ("waf: {routes: {legacy: {paranoia: 0}}}", "waf.routes.legacy.paranoia", "at least 1"),
        ("waf: {request_timeout: forever}", "waf.request_timeout", "duration"),
        ("ingress: [{listen: '0.0.0.0:8080'}]", "ingress[0].service", "required"),
        (
            "ingress: [{listen: '0.0.0.0:8080', service: orders, tls: mutual}]",
            "ingress[0].tls",
            "not allowed",
        ),
        (
            "admin: {listen: '127.0.0.1:9000'}\ningress: [{listen: '127.0.0.1:9000', service: orders}]",
            "admin.listen",
            "clashes with ingress[0].listen",
        ),
    ],
)
def test_bad_waf_settings_are_reported_by_their_key_path(extra: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(extra)
    problems = [str(p) for p in err.value.problems]
    assert any(p.startswith(path) and words in p for p in problems), problems


def run_check(tmp_path: Path, extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "platform").mkdir(exist_ok=True)
    config = tmp_path / "sidecar.yaml"
    config.write_text(BASE + extra)
    return subprocess.run(
        [".venv/bin/netshield", "config", "check", str(config)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def test_config_check_names_the_engine_and_crs_version_of_each_route(tmp_path: Path) -> None:
    done = run_check(
        tmp_path, "waf: {paranoia: 2}\ningress: [{listen: '127.0.0.1:0', service: orders}]\n"
    )
    assert done.returncode == 0, done.stderr
    assert "OWASP CRS 3.3.4" in done.stdout and "paranoia 2" in done.stdout
    assert "ingress:orders" in done.stdout


def test_config_check_refuses_crs_rules_that_cannot_load(tmp_path: Path) -> None:
    done = run_check(tmp_path, f"waf: {{rules: {tmp_path / 'nowhere'}}}\n")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no OWASP Core Rule Set under" in done.stderr and done.stderr.count("\n") == 1
