"""`netshield iptables install|remove|show` against the real iptables tools, with iptables-nft and
iptables-legacy, each in a network namespace of its own (so the host's tables are never touched)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from netshield.capture.iptables import normalize, parse_save
from tests.netns_lab import ENV, have_root_tools

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(have_root_tools() is not None, reason=str(have_root_tools())),
]

BACKENDS = ("iptables-nft", "iptables-legacy")
SPEC = ["--proxy-uid", "1337", "--proxy-gid", "1337", "--inbound-ports", "8080,9000-9010"]


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def run(
        self, *argv: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
            input=input,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{argv} failed: {done.stderr}")
        return done

    def netshield(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "netshield", "iptables", *args, check=check)

    def save(self, backend: str, family: int = 4, table: str | None = "nat") -> str:
        tool = f"{'ip6tables' if family == 6 else 'iptables'}-{backend.split('-')[1]}-save"
        return self.run(tool, *(["-t", table] if table else [])).stdout


@pytest.fixture
def ns() -> Iterator[Netns]:
    import secrets

    name = f"ns4-ipt-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _without_comments_and_counters(text: str) -> list[str]:
    import re

    return [
        re.sub(r"\[\d+:\d+\]", "[0:0]", line)
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _shown_rules(ns: Netns, *args: str) -> dict[int, list[str]]:
    """The -A lines `show` prints, per family."""
    out = ns.netshield("show", *args).stdout
    result: dict[int, list[str]] = {4: [], 6: []}
    family = 4
    for line in out.splitlines():
        if line.startswith("# netshield capture rules, IPv"):
            family = int(line.split("IPv")[1][0])
        elif line.startswith("-A "):
            result[family].append(line)
    return result


@pytest.mark.parametrize("backend", BACKENDS)
def test_install_applies_exactly_the_rules_show_prints(ns: Netns, backend: str) -> None:
    shown = _shown_rules(ns, *SPEC)
    assert not parse_save(ns.save(backend)).installed  # show applied nothing
    out = ns.netshield("install", *SPEC, "--backend", backend).stdout
    assert f"installed capture rules ({backend}, IPv4 and IPv6)" in out
    for family in (4, 6):
        nat = parse_save(ns.save(backend, family))
        egress = parse_save(ns.save(backend, family, table="filter"), "filter")  # strict mode
        installed = [f"-A {c} {r}" for c, r in (*nat.rules, *egress.rules)]
        assert sorted(installed) == sorted(shown[family])
        assert "-A NETSHIELD_EGRESS -j DROP" in installed
    assert "-A NETSHIELD_OUTPUT -m owner --uid-owner 1337 -j RETURN" in shown[4]
    assert "-A NETSHIELD_EGRESS -m owner --uid-owner 1337 -j RETURN" in shown[6]
    assert "-A NETSHIELD_OUTPUT -o lo -j RETURN" in shown[6]


@pytest.mark.parametrize("backend", BACKENDS)
def test_install_twice_is_idempotent_and_a_new_spec_replaces_the_old(
    ns: Netns, backend: str
) -> None:
    ns.netshield("install", *SPEC, "--backend", backend)
    once = {f: normalize(ns.save(backend, f)) for f in (4, 6)}
    out = ns.netshield("install", *SPEC, "--backend", backend).stdout
    assert "replaced capture rules" in out
    assert {f: normalize(ns.save(backend, f)) for f in (4, 6)} == once
    # a different spec: nothing of the old one is left
    ns.netshield("install", "--proxy-uid", "1337", "--inbound-ports", "7070", "--backend", backend)
    rules = normalize(ns.save(backend))
    assert any("--dport 7070" in r for r in rules)
    assert not any("--dport 8080" in r or "--gid-owner" in r for r in rules)
    assert sum(r == "-A OUTPUT -p tcp -j NETSHIELD_OUTPUT" for r in rules) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_leaves_the_tables_as_they_were(ns: Netns, backend: str) -> None:
    restore = f"iptables-{backend.split('-')[1]}-restore"
    # someone else's rules: a user chain in nat, a jump to it, a filter rule
    ns.run(
        restore,
        "--noflush",
        input="*nat\n:MINE - [0:0]\n-A MINE -d 192.0.2.0/24 -j RETURN\n"
        "-A OUTPUT -p tcp -j MINE\n-A PREROUTING -p udp -j MINE\nCOMMIT\n"
        "*filter\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n",
    )
    before = {f: _without_comments_and_counters(ns.save(backend, f, table=None)) for f in (4, 6)}
    ns.netshield("install", *SPEC, "--backend", backend)
    assert parse_save(ns.save(backend)).installed
    out = ns.netshield("remove", "--backend", backend).stdout
    assert "removed capture rules" in out
    after = {f: _without_comments_and_counters(ns.save(backend, f, table=None)) for f in (4, 6)}
    if backend == "iptables-nft":
        assert after == before  # byte for byte, even the IPv6 nat table install created is gone
    else:
        # iptables-legacy instantiates a namespace's nat table on first use and cannot drop it:
        # the IPv6 nat table stays, empty (built-in chains, policy ACCEPT, no rule)
        assert after[4] == before[4]
        assert normalize("\n".join(after[6])) == normalize("\n".join(before[6])) == []
    assert "-A OUTPUT -p tcp -j MINE" in after[4]
    # removing again changes nothing and says so
    out = ns.netshield("remove", "--backend", backend).stdout
    assert "nothing changed" in out
    assert {
        f: _without_comments_and_counters(ns.save(backend, f, table=None)) for f in (4, 6)
    } == after


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_on_fresh_tables_gives_back_empty_tables(ns: Netns, backend: str) -> None:
    before = normalize(ns.save(backend))
    ns.netshield("install", *SPEC, "--backend", backend)
    ns.netshield("remove")  # auto: finds the rules in whichever backend holds them
    assert normalize(ns.save(backend)) == before == []


def test_auto_backend_keeps_to_the_one_already_in_use(ns: Netns) -> None:
    ns.run(
        "iptables-legacy-restore",
        "--noflush",
        input="*filter\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n",
    )
    out = ns.netshield("install", *SPEC).stdout
    assert "(iptables-legacy," in out
    assert parse_save(ns.save("iptables-legacy")).installed
    assert not parse_save(ns.save("iptables-nft")).installed


def test_installed_rules_are_shown_with_show_installed(ns: Netns) -> None:
    out = ns.netshield("show", "--installed", "--backend", "iptables-nft").stdout
    assert "no netshield rules" in out and "-A " not in out
    ns.netshield("install", *SPEC, "--backend", "iptables-nft")
    out = ns.netshield("show", "--installed", "--backend", "iptables-nft").stdout
    assert "IPv4: installed" in out and "-A PREROUTING -p tcp -j NETSHIELD_INBOUND" in out


def test_install_without_the_sidecar_uid_is_refused_and_touches_nothing(ns: Netns) -> None:
    before = ns.save("iptables-nft")
    done = ns.netshield("install", "--backend", "iptables-nft", check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--proxy-uid" in lines[0] and "loop" in lines[0]
    assert "Traceback" not in done.stderr
    assert normalize(ns.save("iptables-nft")) == normalize(before)


def test_install_without_privileges_is_one_clear_line(ns: Netns) -> None:
    done = ns.run(
        "setpriv",
        "--reuid=1337",
        "--regid=1337",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        sys.executable,
        "-m",
        "netshield",
        "iptables",
        "install",
        *SPEC,
        "--backend",
        "iptables-legacy",
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs root" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--inbound-ports", "80-70"], "runs backwards"),
        (["--inbound-ports", "15006"], "capture port"),
        (["--exclude-cidrs", "10.0.0.1/8"], "not an address or CIDR"),
        (["--exclude-cidrs", "*"], "not allowed"),
        (["--outbound-port", "15006"], "must differ"),
    ],
)
def test_bad_options_are_one_line_naming_the_option(
    ns: Netns, args: list[str], message: str
) -> None:
    done = ns.netshield("show", "--proxy-uid", "1337", *args, check=False)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
