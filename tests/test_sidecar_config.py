"""The sidecar config: defaults, every field's problem by key path (each with a passing twin),
the loopback-only rules for plaintext and the admin listener, and paths relative to the file."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from netshield.errors import ConfigError
from netshield.netaddr import HostPort
from netshield.sidecar.config import (
    SidecarConfig,
    detect_kind,
    load_sidecar_config,
    parse_sidecar_config,
)

BASE = Path("/etc/netshield")

MINIMAL: dict[str, Any] = {
    "service": "frontend",
    "cas": {"url": "https://127.0.0.1:8443", "ca": "mesh-ca.pem"},
    "platform": {"in_process": "platforms/p1"},
    "workload": {"path": "app", "cmd": "python3 app.py"},
}


def doc_with(**changes: Any) -> dict[str, Any]:
    """MINIMAL with dotted-path changes: doc_with(**{"cas.url": "x"}); None deletes the key."""
    doc = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


def parse(doc: object) -> SidecarConfig:
    return parse_sidecar_config(yaml.safe_dump(doc), source="test.yaml", base_dir=BASE)


def problems(doc: object) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse(doc)
    return {p.path: p.message for p in info.value.problems}


def test_minimal_config_gets_safe_defaults() -> None:
    config = parse(MINIMAL)
    assert config.service == "frontend"
    assert config.inbound is None and config.outbound == ()
    assert config.admin.listen == HostPort("127.0.0.1", 15000) and not config.admin.unsafe_public
    assert config.records.file is None and config.records.stdout is False
    assert config.limits.max_connections == 1024
    assert config.limits.handshake_timeout == timedelta(seconds=10)
    assert config.limits.connect_timeout == timedelta(seconds=5)
    assert config.limits.idle_timeout == timedelta(seconds=300)
    assert config.limits.drain_timeout == timedelta(seconds=15)
    assert config.limits.max_handshakes == 256 and config.limits.max_handshakes_per_source == 64
    assert config.limits.handshake_timeout_min == timedelta(seconds=1)
    assert config.records.aggregate_denials == timedelta(seconds=10)
    assert (config.renewal.fraction, config.renewal.jitter) == (0.5, 0.1)
    assert config.workload.signer == "0" * 64
    assert (config.workload.product_id, config.workload.svn) == (0, 0)


def test_full_config_is_typed() -> None:
    config = parse(
        doc_with(
            **{
                "workload.cmd": "python3 app.py --name 'a b'",
                "inbound": {"listen": "0.0.0.0:7001", "upstream": "127.0.0.1:8080"},
                "outbound": [
                    {"service": "orders", "listen": "127.0.0.1:15101", "address": "10.0.0.7:7002"},
                    {"service": "billing", "unix": "run/billing.sock", "allowed_uids": [1000]},
                ],
                "records": {"file": "records.jsonl", "stdout": True},
                "limits": {"idle_timeout": "5m", "handshake_timeout": 3, "drain_timeout": "0s"},
                "renewal": {"fraction": 0.6, "jitter": 0},
            }
        )
    )
    assert config.workload.cmd == ("python3", "app.py", "--name", "a b")
    assert config.inbound is not None
    assert config.inbound.listen == HostPort("0.0.0.0", 7001)
    assert config.inbound.upstream == HostPort("127.0.0.1", 8080)
    assert config.inbound.tls_min_version == "1.3"
    orders, billing = config.outbound
    assert orders.listen == HostPort("127.0.0.1", 15101) and orders.unix is None
    assert orders.address == HostPort("10.0.0.7", 7002) and orders.listener == "127.0.0.1:15101"
    assert billing.unix == BASE / "run/billing.sock" and billing.allowed_uids == {1000}
    assert billing.listener == f"unix:{BASE / 'run/billing.sock'}"
    assert config.limits.idle_timeout == timedelta(minutes=5)
    assert config.limits.handshake_timeout == timedelta(seconds=3)
    assert config.limits.drain_timeout == timedelta(0)
    assert (config.renewal.fraction, config.renewal.jitter) == (0.6, 0.0)
    assert config.records.stdout is True


def test_paths_are_relative_to_the_config_directory_and_absolute_ones_stay() -> None:
    config = parse(doc_with(**{"records": {"file": "/var/log/ns.jsonl"}}))
    assert config.cas.ca == BASE / "mesh-ca.pem"
    assert config.platform.in_process == BASE / "platforms/p1"
    assert config.workload.path == BASE / "app"
    assert config.records.file == Path("/var/log/ns.jsonl")


@pytest.mark.parametrize(
    ("changes", "path", "fragment"),
    [
        ({"service": None}, "service", "missing"),
        ({"service": "Front End"}, "service", "not a service name"),
        ({"cas": None}, "cas", "missing"),
        ({"cas.url": "http://127.0.0.1:8443"}, "cas.url", "https://"),
        ({"cas.url": "https://"}, "cas.url", "no host"),
        ({"cas.url": "https://cas:99999"}, "cas.url", "not a URL"),
        ({"cas.ca": None}, "cas.ca", "missing"),
        ({"cas.ca": ""}, "cas.ca", "must not be empty"),
        ({"platform": 7}, "platform", "expected where quotes come from"),
        ({"platform": {"in_process": 7}}, "platform.in_process", "expected a path"),
        ({"workload.path": None}, "workload.path", "missing"),
        ({"workload.cmd": "python3 'app.py"}, "workload.cmd", "not a command line"),
        ({"workload.signer": "ab" * 31}, "workload.signer", "sha256"),
        ({"workload.product_id": -1}, "workload.product_id", "at least 0"),
        ({"workload.svn": "1"}, "workload.svn", "expected an integer"),
        ({"inbound": {"upstream": "127.0.0.1:80"}}, "inbound.listen", "missing"),
        ({"inbound": {"listen": "0.0.0.0:7001"}}, "inbound.upstream", "missing"),
        (
            {"inbound": {"listen": "nonsense", "upstream": "127.0.0.1:80"}},
            "inbound.listen",
            "host:port",
        ),
        (
            {
                "inbound": {
                    "listen": "0.0.0.0:7001",
                    "upstream": "127.0.0.1:80",
                    "tls_min_version": "1.1",
                }
            },
            "inbound.tls_min_version",
            '"1.3" or "1.2"',
        ),
        ({"outbound": {"service": "orders"}}, "outbound", "expected a list"),
        ({"outbound": [{"listen": "127.0.0.1:1"}]}, "outbound[0].service", "missing"),
        (
            {"outbound": [{"service": "orders", "listen": "127.0.0.1:70000"}]},
            "outbound[0].listen",
            "out of range",
        ),
        (
            {"outbound": [{"service": "orders", "unix": "s", "allowed_uids": [-1]}]},
            "outbound[0].allowed_uids[0]",
            "at least 0",
        ),
        (
            {"outbound": [{"service": "orders", "listen": "127.0.0.1:1", "address": "x:0"}]},
            "outbound[0].address",
            "out of range",
        ),
        ({"admin": {"listen": "localhost"}}, "admin.listen", "host:port"),
        ({"admin": {"unsafe_public": "yes"}}, "admin.unsafe_public", "true or false"),
        ({"records": {"stdout": 1}}, "records.stdout", "true or false"),
        ({"limits": {"max_connections": 0}}, "limits.max_connections", "at least 1"),
        ({"limits": {"max_handshakes": 0}}, "limits.max_handshakes", "at least 1"),
        (
            {"limits": {"max_handshakes_per_source": "many"}},
            "limits.max_handshakes_per_source",
            "integer",
        ),
        (
            {"limits": {"handshake_timeout": "5s", "handshake_timeout_min": "10s"}},
            "limits.handshake_timeout_min",
            "must not exceed limits.handshake_timeout (5s), got 10s",
        ),
        ({"records": {"aggregate_denials": "2h"}}, "records.aggregate_denials", "at most 1h"),
        ({"limits": {"handshake_timeout": "ten seconds"}}, "limits.handshake_timeout", "duration"),
        ({"limits": {"connect_timeout": "0s"}}, "limits.connect_timeout", "at least 1s"),
        ({"limits": {"idle_timeout": "48h"}}, "limits.idle_timeout", "at most 24h"),
        ({"limits": {"drain_timeout": "1h"}}, "limits.drain_timeout", "at most 10m"),
        ({"renewal": {"fraction": 1}}, "renewal.fraction", "(0, 1)"),
        ({"renewal": {"fraction": True}}, "renewal.fraction", "expected a number"),
        ({"renewal": {"jitter": 0.9}}, "renewal.jitter", "[0, 0.5]"),
    ],
)
def test_each_field_problem_names_its_key_path(
    changes: dict[str, Any], path: str, fragment: str
) -> None:
    found = problems(doc_with(**changes))
    assert path in found, found
    assert fragment in found[path]


def test_the_twin_of_each_field_problem_parses() -> None:
    parse(
        doc_with(
            **{
                "cas.url": "https://cas.internal:8443/base",
                "workload.signer": "ab" * 32,
                "workload.product_id": 7,
                "workload.svn": 3,
                "inbound": {
                    "listen": "[::]:7001",
                    "upstream": "[::1]:80",
                    "tls_min_version": "1.2",
                },
                "outbound": [
                    {"service": "orders", "listen": "localhost:0", "address": "orders:7002"},
                    {"service": "billing", "unix": "s", "allowed_uids": [0]},
                ],
                "admin": {"listen": "[::1]:0", "unsafe_public": False},
                "limits": {
                    "max_connections": 1,
                    "connect_timeout": "1s",
                    "idle_timeout": "24h",
                    "max_handshakes": 1,
                    "max_handshakes_per_source": 1,
                    "handshake_timeout": "5s",
                    "handshake_timeout_min": "5s",
                },
                "records": {"aggregate_denials": "0s"},
                "renewal": {"fraction": 0.99, "jitter": 0.5},
            }
        )
    )


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        doc_with(
            **{
                "service": "UPPER",
                "cas.url": "http://x",
                "workload.svn": -1,
                "limits": {"max_connections": 0},
            }
        )
    )
    assert {"service", "cas.url", "workload.svn", "limits.max_connections"} <= found.keys()


def test_unknown_keys_are_errors_with_did_you_mean() -> None:
    found = problems(doc_with(**{"limits": {"idle_timout": "5m"}, "outbond": []}))
    assert found["limits.idle_timout"] == "unknown key (did you mean 'idle_timeout'?)"
    assert "did you mean 'outbound'?" in found["outbond"]
    parse(doc_with(**{"limits": {"idle_timeout": "5m"}, "outbound": []}))


def test_unquoted_tls_version_is_read_as_the_version_it_looks_like() -> None:
    text = yaml.safe_dump(MINIMAL) + "inbound:\n  listen: 0.0.0.0:7001\n  upstream: 127.0.0.1:80\n"
    config = parse_sidecar_config(text + "  tls_min_version: 1.2\n", base_dir=BASE)
    assert config.inbound is not None and config.inbound.tls_min_version == "1.2"
    with pytest.raises(ConfigError, match="tls_min_version"):
        parse_sidecar_config(text + "  tls_min_version: 1.0\n", base_dir=BASE)


# --- plaintext stays on loopback -------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "[::1]", "localhost"])
def test_outbound_listener_on_loopback_is_accepted(host: str) -> None:
    config = parse(doc_with(outbound=[{"service": "orders", "listen": f"{host}:15101"}]))
    assert config.outbound[0].listen is not None and config.outbound[0].listen.is_loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "[::]", "orders.internal"])
def test_outbound_listener_off_loopback_is_refused(host: str) -> None:
    found = problems(
        doc_with(
            outbound=[
                {"service": "orders", "listen": "127.0.0.1:15100"},
                {"service": "billing", "listen": f"{host}:15101"},
            ]
        )
    )
    assert found == {
        "outbound[1].listen": "plaintext listeners must be on loopback "
        f"(127.0.0.1, ::1 or localhost), got {host}:15101"
    }


def test_inbound_upstream_must_be_loopback_but_inbound_listen_may_be_public() -> None:
    ok = parse(doc_with(inbound={"listen": "0.0.0.0:7001", "upstream": "127.0.0.1:8080"}))
    assert ok.inbound is not None and ok.inbound.listen.host == "0.0.0.0"
    found = problems(doc_with(inbound={"listen": "0.0.0.0:7001", "upstream": "10.1.2.3:8080"}))
    assert found == {
        "inbound.upstream": "plaintext upstreams must be on loopback "
        "(127.0.0.1, ::1 or localhost), got 10.1.2.3:8080"
    }


def test_public_admin_listener_needs_unsafe_public() -> None:
    found = problems(doc_with(admin={"listen": "0.0.0.0:15000"}))
    assert "loopback-only" in found["admin.listen"]
    assert "admin.unsafe_public: true" in found["admin.listen"]
    config = parse(doc_with(admin={"listen": "0.0.0.0:15000", "unsafe_public": True}))
    assert config.admin.listen == HostPort("0.0.0.0", 15000) and config.admin.unsafe_public


def test_port_zero_is_allowed_for_listeners_but_not_for_destinations() -> None:
    config = parse(
        doc_with(
            inbound={"listen": "127.0.0.1:0", "upstream": "127.0.0.1:8080"},
            outbound=[
                {"service": "orders", "listen": "127.0.0.1:0"},
                {"service": "billing", "listen": "127.0.0.1:0"},
            ],
            admin={"listen": "127.0.0.1:0"},
        )
    )
    assert config.admin.listen.port == 0
    found = problems(doc_with(inbound={"listen": "127.0.0.1:7001", "upstream": "127.0.0.1:0"}))
    assert "out of range" in found["inbound.upstream"]


# --- checks across keys ----------------------------------------------------------------------


def test_outbound_needs_exactly_one_of_listen_and_unix() -> None:
    found = problems(
        doc_with(
            outbound=[
                {"service": "orders"},
                {"service": "orders", "listen": "127.0.0.1:15101", "unix": "o.sock"},
            ]
        )
    )
    assert "needs listen" in found["outbound[0]"]
    assert "not both" in found["outbound[1].unix"]


def test_allowed_uids_apply_to_tcp_and_unix_listeners() -> None:
    tcp = {"service": "orders", "listen": "127.0.0.1:1", "allowed_uids": [1]}
    assert parse(doc_with(outbound=[tcp])).outbound[0].allowed_uids == {1}
    unix = {"service": "orders", "unix": "o.sock", "allowed_uids": [1]}
    assert parse(doc_with(outbound=[unix])).outbound[0].allowed_uids == {1}


def test_unix_socket_owner_group_and_mode() -> None:
    out = {"service": "orders", "unix": "o.sock"}
    default = parse(doc_with(outbound=[out])).outbound[0]
    assert (default.unix_owner, default.unix_group, default.unix_mode) == (None, None, 0o660)
    named = {**out, "unix_owner": "root", "unix_group": 0, "unix_mode": "0600"}
    chosen = parse(doc_with(outbound=[named])).outbound[0]
    assert (chosen.unix_owner, chosen.unix_group, chosen.unix_mode) == (0, 0, 0o600)
    assert parse(doc_with(outbound=[{**out, "unix_mode": 0o640}])).outbound[0].unix_mode == 0o640


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        ({"unix_owner": "no-such-user-here"}, "unix_owner", "no user named"),
        ({"unix_group": "no-such-group-here"}, "unix_group", "no group named"),
        ({"unix_mode": "0999"}, "unix_mode", "octal"),
        ({"unix_mode": "01777"}, "unix_mode", "octal"),
        ({"unix_mode": "0666"}, "unix_mode", "lets every local user connect"),
    ],
)
def test_bad_unix_socket_settings_are_refused_by_key_path(
    extra: dict[str, object], key: str, says: str
) -> None:
    found = problems(doc_with(outbound=[{"service": "orders", "unix": "o.sock", **extra}]))
    assert says in found[f"outbound[0].{key}"]


def test_unix_settings_on_a_tcp_listener_and_the_world_writable_twin() -> None:
    tcp = {"service": "orders", "listen": "127.0.0.1:1", "unix_owner": 0}
    assert "unix listeners only" in problems(doc_with(outbound=[tcp]))["outbound[0].unix_owner"]
    # world-writable is fine once allowed_uids says who may call
    ok = {"service": "orders", "unix": "o.sock", "unix_mode": "0666", "allowed_uids": [1]}
    assert parse(doc_with(outbound=[ok])).outbound[0].unix_mode == 0o666


def test_unix_socket_path_over_the_kernel_limit_is_refused() -> None:
    found = problems(doc_with(outbound=[{"service": "orders", "unix": "x" * 120 + ".sock"}]))
    assert "107-byte limit" in found["outbound[0].unix"]


@pytest.mark.parametrize(
    ("inbound", "admin", "clash"),
    [
        ("127.0.0.1:15101", "127.0.0.1:15101", True),
        ("0.0.0.0:15101", "127.0.0.1:15101", True),
        ("[::]:15101", "[::1]:15101", True),
        ("127.0.0.1:15101", "127.0.0.1:15102", False),
        ("127.0.0.1:0", "127.0.0.1:0", False),
    ],
)
def test_listeners_that_cannot_both_bind_are_refused(inbound: str, admin: str, clash: bool) -> None:
    doc = doc_with(
        inbound={"listen": inbound, "upstream": "127.0.0.1:8080"}, admin={"listen": admin}
    )
    if clash:
        assert "clashes with inbound.listen" in problems(doc)["admin.listen"]
    else:
        parse(doc)


def test_inbound_listen_on_the_upstream_port_is_refused() -> None:
    found = problems(doc_with(inbound={"listen": "0.0.0.0:8080", "upstream": "127.0.0.1:8080"}))
    assert "clashes with inbound.listen" in found["inbound.upstream"]
    parse(doc_with(inbound={"listen": "0.0.0.0:7001", "upstream": "127.0.0.1:8080"}))


def test_the_same_unix_path_twice_is_refused() -> None:
    found = problems(
        doc_with(
            outbound=[
                {"service": "orders", "unix": "run/o.sock"},
                {"service": "billing", "unix": str(BASE / "run/o.sock")},
            ]
        )
    )
    assert "is also outbound[0].unix" in found["outbound[1].unix"]


# --- kinds and files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "kind"),
    [
        (MINIMAL, "sidecar"),
        ({"service": "x"}, "sidecar"),
        ({"trust_domain": "td", "services": {}}, "policy"),
        ({"trust_domain": "td", "service": "x", "services": {}}, "policy"),
        ({"service": "x", "cas": {}, "trust_domain": "td"}, "sidecar"),
        ({}, "policy"),
        ([1, 2], "policy"),
        (None, "policy"),
    ],
)
def test_detect_kind(doc: object, kind: str) -> None:
    assert detect_kind(doc) == kind


def test_load_reports_missing_files_and_accepts_present_ones(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(MINIMAL | {"records": {"file": "logs/r.jsonl"}}))
    with pytest.raises(ConfigError) as info:
        load_sidecar_config(path)
    found = {p.path for p in info.value.problems}
    assert found == {"cas.ca", "platform.in_process", "workload.path", "records.file"}
    (tmp_path / "mesh-ca.pem").write_text("pem")
    (tmp_path / "platforms/p1").mkdir(parents=True)
    (tmp_path / "app").mkdir()
    (tmp_path / "logs").mkdir()
    config = load_sidecar_config(path)
    assert config.cas.ca == tmp_path / "mesh-ca.pem"
    assert config.records.file == tmp_path / "logs/r.jsonl"


def test_load_of_an_unreadable_file_is_one_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_sidecar_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("platform", "workload", "where", "says"),
    [
        ("platforms/p1", "keep", "platform", "expected where quotes come from"),
        ({}, "keep", "platform", "needs socket, tsm or in_process"),
        (
            {"socket": "/run/p.sock", "in_process": "p1"},
            "keep",
            "platform.in_process",
            "give one of socket, tsm, in_process",
        ),
        ({"in_process": "p1"}, None, "workload", "is required with platform.in_process"),
        ({"socket": "/run/p.sock"}, "keep", "workload", "measures the workload itself"),
    ],
)
def test_the_source_of_quotes_is_chosen_explicitly(platform, workload, where, says) -> None:
    doc = doc_with(platform=platform)
    if workload is None:
        doc.pop("workload")
    with pytest.raises(ConfigError) as err:
        parse(doc)
    assert any(p.path == where and says in p.message for p in err.value.problems), err.value


def test_a_sidecar_on_the_platform_service_names_the_socket_and_no_workload() -> None:
    doc = doc_with(platform={"socket": "run/platform.sock"})
    doc.pop("workload")
    config = parse(doc)
    assert config.platform.socket == BASE / "run/platform.sock"
    assert config.platform.in_process is None and config.workload is None


def test_cas_url_may_list_the_replicas_of_one_cas_in_order() -> None:
    urls = ["https://cas-1.internal:8443", "https://cas-2.internal:8443"]
    config = parse(doc_with(**{"cas.url": urls}))
    assert config.cas.urls == tuple(urls)
    assert config.cas.url == urls[0]  # the preferred replica
    assert parse(MINIMAL).cas.urls == ("https://127.0.0.1:8443",)  # one URL stays one


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        ([], "cas.url", "must not be empty"),
        (["https://cas-1:8443", "http://cas-2:8443"], "cas.url[1]", "https://"),
        ([8443], "cas.url[0]", "an https URL"),
    ],
)
def test_a_bad_replica_list_names_the_entry(value: object, path: str, message: str) -> None:
    found = problems(doc_with(**{"cas.url": value}))
    assert message in found[path]
