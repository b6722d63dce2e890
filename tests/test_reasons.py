"""Reason codes are a contract: stable strings, documented in the README, each exercised by a test."""

from __future__ import annotations

import re
from pathlib import Path

from netshield.reasons import REASONS, Reason, markdown_table, reason

ROOT = Path(__file__).resolve().parent.parent


def test_every_reason_has_info_and_codes_are_upper_snake_case() -> None:
    assert set(REASONS) == set(Reason)
    for r, info in REASONS.items():
        assert info.code == r.value
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", info.code)
        assert info.hint.endswith((".", "?")) and "\n" not in info.hint
        assert 200 <= info.http_status < 600


def test_readme_lists_every_reason_code_as_generated() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- reasons:begin -->")[1].split("<!-- reasons:end -->")[0].strip()
    assert block == markdown_table(), "regenerate with: python -m netshield.reasons"


def test_every_reason_code_is_exercised_by_some_test() -> None:
    tests = "\n".join(
        p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_reasons.py"
    )
    missing = [
        r.value
        for r in Reason
        if r is not Reason.OK and f'"{r.value}"' not in tests and f"Reason.{r.name}" not in tests
    ]
    assert not missing, f"reason codes no test asserts: {missing}"


def test_unknown_code_from_a_newer_peer_is_not_an_error() -> None:
    assert reason("NONCE_REUSED") is Reason.NONCE_REUSED
    assert reason("SOMETHING_NEW") is None
