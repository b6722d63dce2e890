"""The in-process shield: an unmodified Python program on the mesh with no plaintext hop.

    netshield run --config shield.yaml -- python app.py

or, inside the program, before it opens sockets:

    import netshield.shield
    netshield.shield.start("shield.yaml")

The process attests itself at the CAS (the measurement of the code tree and the command it
runs), holds its key in its own memory, and its sockets become mesh mutual TLS: connections to
mesh services are mTLS expecting the service's identity, listening sockets accept only mesh mTLS
from allowed callers, everything else is refused or passed through as the config says. See
`engine` (composition), `sockets` (the hooks on `socket.socket`), `flows`, `rules` and `config`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from netshield.shield.config import ShieldConfig, load_shield_config
from netshield.shield.engine import STARTUP_TIMEOUT, Engine, ShieldStartError
from netshield.shield.refusals import ShieldRefusal


def program_command() -> tuple[str, ...]:
    """The command this process runs, as it was typed (`sys.orig_argv`)."""
    return tuple(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])


def script_directory() -> Path:
    """The directory of the program's script (the working directory for `-c` / `-m`)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return Path(path).resolve().parent if path else Path.cwd()


def start(
    config: str | os.PathLike[str] | ShieldConfig,
    *,
    cmd: tuple[str, ...] | None = None,
    workload_path: Path | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> Engine:
    """Start the shield in this process (once) and return it; `stop()` it, or let the process
    exit (an atexit hook flushes the records). `cmd` defaults to this process's command line,
    `workload_path` to `workload.path` of the config, else the script's directory."""
    loaded = config if isinstance(config, ShieldConfig) else load_shield_config(Path(config))
    path = workload_path or loaded.workload.path or script_directory()
    engine = Engine(loaded, workload_path=path, cmd=cmd or program_command())
    engine.start(startup_timeout=startup_timeout)
    import atexit

    atexit.register(engine.stop)
    return engine


__all__ = [
    "Engine",
    "ShieldConfig",
    "ShieldRefusal",
    "ShieldStartError",
    "load_shield_config",
    "program_command",
    "script_directory",
    "start",
]
