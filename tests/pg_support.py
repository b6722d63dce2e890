"""A throwaway PostgreSQL cluster for the tests and the CAS benchmark: Debian's postgresql.

`PgCluster.start` runs ``initdb`` into a new temporary directory and ``pg_ctl start`` on a free
loopback port, with password (SCRAM) authentication over TCP only, so the tests exercise the
same password path as a deployment. PostgreSQL refuses to run as root: as root, the cluster
runs as Debian's unprivileged ``postgres`` user. `find_bindir` says why there is no cluster
(the tests skip with that reason, which fails the run under CI=true).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "netshield"


def find_bindir() -> tuple[Path | None, str]:
    """The directory holding initdb and pg_ctl, or None and why not."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate), ""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent, ""
    return (
        None,
        "PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql",
    )


def _run_as() -> tuple[list[str], str | None]:
    """The command prefix that drops root to the postgres user, and that user's name."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root, but there is no unprivileged postgres user") from None
    return ["runuser", "-u", "postgres", "--"], "postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """A running cluster: connect as `SUPERUSER` with `password` to 127.0.0.1:`port`."""

    bindir: Path
    root: Path
    port: int
    password: str
    settings: Sequence[str] = ()
    _prefix: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    def url(self, database: str = "postgres") -> str:
        """A URL without the password (the password is in `password_file`)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        """Environment for libpq client tools (psql, pg_dump) against this cluster."""
        return {
            **os.environ,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": SUPERUSER,
            "PGPASSWORD": self.password,
        }

    @classmethod
    def start(cls, *, settings: Sequence[str] = (), durable: bool = False) -> PgCluster:
        """initdb + pg_ctl start; ``durable=False`` turns fsync off (tests, not benchmarks)."""
        bindir, why = find_bindir()
        if bindir is None:
            raise RuntimeError(why)
        prefix, user = _run_as()
        root = Path(tempfile.mkdtemp(prefix="netshield-pg-"))
        password = secrets.token_urlsafe(24)
        (root / "password").write_text(password + "\n")
        os.chmod(root / "password", 0o600)
        if user is not None:
            shutil.chown(root, user)
            os.chmod(root, 0o700)
            pwfile = root / "pw-initdb"
            pwfile.write_text(password + "\n")
            shutil.chown(pwfile, user)
        else:
            pwfile = root / "password"
        subprocess.run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        if user is not None:
            pwfile.unlink()
        tuning = [] if durable else ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        cluster = None
        for _ in range(5):
            port = free_port()
            options = [
                f"-p {port}",
                "-c listen_addresses=127.0.0.1",
                "-c unix_socket_directories=''",
                "-c max_connections=200",
                *(f"-c {s}" for s in (*tuning, *settings)),
            ]
            proc = subprocess.run(
                [
                    *prefix,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(root / "data"),
                    "-l",
                    str(root / "data" / "server.log"),
                    "-o",
                    " ".join(options),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                capture_output=True,
                text=True,
                timeout=90,
            )
            if proc.returncode == 0:
                cluster = cls(bindir, root, port, password, settings, prefix)
                break
        if cluster is None:
            log = (root / "data" / "server.log").read_text(errors="replace")[-2000:]
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"pg_ctl start failed: {log}")
        return cluster

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [
                    *self._prefix,
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql (the real client); its output, or CalledProcessError."""
        proc = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(),
            check=True,
        )
        return proc.stdout

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{secrets.token_hex(6)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def tool(self, name: str, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """Run a client tool of this PostgreSQL (pg_dump, pg_restore) against the cluster."""
        return subprocess.run(
            [str(self.bindir / name), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env(),
            check=True,
            **kw,  # type: ignore[arg-type]
        )


@contextlib.contextmanager
def running_cluster(**kwargs: object) -> Iterator[PgCluster]:
    cluster = PgCluster.start(**kwargs)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.stop()
