"""`netshield iptables show` needs no privileges and applies nothing: it prints the restore input."""

from __future__ import annotations

import pytest

from netshield.capture.iptables import parse_save, ruleset
from netshield.capture.spec import CaptureSpec, parse_cidrs, parse_ports
from netshield.cli import main


def test_show_prints_both_families_of_rules_for_the_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "iptables", "show", "--proxy-uid", "1337", "--inbound-ports", "8080",
            "--exclude-cidrs", "10.9.0.0/16", "--outbound-port", "16001",
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
