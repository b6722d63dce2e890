"""`netshield iptables show` needs no privileges and applies nothing: it prints the restore input."""

from __future__ import annotations

from pathlib import Path

import pytest

from netshield.capture.iptables import parse_save, ruleset
from netshield.capture.spec import CaptureSpec, parse_cidrs, parse_ips, parse_ports
from netshield.cli import main


def test_show_prints_both_families_of_rules_for_the_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "iptables", "show", "--proxy-uid", "1337", "--inbound-ports", "8080",
            "--exclude-cidrs", "10.9.0.0/16", "--outbound-port", "16001", "--mode", "permissive",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    spec = CaptureSpec(
        proxy_uids=(1337,),
        outbound_port=16001,
        inbound_ports=parse_ports("8080"),
        exclude_cidrs=parse_cidrs("10.9.0.0/16"),
    )
    assert ruleset(spec, 4) in out and ruleset(spec, 6) in out
    assert (
        out.splitlines()[0].startswith("# outbound TCP") and "except uid 1337 and loopback" in out
    )


def test_show_ipv4_only_prints_one_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["iptables", "show", "--proxy-uid", "0", "--ipv4-only"]) == 0
    out = capsys.readouterr().out
    assert out.count("*nat") == 1 and "ip6tables" not in out
    assert parse_save(out).chains  # a document iptables-restore reads


def test_user_names_resolve_to_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["iptables", "show", "--proxy-uid", "root", "--proxy-gid", "root"]) == 0
    out = capsys.readouterr().out
    assert "--uid-owner 0 -j RETURN" in out and "--gid-owner 0 -j RETURN" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--proxy-uid: give the sidecar's uid"),
        (["--proxy-uid", "no-such-user-here"], "no user named 'no-such-user-here'"),
        (["--proxy-uid", "1", "--include-cidrs", "300.0.0.0/8"], "--include-cidrs: '300.0.0.0/8'"),
        (["--proxy-uid", "1", "--exclude-inbound-ports", "*"], "--exclude-inbound-ports: '*'"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["iptables", "show", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_strict_mode_is_the_default_and_allows_the_resolv_conf_nameservers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "search x\nnameserver 10.96.0.10\nnameserver 127.0.0.53\nnameserver fd00::a\n"
    )
    argv = ["iptables", "show", "--proxy-uid", "1337", "--resolv-conf", str(resolv)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    spec = CaptureSpec(
        proxy_uids=(1337,), egress="strict", dns_servers=parse_ips("10.96.0.10,fd00::a")
    )
    assert ruleset(spec, 4) in out and ruleset(spec, 6) in out
    assert "non-TCP egress dropped except DNS to 10.96.0.10, DNS to fd00::a" in out
    assert "-A NETSHIELD_EGRESS -d 10.96.0.10/32 -p udp -m udp --dport 53 -j RETURN" in out
    assert "127.0.0.53" not in out  # loopback needs no exception
    # the twin: permissive filters nothing
    assert main([*argv, "--mode", "permissive"]) == 0
    out = capsys.readouterr().out
    assert "*filter" not in out and "NETSHIELD_EGRESS" not in out


def test_allowed_udp_destinations_and_no_dns(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["iptables", "show", "--proxy-uid", "1337", "--allow-dns", ""]
    assert main([*argv, "--allow-udp", "10.0.0.5:123,[fd00::5]:123"]) == 0
    out = capsys.readouterr().out
    assert "-A NETSHIELD_EGRESS -d 10.0.0.5/32 -p udp -m udp --dport 123 -j RETURN" in out
    assert "-A NETSHIELD_EGRESS -d fd00::5/128 -p udp -m udp --dport 123 -j RETURN" in out
    assert "--dport 53" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allow-dns", "10.0.0.300"], "--allow-dns: '10.0.0.300' is not an IP address"),
        (["--allow-udp", "fd00::5:123"], "--allow-udp: 'fd00::5:123': an IPv6 address goes in"),
        (["--allow-udp", "10.0.0.5:0"], "--allow-udp: '10.0.0.5:0': port 0 is not within"),
        (["--allow-dns", "auto", "--resolv-conf", "/nonexistent/resolv"], "cannot read"),
        (["--mode", "permissive", "--allow-udp", "10.0.0.5:123"], "only strict mode"),
    ],
)
def test_bad_egress_options_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["iptables", "show", "--proxy-uid", "1", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) <= 2
