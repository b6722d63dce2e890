"""The capture rules as text: port/CIDR parsers, rule generation, and the install/remove scripts
computed from iptables-save output. Pure; the real tools run in test_iptables_netns.py."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.capture.iptables import (
    BUILTIN_NAT,
    CREATED,
    NatTable,
    install_script,
    normalize,
    parse_save,
    remove_script,
    rules,
    ruleset,
)
from netshield.capture.spec import (
    ALL,
    CaptureSpec,
    PortRange,
    format_cidrs,
    format_ports,
    parse_cidrs,
    parse_ports,
)

SPEC = CaptureSpec(proxy_uids=(1337,), proxy_gids=(1337,), inbound_ports=parse_ports("8080"))


# --- parsers -------------------------------------------------------------------------------------


def test_ports_parse_lists_ranges_and_all() -> None:
    assert parse_ports("*") == ALL
    assert parse_ports("") == ()
    assert parse_ports("9000-9010, 8080 8080,7000:7001") == (
        PortRange(7000, 7001),
        PortRange(8080, 8080),
        PortRange(9000, 9010),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "not within 1-65535"),
        ("65536", "not within 1-65535"),
        ("80-70", "runs backwards"),
        ("http", "not a port number"),
        ("１２", "not a port number"),  # full-width digits are not ports
        ("1-2-3", "not a port number"),
    ],
)
def test_bad_ports_say_which_item_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ports(text)


def test_all_is_refused_where_a_list_is_needed() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        parse_ports("*", allow_all=False)
    with pytest.raises(ValueError, match="not allowed"):
        parse_cidrs("*", allow_all=False)


def test_cidrs_parse_both_families_and_refuse_host_bits() -> None:
    assert parse_cidrs("fd00::/8,10.0.0.0/8, 192.0.2.7") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    with pytest.raises(ValueError, match=r"'10\.1\.2\.3/8' is not an address or CIDR"):
        parse_cidrs("10.1.2.3/8")


@given(st.text(max_size=80))
def test_port_parser_returns_or_raises_value_error_only(text: str) -> None:
    try:
        parsed = parse_ports(text)
    except ValueError:
        return
    assert parsed == ALL or all(1 <= r.first <= r.last <= 65535 for r in parsed)


@given(st.text(max_size=80))
def test_cidr_parser_returns_or_raises_value_error_only(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_cidrs(text)


@given(st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 100)), max_size=20))
def test_formatted_ports_parse_back_to_the_same_value(items: list[tuple[int, int]]) -> None:
    ranges = tuple(sorted({PortRange(a, min(a + n, 65535)) for a, n in items}))
    assert parse_ports(format_ports(ranges)) == ranges


@given(st.lists(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), max_size=10))
def test_formatted_cidrs_parse_back_to_the_same_value(ips: list[object]) -> None:
    nets = parse_cidrs(",".join(str(ip) for ip in ips))
    assert parse_cidrs(format_cidrs(nets)) == nets


# --- the spec ------------------------------------------------------------------------------------


def test_a_spec_without_the_sidecar_uid_or_gid_is_refused() -> None:
    problems = CaptureSpec().problems()
    assert any("--proxy-uid" in p and "loop" in p for p in problems)
    assert CaptureSpec(proxy_gids=(1337,)).problems() == []


def test_a_spec_that_would_redirect_a_capture_port_is_refused() -> None:
    spec = CaptureSpec(proxy_uids=(1,), inbound_ports=parse_ports("15000-15010"))
    assert any("15001 is a capture port" in p for p in spec.problems())
    assert any(
        "must differ" in p for p in CaptureSpec(proxy_uids=(1,), inbound_port=15001).problems()
    )


# --- rules ---------------------------------------------------------------------------------------


def _first(lines: list[str], needle: str) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


@pytest.mark.parametrize("family", [4, 6])
def test_sidecar_and_loopback_are_excluded_before_anything_is_redirected(family: int) -> None:
    lines = rules(SPEC, family)  # type: ignore[arg-type]
    redirect = _first(lines, "-A NETSHIELD_OUTPUT -j NETSHIELD_REDIRECT")
    assert _first(lines, "--uid-owner 1337 -j RETURN") < redirect
    assert _first(lines, "--gid-owner 1337 -j RETURN") < redirect
    assert _first(lines, "-o lo -j RETURN") < redirect
    loopback = "127.0.0.0/8" if family == 4 else "::1/128"
    assert _first(lines, f"-d {loopback} -j RETURN") < redirect


def test_without_an_excluded_uid_nothing_would_stop_the_loop() -> None:
    """The negative twin: a spec with no proxy uid has no RETURN for the sidecar at all."""
    lines = rules(CaptureSpec(), 4)
    assert not any("--uid-owner" in line for line in lines)


def test_inbound_rules_redirect_only_the_listed_ports() -> None:
    lines = rules(SPEC, 4)
    assert "-A NETSHIELD_INBOUND -p tcp -m tcp --dport 8080 -j NETSHIELD_IN_REDIRECT" in lines
    assert not any(line.startswith("-A NETSHIELD_INBOUND -p tcp -j") for line in lines)


def test_inbound_all_ports_keeps_the_capture_ports_out_and_none_means_no_inbound_chain() -> None:
    every = rules(CaptureSpec(proxy_uids=(1,), exclude_inbound_ports=parse_ports("22")), 4)
    assert every.index("-A NETSHIELD_INBOUND -p tcp -m tcp --dport 22 -j RETURN") < every.index(
        "-A NETSHIELD_INBOUND -p tcp -j NETSHIELD_IN_REDIRECT"
    )
    assert "-A NETSHIELD_INBOUND -p tcp -m tcp --dport 15006 -j RETURN" in every
    none = rules(CaptureSpec(proxy_uids=(1,), inbound_ports=()), 4)
    assert not any("PREROUTING" in line for line in none)


def test_cidrs_go_to_their_own_family() -> None:
    spec = CaptureSpec(
        proxy_uids=(1,),
        include_cidrs=parse_cidrs("10.0.0.0/8"),
        exclude_cidrs=parse_cidrs("10.9.0.0/16,fd00::/8"),
        outbound_ports=parse_ports("80,443"),
    )
    v4 = rules(spec, 4)
    assert "-A NETSHIELD_OUTPUT -d 10.9.0.0/16 -j RETURN" in v4
    assert "-A NETSHIELD_OUTPUT -d 10.0.0.0/8 -p tcp -m tcp --dport 443 -j NETSHIELD_REDIRECT" in v4
    assert not any("fd00::/8" in line for line in v4)
    # only IPv4 destinations are included, so IPv6 captures nothing outbound
    assert not any("OUTPUT" in line for line in rules(spec, 6))


def test_show_output_is_a_complete_restore_document() -> None:
    text = ruleset(SPEC, 4)
    table = parse_save(text)
    assert set(table.chains) == {
        "NETSHIELD_INBOUND",
        "NETSHIELD_IN_REDIRECT",
        "NETSHIELD_OUTPUT",
        "NETSHIELD_REDIRECT",
    }
    assert [f"-A {c} {r}" for c, r in table.rules] == rules(SPEC, 4)


# --- saved tables and scripts --------------------------------------------------------------------

OTHERS = """\
# Generated by iptables-save v1.8.9
*filter
:INPUT ACCEPT [10:20]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [5:300]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
[3:180] -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
"""


def _apply(table: NatTable, script: str) -> NatTable:
    """A tiny model of `iptables-restore --noflush` for the commands our scripts use."""
    chains = dict(table.chains)
    found = list(table.rules)
    for line in script.splitlines():
        if line.startswith(":"):
            name = line[1:].split()[0]
            chains.setdefault(name, "-")
            found = [(c, r) for c, r in found if c != name]  # declaring flushes
        elif line.startswith("-A "):
            chain, rest = line[3:].split(" ", 1)
            assert chain in chains or chain in BUILTIN_NAT, f"{chain} used before it was declared"
            found.append((chain, rest))
        elif line.startswith("-D "):
            chain, rest = line[3:].split(" ", 1)
            found.remove((chain, rest))
        elif line.startswith("-X "):
            name = line[3:]
            assert not any(name in r.split() for _c, r in found), f"{name} still referenced"
            del chains[name]
    return NatTable(chains, tuple(found), present=True)


def _render(table: NatTable) -> str:
    chains = [f":{n} {p} [0:0]" for n, p in table.chains.items()]
    return "\n".join(["*nat", *chains, *(f"-A {c} {r}" for c, r in table.rules), "COMMIT", ""])


def test_parse_save_reads_the_nat_table_only_and_keeps_other_rules() -> None:
    table = parse_save(OTHERS)
    assert table.present and not table.installed
    assert table.chains["DOCKER"] == "-" and table.chains["OUTPUT"] == "ACCEPT"
    assert (
        "OUTPUT",
        "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
    ) in table.rules
    assert not parse_save("*filter\nCOMMIT\n").present


@pytest.mark.parametrize(
    "text", ["*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j X\n", "*nat\ngarbage here\nCOMMIT\n"]
)
def test_truncated_or_garbled_saves_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_save(text)


def test_install_then_remove_gives_back_the_table_and_touches_nothing_else() -> None:
    before = parse_save(OTHERS)
    installed = _apply(before, install_script(before, SPEC, 4))
    assert installed.installed and CREATED not in installed.chains
    again = _apply(installed, install_script(installed, SPEC, 4))
    assert normalize(_render(again)) == normalize(_render(installed))  # idempotent
    script = remove_script(again)
    assert script is not None
    removed = _apply(again, script)
    assert normalize(_render(removed)) == normalize(_render(before))
    assert remove_script(removed) is None  # nothing left to remove


def test_a_table_that_did_not_exist_is_marked_as_created_by_netshield() -> None:
    missing = parse_save("")
    assert not missing.present
    installed = _apply(missing, install_script(missing, SPEC, 4))
    assert CREATED in installed.chains
    again = _apply(installed, install_script(installed, SPEC, 4))
    assert CREATED in again.chains  # re-install keeps the marker
    script = remove_script(again)
    assert script is not None
    assert normalize(_render(_apply(again, script))) == []


def test_stale_netshield_chains_are_dropped_on_install() -> None:
    old = parse_save(
        "*nat\n:OUTPUT ACCEPT [0:0]\n:NETSHIELD_OLD - [0:0]\n-A OUTPUT -j NETSHIELD_OLD\n"
        "-A NETSHIELD_OLD -j RETURN\nCOMMIT\n"
    )
    new = _apply(old, install_script(old, SPEC, 4))
    assert "NETSHIELD_OLD" not in new.chains
    assert ("OUTPUT", "-j NETSHIELD_OLD") not in new.rules


@given(st.sampled_from([4, 6]), st.lists(st.integers(1, 65535), max_size=5), st.booleans())
def test_install_is_idempotent_for_any_spec(family: int, ports: list[int], present: bool) -> None:
    ranges = tuple(
        sorted(
            {PortRange(p, p) for p in ports} - {PortRange(15001, 15001), PortRange(15006, 15006)}
        )
    )
    spec = CaptureSpec(proxy_uids=(7,), inbound_ports=ranges or ALL)
    start = parse_save(OTHERS if present else "")
    once = _apply(start, install_script(start, spec, family))  # type: ignore[arg-type]
    twice = _apply(once, install_script(once, spec, family))  # type: ignore[arg-type]
    assert normalize(_render(once)) == normalize(_render(twice))
    script = remove_script(twice)
    assert script is not None
    assert normalize(_render(_apply(twice, script))) == normalize(_render(start) if present else "")


@pytest.mark.parametrize("module", ["spec", "iptables", "destinations"])
def test_the_rule_and_destination_logic_does_no_io(module: str) -> None:
    from pathlib import Path

    from tests.test_layering import IO_MODULES, imports_of

    path = Path(__file__).resolve().parent.parent / "netshield" / "capture" / f"{module}.py"
    assert not {m for m in imports_of(path) if m.split(".")[0] in IO_MODULES}
