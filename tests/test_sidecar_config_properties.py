"""Property tests: any document (or any text) gives a SidecarConfig or a ConfigError, and every
accepted config keeps plaintext on loopback."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netshield.errors import ConfigError
from netshield.sidecar.config import SidecarConfig, parse_sidecar_config

KEYS = [
    "service", "cas", "url", "ca", "platform", "workload", "path", "cmd", "signer",
    "product_id", "svn", "inbound", "listen", "upstream", "tls_min_version", "outbound",
    "unix", "allowed_uids", "address", "admin", "unsafe_public", "records", "file", "stdout",
    "limits", "max_connections", "handshake_timeout", "idle_timeout", "renewal", "fraction",
    "jitter",
]  # fmt: skip

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "frontend",
            "https://127.0.0.1:8443",
            "127.0.0.1:0",
            "0.0.0.0:7001",
            "[::1]:80",
            "10s",
            "1.3",
            "a" * 64,
            "x" * 200,
        ]
    )
)

DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | SCALARS, children, max_size=6)
    ),
    max_leaves=40,
)

SECTION = st.dictionaries(
    st.sampled_from(KEYS), SCALARS | st.lists(SCALARS, max_size=3), max_size=4
)
SECTIONS = st.dictionaries(
    st.sampled_from(KEYS), SCALARS | SECTION | st.lists(SECTION, max_size=3), max_size=4
)
"""Plausible sections: the right keys with wrong, odd or right values."""

VALID_BASE = {
    "service": "frontend",
    "cas": {"url": "https://127.0.0.1:8443", "ca": "ca.pem"},
    "platform": {"in_process": "p1"},
    "workload": {"path": "app"},
}


def parse_or_config_error(text: str | bytes) -> SidecarConfig | None:
    try:
        return parse_sidecar_config(text, source="fuzz", base_dir=Path("/base"))
    except ConfigError as err:
        assert err.problems and all("\n" not in str(p) for p in err.problems)
        return None


def assert_safe(config: SidecarConfig) -> None:
    for out in config.outbound:
        assert (out.listen is None) != (out.unix is None)
        assert out.listen is None or out.listen.is_loopback
    assert config.inbound is None or config.inbound.upstream.is_loopback
    assert config.admin.listen.is_loopback or config.admin.unsafe_public


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_any_document_gives_a_config_or_a_config_error(doc: object) -> None:
    config = parse_or_config_error(yaml.safe_dump(doc))
    if config is not None:
        assert_safe(config)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(SECTIONS)
def test_any_sections_over_a_valid_base_give_a_config_or_a_config_error(
    sections: dict[str, object],
) -> None:
    config = parse_or_config_error(yaml.safe_dump(VALID_BASE | sections))
    if config is not None:
        assert_safe(config)


@settings(max_examples=200)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_gives_a_config_or_a_config_error(text: str | bytes) -> None:
    parse_or_config_error(text)
