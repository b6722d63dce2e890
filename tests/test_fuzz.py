"""Fuzzing: the coverage-guided targets (fuzz/targets.py, atheris) replay their corpus and then
run for a bounded time each ($NETSHIELD_FUZZ_SECONDS, default 3); and property tests on the CAS
API's JSON bodies (the other parsers have theirs beside their unit tests: quote codec, CSR,
policy, sidecar config, WAF HTTP, records)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS
from netshield.cas.api import parse_revoke
from netshield.cas.service import AttestRequest
from netshield.errors import NetshieldError

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "fuzz" / "corpus"
SECONDS = int(os.environ.get("NETSHIELD_FUZZ_SECONDS", "3"))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_corpus_input_is_handled(name: str) -> None:
    """The regression half: every input kept (crashes found and fixed included) passes."""
    target = TARGETS[name]()
    inputs = sorted(p for p in (CORPUS / name).iterdir() if p.is_file())
    assert len(inputs) >= 3, f"fuzz/corpus/{name} holds no seeds"
    for path in inputs:
        target(path.read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_coverage_guided_fuzzing_finds_no_crash(name: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "fuzz" / "run.py"),
            name,
            "--seconds",
            str(SECONDS),
            "--no-grow",
            "--artifacts",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
    )
    stats = [line for line in run.stderr.splitlines() if line.startswith("stat::")]
    print(f"\n[fuzz] {name}: " + ", ".join(s.split("::", 1)[1] for s in stats[:2]))
    crashes = list(tmp_path.glob("crash-*"))
    assert run.returncode == 0 and not crashes, run.stderr[-4000:]
    assert any("number_of_executed_units" in s and int(s.split()[-1]) > 100 for s in stats)


# Text as JSON can carry it: any code point, lone surrogates often (json.loads makes them).
TEXT = st.text(
    st.characters(codec=None) | st.characters(categories=["Cs"], codec=None), max_size=20
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from(["service", "nonce", "quote", "csr", "kind", "target", "note", "x"])


SHAPED = st.fixed_dictionaries(  # well-shaped bodies, so that every field's checks are reached
    {
        "service": TEXT | st.just("orders"),
        "nonce": TEXT | st.binary(max_size=40).map(bytes.hex),
        "quote": TEXT | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
        "csr": TEXT,
    }
)
LOADED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@settings(max_examples=400, **LOADED)  # type: ignore[arg-type]
@given(SHAPED | st.dictionaries(FIELDS, JSON | TEXT, max_size=6))
def test_an_attest_body_is_a_request_or_a_refusal(body: dict[str, Any]) -> None:
    try:
        request = AttestRequest.from_json(body)
    except NetshieldError as err:
        assert err.reason.value in ("REQUEST_MALFORMED", "QUOTE_MALFORMED", "CSR_MALFORMED")
        return
    request.csr_pem.decode("ascii")  # what it accepted is usable downstream


@settings(max_examples=300, **LOADED)  # type: ignore[arg-type]
@given(
    st.fixed_dictionaries({"kind": st.sampled_from(["platform", "service"]), "target": TEXT})
    | st.dictionaries(FIELDS, JSON, max_size=4)
)
def test_a_revoke_body_is_a_revocation_or_a_refusal(body: dict[str, Any]) -> None:
    try:
        kind, target, note = parse_revoke(body)
    except NetshieldError as err:
        assert err.reason.value == "REQUEST_MALFORMED"
        return
    assert kind in ("instance", "service", "platform") and target
    (target + note).encode("utf-8")


def test_a_lone_surrogate_in_a_body_is_refused_not_a_crash() -> None:
    """What the attest target found: a CSR string holding a lone surrogate (valid JSON)."""
    with pytest.raises(NetshieldError) as info:
        AttestRequest.from_json({"service": "orders", "nonce": "00", "quote": "", "csr": "\ud800"})
    assert info.value.reason.value == "CSR_MALFORMED"
    with pytest.raises(NetshieldError):
        parse_revoke({"kind": "platform", "target": "p\udfff"})
    good = AttestRequest.from_json({"service": "orders", "nonce": "00", "quote": "", "csr": "-"})
    assert good.csr_pem == b"-"  # the twin
