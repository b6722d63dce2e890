"""WAF quality, measured through a live route and printed in the test output: detection of real
attacks (the OWASP CRS 3.3.4 regression tests at paranoia level 1, and netshield's corpus of
attack families with the usual encodings) and false positives on realistic benign traffic, for
ModSecurity + CRS and for the compact rule set. Targets (issue 10): CRS detects as much as
nginx + ModSecurity with the same rules (99.4 % of the CRS tests at PL1), and blocks at most
2 % of the benign corpus. A request counts as detected when the route did not forward it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from netshield.waf.engine import Engine, load_engine
from netshield.waf.settings import WafSettings
from tests.corpus.netshield_corpus import attacks, benign
from tests.waf_support import running_route

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parent / "corpus"
SETTINGS = WafSettings(engine="crs", request_timeout=timedelta(seconds=1))
CONCURRENCY = 32


def crs_corpus() -> list[tuple[str, str, bytes]]:
    """(family, the rule the test expects to log, the raw request) per CRS regression test."""
    lines = (CORPUS / "crs-3.3.4-regression.jsonl").read_text().splitlines()
    return [
        (e["family"].split("-", 2)[-1].lower(), e["rule"], e["request"].encode("latin-1"))
        for e in map(json.loads, lines)
    ]


async def _send(port: int, data: bytes, ports: list[int] | None = None) -> bool:
    """True when the route forwarded the request: the answer is not the route's own refusal
    (the service behind may still refuse what it cannot parse; that was forwarded)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    if ports is not None:
        ports.append(writer.get_extra_info("sockname")[1])
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(15):
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.1 408 "):
                return False  # the request never completed: nothing was forwarded
            if b"content-length:" not in head.lower():
                return True
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        return b"by the netshield WAF" not in body
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        return False
    finally:
        writer.close()


async def forwarded(
    settings: WafSettings, engine: Engine, corpus: list[tuple[str, bytes]]
) -> tuple[list[bool], list[set[str]]]:
    """Per request: was it forwarded, and which rules matched (from the route's records)."""
    async with running_route(settings, engine) as route:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(data: bytes) -> tuple[bool, int]:
            ports: list[int] = []
            async with gate:
                passed = await _send(route.port, data, ports)
            return passed, ports[0] if ports else -1

        results = await asyncio.gather(*(one(data) for _, data in corpus))
        await route.wait_records(len([p for _, p in results if p > 0]), timeout=60)
        rules: dict[int, set[str]] = {}
        for record in route.records:
            port = int(record.src.rsplit(":", 1)[1])
            rules[port] = set(record.waf.rule_ids) if record.waf else set()
        return [p for p, _ in results], [rules.get(port, set()) for _, port in results]


def table(
    title: str, corpus: list[tuple[str, bytes]], results: dict[str, list[bool]], *, attack: bool
) -> dict[str, float]:
    """Print counts per family and engine; return the overall rate per engine."""
    what = "detected" if attack else "false positives"
    families = sorted({family for family, _ in corpus})
    print(f"\n{title} ({len(corpus)} requests) - {what} per family")
    print(f"  {'family':36}" + "".join(f"{name:>18}" for name in results))
    rates = {}
    for family in [*families, "TOTAL"]:
        row = f"  {family:36}"
        for name, passed in results.items():
            picked = [p for (f, _), p in zip(corpus, passed, strict=True) if family in (f, "TOTAL")]
            hits = sum(1 for p in picked if not p)
            row += f"{hits:>8}/{len(picked):<5} {100 * hits / max(1, len(picked)):5.1f}%"[
                -18:
            ].rjust(18)
            if family == "TOTAL":
                rates[name] = hits / max(1, len(picked))
        print(row)
    return rates


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, Engine]]:
    loaded = {
        "crs": load_engine(SETTINGS),
        "compact": load_engine(replace(SETTINGS, engine="compact")),
    }
    yield loaded
    for engine in loaded.values():
        engine.close()


async def _measure(
    engines: dict[str, Engine], corpus: list[tuple[str, bytes]]
) -> tuple[dict[str, list[bool]], dict[str, list[set[str]]]]:
    passed, rules = {}, {}
    for name, engine in engines.items():
        settings = replace(SETTINGS, engine=engine.name)  # type: ignore[arg-type]
        passed[f"{name} PL1"], rules[name] = await forwarded(settings, engine, corpus)
    return passed, rules


async def test_crs_detects_the_crs_regression_attacks_at_paranoia_level_1(
    engines: dict[str, Engine],
) -> None:
    entries = crs_corpus()
    corpus = [(family, request) for family, _rule, request in entries]
    passed, rules = await _measure(engines, corpus)
    # FTW's own criterion: the rule the test is about logged (or the route refused the request).
    logged = [
        rule in fired or not ok
        for (_f, rule, _r), fired, ok in zip(entries, rules["crs"], passed["crs PL1"], strict=True)
    ]
    passed["crs: rule logged"] = [not hit for hit in logged]
    rates = table("OWASP CRS 3.3.4 regression tests, PL1 attacks", corpus, passed, attack=True)
    # Blocked: warning-level rules (e.g. 920350, a numeric Host) log without reaching the
    # anomaly threshold, as in any CRS deployment.
    assert rates["crs PL1"] >= 0.985
    assert rates["crs: rule logged"] >= 0.994  # nginx + ModSecurity on the same tests: 99.4 %
    assert rates["compact PL1"] < rates["crs PL1"]  # the fallback is weaker: CRS is the engine


async def test_crs_detects_netshields_attack_families_with_their_encodings(
    engines: dict[str, Engine],
) -> None:
    corpus = attacks()
    rates = table(
        "netshield attack corpus", corpus, (await _measure(engines, corpus))[0], attack=True
    )
    assert rates["crs PL1"] >= 0.95


async def test_false_positives_on_realistic_benign_traffic_stay_under_2_percent(
    engines: dict[str, Engine],
) -> None:
    corpus = benign()
    rates = table(
        "netshield benign corpus", corpus, (await _measure(engines, corpus))[0], attack=False
    )
    assert rates["crs PL1"] <= 0.02
    counts = Counter(family for family, _ in corpus)
    assert min(counts.values()) >= 10 and len(corpus) >= 300
