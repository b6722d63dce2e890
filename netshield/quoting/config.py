"""The platform service's configuration (`netshield platform serve --config FILE`).

    platform: /var/lib/netshield/platform     # `netshield platform init --out` (holds the key)
    socket: /run/netshield/platform.sock      # where sidecars ask for quotes
    socket_mode: "0666"                       # optional: who may connect (file permissions)
    workloads:                                # what is measured for a caller, in the caller's
      - uid: 10011                            # root file system; first match wins; an entry
        path: /workload                       # without uid matches every caller
        cmd: "python3 app.py"
        signer: ...  product_id: 0  svn: 0    # optional, as in a sidecar's workload section

Guarantees: `parse_quoting_config` returns a `QuotingConfig` or raises `ConfigError` listing every
problem by key path; it never touches the file system. Workload paths must be absolute (they
are looked up inside each caller's root, never relative to anything of the caller's choosing).
`looks_like_quoting_config` tells such a document from a sidecar config or a policy, and
`file_problems` (which reads files) checks what `netshield config check` can check without
starting the service: the platform directory loads and the socket's directory exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from netshield.attestation.platform import Platform, load_platform
from netshield.attestation.workload import PATH, WORKLOAD_FIELDS, WorkloadConfig, build_workload
from netshield.errors import ConfigError, NetshieldError, Problem
from netshield.schema import Field, Int, ListOf, Record, Str, load_yaml, read_config_file, validate

UNIX_PATH_MAX = 107
_UID_MAX = 2**32 - 2


@dataclass(frozen=True)
class WorkloadRule:
    """Callers this rule covers (`uid` None: every caller) and the workload measured for them."""

    uid: int | None
    workload: WorkloadConfig

    def matches(self, uid: int) -> bool:
        return self.uid is None or self.uid == uid


@dataclass(frozen=True)
class QuotingConfig:
    platform: Path
    socket: Path
    socket_mode: int = 0o666
    workloads: tuple[WorkloadRule, ...] = ()

    def rule_for(self, uid: int) -> WorkloadRule | None:
        """The first workload rule covering a caller with `uid`, or None."""
        return next((rule for rule in self.workloads if rule.matches(uid)), None)


def _absolute_problem(value: str) -> str | None:
    if not PurePosixPath(value).is_absolute():
        return "must be an absolute path (it is looked up inside the caller's root file system)"
    if ".." in PurePosixPath(value).parts:
        return "must not contain '..'"
    return None


def _mode_problem(value: str) -> str | None:
    try:
        mode = int(value, 8)
    except ValueError:
        return 'not an octal file mode (e.g. "0660")'
    return None if 0 <= mode <= 0o777 else "must be between 0000 and 0777"


QUOTING_SPEC = Record(
    {
        "platform": Field(PATH, required=True),
        "socket": Field(PATH, required=True),
        "socket_mode": Field(
            Str(expected="an octal mode", validators=(_mode_problem,)), default="0666"
        ),
        "workloads": Field(
            ListOf(
                Record(
                    {
                        **WORKLOAD_FIELDS,
                        "path": Field(
                            Str(expected="an absolute path", validators=(_absolute_problem,)),
                            required=True,
                        ),
                        "uid": Field(Int(min=0, max=_UID_MAX)),
                    },
                    expected="a workload rule (a mapping with path, cmd and optionally uid)",
                ),
                expected="a list of workload rules",
            ),
            required=True,
        ),
    },
    expected="a platform service config (a mapping with platform, socket and workloads)",
)


def parse_quoting_config(
    text: str | bytes, *, source: str = "platform config", base_dir: Path = Path()
) -> QuotingConfig:
    """Parse and check the config; `platform` and `socket` are relative to `base_dir`."""
    doc, problems = validate(QUOTING_SPEC, load_yaml(text, source))
    if isinstance(doc, dict):
        problems += _cross_problems(doc, base_dir)
    if problems:
        raise ConfigError(source, problems)
    return QuotingConfig(
        platform=base_dir / doc["platform"],
        socket=base_dir / doc["socket"],
        socket_mode=int(doc["socket_mode"], 8),
        workloads=tuple(
            WorkloadRule(uid=rule["uid"], workload=build_workload(rule, Path(rule["path"])))
            for rule in doc["workloads"]
        ),
    )


def load_quoting_config(path: Path) -> QuotingConfig:
    """Read and parse the config file at `path`."""
    text = read_config_file(path)
    return parse_quoting_config(text, source=str(path), base_dir=path.parent)


def _cross_problems(doc: dict[str, Any], base_dir: Path) -> list[Problem]:
    problems: list[Problem] = []
    rules = doc["workloads"]
    if isinstance(rules, list):
        if not rules:
            problems.append(
                Problem("workloads", "needs at least one rule (no caller could attest)")
            )
        seen: dict[object, int] = {}
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict):
                continue
            uid = rule.get("uid")
            if uid is not None and None in seen:
                problems.append(
                    Problem(
                        f"workloads[{i}]",
                        f"never matches: workloads[{seen[None]}] (no uid) covers every caller "
                        "first; put rules for single uids before it",
                    )
                )
            elif uid in seen:
                what = f"uid {uid}" if uid is not None else "every caller (no uid)"
                problems.append(
                    Problem(
                        f"workloads[{i}]", f"{what} is already covered by workloads[{seen[uid]}]"
                    )
                )
            else:
                seen[uid] = i
    socket = doc["socket"]
    if isinstance(socket, str):
        size = len(str(base_dir / socket).encode("utf-8", "surrogateescape"))
        if size > UNIX_PATH_MAX:
            problems.append(
                Problem(
                    "socket", f"is {size} bytes, over the {UNIX_PATH_MAX}-byte unix socket limit"
                )
            )
    return problems


def looks_like_quoting_config(doc: object) -> bool:
    """Whether a parsed YAML document is meant as a platform service config: it names no
    `service` (a sidecar's and a shield's do) and has `workloads` or `socket` at the top."""
    return (
        isinstance(doc, dict)
        and "service" not in doc
        and bool({"workloads", "socket"} & {k for k in doc if isinstance(k, str)})
    )


def file_problems(config: QuotingConfig) -> tuple[Platform | None, list[Problem]]:
    """The platform the config names, loaded, and what is missing or broken on disk."""
    problems: list[Problem] = []
    platform = None
    try:
        platform = load_platform(config.platform)
    except NetshieldError as err:
        problems.append(Problem("platform", f"{err} (make one with `netshield platform init`)"))
    if not config.socket.parent.is_dir():
        problems.append(Problem("socket", f"no such directory: {config.socket.parent}"))
    return platform, problems


def describe_rules(config: QuotingConfig) -> str:
    """The workload map in a few words: ``uid 10011: /workload; any other caller: /app``."""
    parts = [
        f"{'uid ' + str(rule.uid) if rule.uid is not None else 'any other caller'}: "
        f"{rule.workload.path} ({' '.join(rule.workload.cmd)})"
        for rule in config.workloads
    ]
    return "; ".join(parts)
