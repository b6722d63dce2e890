"""The sidecar config's `transparent:` section: parsed once, every problem by its key path."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.errors import ConfigError
from netshield.sidecar.config import TransparentConfig, parse_sidecar_config

BASE = """\
service: frontend
cas: {url: "https://cas.internal:8443", ca: ca.pem}
platform: {in_process: platform}
workload: {path: app}
"""


def test_transparent_section_with_defaults() -> None:
    config = parse_sidecar_config(BASE + "transparent: {service_ports: [8080]}\n")
    assert config.transparent == TransparentConfig(
        outbound_port=15001, inbound_port=15006, mode="strict", service_ports=(8080,)
    )
    assert parse_sidecar_config(BASE).transparent is None  # explicit mode only


def test_permissive_mode_and_custom_ports() -> None:
    config = parse_sidecar_config(
        BASE + "transparent: {mode: permissive, outbound_port: 16001, inbound_port: 16006}\n"
    )
    assert config.transparent == TransparentConfig(16001, 16006, "permissive", ())


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("{mode: strictt}", "transparent.mode: 'strictt' is not allowed (did you mean 'strict'?)"),
        ("{outbound_port: 0}", "transparent.outbound_port: must be at least 1"),
        ("{service_ports: [15001]}", "transparent.service_ports[0]: 15001 is a capture port"),
        ("{service_ports: [80, 80]}", "transparent.service_ports[1]: 80 is listed twice"),
        ("{inbound_port: 15001}", "transparent.inbound_port: 0.0.0.0:15001 clashes with"),
        (
            "{inbound_port: 15000}",
            "admin.listen: 127.0.0.1:15000 clashes with transparent.inbound_port",
        ),
        ("{capture: true}", "transparent.capture: unknown key"),
        ("yes", "transparent: expected transparent capture"),
    ],
)
def test_bad_transparent_sections_name_the_key(section: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_sidecar_config(BASE + f"transparent: {section}\n")
    assert any(problem in str(p) for p in err.value.problems), err.value.problems


@given(
    st.dictionaries(
        st.sampled_from(["outbound_port", "inbound_port", "mode", "service_ports", "other"]),
        st.one_of(
            st.integers(-5, 70000),
            st.text(max_size=10),
            st.lists(st.integers(-1, 70000), max_size=4),
        ),
        max_size=5,
    )
)
def test_any_transparent_section_parses_or_lists_its_problems(section: dict[str, object]) -> None:
    import yaml

    text = BASE + yaml.safe_dump({"transparent": section})
    try:
        config = parse_sidecar_config(text)
    except ConfigError as err:
        assert err.problems
        return
    t = config.transparent
    assert t is not None and t.outbound_port != t.inbound_port
    assert not {t.outbound_port, t.inbound_port} & set(t.service_ports)
