"""What a platform measures and quotes about a workload: its code path, entry command and the
facts a real enclave's signature structure would carry (signer, product id, security version).

Responsibility: one typed value (`WorkloadConfig`), its YAML shape (`WORKLOAD_SPEC`) and the
builder from a checked document, shared by the sidecar config (a platform held in process) and
the platform service's workload map (`netshield platform serve`), so both read a workload the
same way. Pure: nothing here touches the file system.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netshield.schema import Field, Int, Record, Str, sha256_hex_problem

UINT32_MAX = 2**32 - 1
ZERO_DIGEST = "0" * 64


@dataclass(frozen=True)
class WorkloadConfig:
    path: Path
    cmd: tuple[str, ...] = ()
    signer: str = ZERO_DIGEST
    product_id: int = 0
    svn: int = 0


def path_problem(value: str) -> str | None:
    """Why `value` is not a usable path, or None."""
    if not value.strip():
        return "must not be empty"
    if "\x00" in value:
        return "must not contain a NUL character"
    return None


def cmd_problem(value: str) -> str | None:
    """Why `value` is not a command line a shell would split, or None."""
    try:
        shlex.split(value)
    except ValueError as err:
        return f"not a command line ({str(err).lower()}); quote it as a shell would"
    return None


PATH = Str(expected="a path", validators=(path_problem,))
U32 = Int(min=0, max=UINT32_MAX)

WORKLOAD_FIELDS: dict[str, Field] = {
    "path": Field(PATH, required=True),
    "cmd": Field(Str(expected="a command line", validators=(cmd_problem,)), default=""),
    "signer": Field(
        Str(expected="a sha256 digest", validators=(sha256_hex_problem,)), default=ZERO_DIGEST
    ),
    "product_id": Field(U32, default=0),
    "svn": Field(U32, default=0),
}

WORKLOAD_SPEC = Record(
    WORKLOAD_FIELDS, expected="the workload to measure (a mapping with path and cmd)"
)


def build_workload(doc: dict[str, Any], path: Path) -> WorkloadConfig:
    """The `WorkloadConfig` of a document checked against `WORKLOAD_FIELDS`; `path` is the
    resolved ``path`` value (the caller decides what it is relative to)."""
    return WorkloadConfig(
        path=path,
        cmd=tuple(shlex.split(doc["cmd"])),
        signer=doc["signer"],
        product_id=doc["product_id"],
        svn=doc["svn"],
    )
