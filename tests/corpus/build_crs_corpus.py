"""Build tests/corpus/crs-3.3.4-regression.jsonl from the OWASP CRS regression tests.

Source: https://github.com/coreruleset/coreruleset, tag v3.3.4, tests/regression/tests/ (FTW
YAML), Apache License 2.0 (see tests/corpus/README.md). Every test stage that expects a rule of
paranoia level 1 to log (``log_contains: id "N"``) becomes one attack request, written as the
raw HTTP bytes FTW sends (method, URI, version, headers, the body; FTW's autocompletion adds
Content-Length and, for a body without one, the form Content-Type). Usage:

    python tests/corpus/build_crs_corpus.py CRS_CHECKOUT RULES_DIR > tests/corpus/crs-3.3.4-regression.jsonl
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

_ID = re.compile(r'id "(\d+)"')


def paranoia_levels(rules_dir: Path) -> dict[str, int]:
    """Rule id -> paranoia level, from the rules' own tags (no tag: level 1)."""
    levels: dict[str, int] = {}
    for conf in sorted(rules_dir.glob("*.conf")):
        text = conf.read_text(errors="replace")
        for block in re.split(r"\n(?=SecRule|SecAction)", text):
            found = re.search(r"id:(\d+)", block)
            if not found:
                continue
            tag = re.search(r"paranoia-level/(\d)", block)
            levels[found.group(1)] = int(tag.group(1)) if tag else 1
    return levels


def raw_request(stage: dict) -> bytes:
    if "encoded_request" in stage:
        import base64

        return base64.b64decode(stage["encoded_request"])
    if "raw_request" in stage:
        return str(stage["raw_request"]).encode("latin-1", errors="replace")
    method = str(stage.get("method", "GET"))
    uri = str(stage.get("uri", "/"))
    version = str(stage.get("version", "HTTP/1.1"))
    headers = dict(stage.get("headers") or {})
    data = stage.get("data")
    if isinstance(data, list):
        data = "\r\n".join(str(d) for d in data)
    body = b"" if data is None else str(data).encode("latin-1", errors="replace")
    # FTW's header autocompletion: a body gets a Content-Length and, without a Content-Type,
    # the form content type (CRS tests put their payloads in form fields that way).
    if body and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if body and not any(k.lower() == "content-length" for k in headers):
        headers["Content-Length"] = str(len(body))
    head = f"{method} {uri} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1", errors="replace") + b"\r\n" + body


def main() -> None:
    checkout, rules_dir = Path(sys.argv[1]), Path(sys.argv[2])
    levels = paranoia_levels(rules_dir)
    for path in sorted((checkout / "tests/regression/tests").glob("*/*.yaml")):
        doc = yaml.safe_load(path.read_bytes())
        for test in doc.get("tests", []):
            for n, item in enumerate(test.get("stages", [])):
                stage = item["stage"]
                expect = stage["output"].get("log_contains")
                found = _ID.search(str(expect or ""))
                if not found or levels.get(found.group(1), 9) != 1:
                    continue
                entry = {
                    "id": f"{test['test_title']}" + (f"#{n}" if n else ""),
                    "family": path.parent.name,
                    "rule": found.group(1),
                    "request": raw_request(stage["input"]).decode("latin-1"),
                }
                print(json.dumps(entry, ensure_ascii=True))


if __name__ == "__main__":
    main()
