"""Run one fuzz target under atheris (coverage-guided, libFuzzer) for a bounded time.

    python fuzz/run.py quote --seconds 60            # grows fuzz/corpus/quote with new inputs
    python fuzz/run.py attest --seconds 5 --no-grow   # CI: read the corpus, keep the repo clean

A crash (an exception other than the refusals the target expects, or a failed oracle) stops the
run with a non-zero exit, and libFuzzer writes the input to `crash-<sha1>` in --artifacts; add
it to the corpus once fixed, so that every later run replays it first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CORPUS = REPO / "fuzz" / "corpus"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--no-grow", action="store_true", help="fuzz a copy of the corpus")
    parser.add_argument("--artifacts", default=str(REPO / "fuzz" / "artifacts"))
    args = parser.parse_args()

    import atheris

    with atheris.instrument_imports(include=["netshield"]):
        from fuzz.targets import TARGETS

        if args.target not in TARGETS:
            parser.error(f"unknown target {args.target!r}; one of {sorted(TARGETS)}")
        target = TARGETS[args.target]()
    corpus = CORPUS / args.target
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{args.target}-")) if args.no_grow else corpus
    if args.no_grow:
        for path in corpus.iterdir():
            shutil.copy(path, work / path.name)
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        str(work),
        f"-max_total_time={args.seconds}",
        f"-artifact_prefix={artifacts}/",
        "-max_len=65536",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]
    atheris.Setup(argv, target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
