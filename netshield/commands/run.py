"""`netshield run --config FILE -- python app.py ARGS`: run an unmodified Python program with the
in-process shield (no sidecar, no plaintext hop).

Like `coverage run` or `python -m cProfile`, the program runs in this process, in netshield's own
interpreter: the shield starts first (attestation of the code tree and of the command as typed
after `--`), then the script (or `-m module`, or `-c code`) runs as `__main__` with its own
`sys.argv`. The exit status is the program's; its exceptions print their usual traceback.

Guarantees: a command that is not a Python invocation, or that uses an interpreter option this
runner does not reproduce, is a usage error naming it (exit 2); a config problem is one line
(exit 2); nothing of the program runs before the shield's hooks are installed. SIGTERM ends
the program like SIGINT (SystemExit, so `finally` blocks run and the records of live connections
are written) unless the program installs its own handler.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from netshield.errors import UsageError

_PYTHON = re.compile(r"python(\d+(\.\d+)*)?")
_IGNORED = frozenset({"-B", "-s", "-E", "-q"})  # flags without effect on how the program runs


@dataclass(frozen=True)
class Program:
    """What to run: a script path, a module, or code; and its argv."""

    kind: str  # "script", "module" or "code"
    target: str
    argv: tuple[str, ...]
    unbuffered: bool = False

    @property
    def directory(self) -> Path:
        """Its code tree by default: the script's directory, else the working directory."""
        return Path(self.target).resolve().parent if self.kind == "script" else Path.cwd()


def parse_command(command: list[str]) -> Program:
    """Read `python [-u] (script | -m module | -c code) args...`; UsageError otherwise."""
    if not command:
        raise UsageError("netshield run: give the program after --, e.g. `-- python app.py`")
    if not _PYTHON.fullmatch(Path(command[0]).name):
        raise UsageError(
            f"netshield run runs Python programs in its own process; the command must start "
            f"with python (e.g. `-- python app.py`), got {command[0]!r}"
        )
    unbuffered = False
    i = 1
    while i < len(command):
        arg = command[i]
        if arg == "-u":
            unbuffered = True
        elif arg in _IGNORED:
            pass
        elif arg in ("-m", "-c"):
            if i + 1 >= len(command):
                raise UsageError(f"netshield run: {arg} needs an argument")
            kind = "module" if arg == "-m" else "code"
            target = command[i + 1]
            argv = (target if kind == "module" else "-c", *command[i + 2 :])
            return Program(kind, target, argv, unbuffered)
        elif arg.startswith("-"):
            raise UsageError(
                f"netshield run: the interpreter option {arg!r} is not supported here (give "
                "-u, -m MODULE, -c CODE or a script)"
            )
        else:
            return Program("script", arg, tuple(command[i:]), unbuffered)
        i += 1
    raise UsageError("netshield run: no script, -m MODULE or -c CODE after the interpreter")


def run_program(program: Program) -> int:
    """Run `program` as `__main__`; its exit status."""
    if program.unbuffered:
        for stream in (sys.stdout, sys.stderr):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(write_through=True)
    sys.argv = list(program.argv)
    try:
        if program.kind == "script":
            sys.path.insert(0, str(Path(program.target).resolve().parent))
            runpy.run_path(program.target, run_name="__main__")
        elif program.kind == "module":
            sys.path.insert(0, os.getcwd())
            runpy.run_module(program.target, run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, "")
            exec(compile(program.target, "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
    except SystemExit as exit_:
        code = exit_.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException:  # the program's own failure: its traceback, as Python prints it
        traceback.print_exc()
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from netshield.shield import start
    from netshield.shield.config import load_shield_config

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    program = parse_command(command)
    config = load_shield_config(Path(args.config))
    if program.kind == "script" and not Path(program.target).is_file():
        raise UsageError(f"netshield run: no such script: {program.target}")
    shield = start(
        config,
        cmd=tuple(command),
        workload_path=config.workload.path or program.directory,
        startup_timeout=float(args.startup_timeout),
    )
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # exit (and flush) as SIGINT does
        signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(128 + signal.SIGTERM))
    try:
        return run_program(program)
    finally:
        shield.stop()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run a Python program with the in-process shield: its own sockets become mesh mTLS",
        description="Run `-- python app.py ...` in this process with the in-process shield.",
    )
    p.add_argument("--config", required=True, help="the shield config (YAML)")
    p.add_argument(
        "--startup-timeout",
        default="30",
        help="seconds to wait for the first attestation before the program starts (default 30)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- python app.py [args...]")
    p.set_defaults(func=cmd_run)
