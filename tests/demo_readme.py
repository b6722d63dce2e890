"""The README's demo block: `netshield demo`'s output with what changes from run to run masked.

    python -m tests.demo_readme        # run the demo and write its output into README.md

`block(output)` masks the work directory, ports, connection ids, serials, hash prefixes,
durations and counts; `test_demo.py` compares the README's block with a fresh run's (without
`--dir`, as `./scripts/demo` runs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- demo:begin -->", "<!-- demo:end -->"
WORKDIR = "/tmp/netshield-demo-XXXX"

_MASKS = [
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
    (re.compile(r"\(conn [0-9a-z]+\)"), "(conn ID)"),
    (re.compile(r"serial [0-9a-f]+"), "serial SERIAL"),
    (re.compile(r"\b[0-9a-f]{16}…"), "HASH…"),
    (re.compile(r"\b\d+\.\d+ s\b"), "N.NN s"),
    (re.compile(r"intact: \d+ entries"), "intact: N entries"),
]


def workdir_of(output: str) -> str:
    return output.split("work directory: ", 1)[1].split("\n", 1)[0]


def block(output: str) -> str:
    """The demo's output as the README shows it."""
    text = output.replace(workdir_of(output), WORKDIR)
    for pattern, mask in _MASKS:
        text = pattern.sub(mask, text)
    return f"```\n$ ./scripts/demo\n{text.rstrip()}\n```"


def readme_block(readme: str | None = None) -> str:
    text = README.read_text() if readme is None else readme
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main() -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "netshield", "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if "work directory: " in proc.stdout:
        shutil.rmtree(workdir_of(proc.stdout), ignore_errors=True)  # the records and logs
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        return 1
    new = block(proc.stdout)
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    README.write_text(f"{head}{BEGIN}\n{new}\n{END}{rest.split(END, 1)[1]}")
    print(f"README.md: demo block updated ({new.count(chr(10)) + 1} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
