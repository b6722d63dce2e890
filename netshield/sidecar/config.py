"""The sidecar's configuration file: YAML checked once into frozen dataclasses.

The document's shape is `SIDECAR_SPEC` (a `netshield.schema` tree); `parse_sidecar_config` adds
the checks that span keys and builds a `SidecarConfig`. Paths are resolved against the config
file's directory.

Guarantees: `parse_sidecar_config` returns a `SidecarConfig` or raises `ConfigError` listing every
problem by key path (unknown keys with a did-you-mean, bad values, conflicting listeners); it
never raises anything else and never touches the file system. The safe defaults are enforced
here, once: plaintext (outbound listeners, the inbound upstream) only on loopback, the admin
listener on loopback unless `admin.unsafe_public: true`. `load_sidecar_config` reads a file and
also reports files and directories that do not exist.
"""

from __future__ import annotations

import grp
import math
import pwd
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from netshield.attestation.workload import (
    PATH,
    WORKLOAD_SPEC,
    WorkloadConfig,
    build_workload,
)
from netshield.errors import ConfigError, Problem
from netshield.identity import name_problem
from netshield.netaddr import HostPort
from netshield.policy import POLICY_SPEC
from netshield.schema import (
    INVALID,
    Bool,
    Duration,
    Field,
    Int,
    ListOf,
    Record,
    Spec,
    Str,
    describe,
    format_duration,
    host_port_problem,
    load_yaml,
    read_config_file,
    validate,
)
from netshield.sidecar.wafconfig import (
    WAF_SPEC,
    IngressConfig,
    WafConfig,
    build_ingress,
    build_waf,
    ingress_spec,
)

TlsMinVersion = Literal["1.2", "1.3"]
TransparentMode = Literal["strict", "permissive"]
ConfigKind = Literal["policy", "sidecar"]

DEFAULT_ADMIN_LISTEN = HostPort("127.0.0.1", 15000)
UNIX_PATH_MAX = 107
"""Longest unix socket path Linux accepts (sun_path is 108 bytes including the NUL)."""
_U32_MAX = 2**32 - 1


# --- the configuration's types -------------------------------------------------------------------


@dataclass(frozen=True)
class CasConfig:
    urls: tuple[str, ...]  # one CAS, or the replicas of one CAS, tried in order
    ca: Path  # the mesh CA certificate (PEM): bootstrap trust for the CAS's TLS
    witness_file: Path | None = None  # remembers the CAS's highest audit head / policy version

    @property
    def url(self) -> str:
        """The first (preferred) replica."""
        return self.urls[0]


@dataclass(frozen=True)
class PlatformConfig:
    """Where the sidecar's quotes come from: exactly one of the two is set.

    `socket`: the host's platform service (`netshield platform serve`), which measures the
    workload itself and alone holds the platform key. `in_process`: a platform directory whose
    key the sidecar loads and whose quotes it signs over its own measurement of `workload` --
    chosen explicitly, for tests and demos, never as a fallback. `tsm`: the kernel's
    configfs-tsm report directory of a confidential VM (SEV-SNP or TDX): the hardware measures
    and signs, the sidecar only chooses the report data.
    """

    socket: Path | None = None
    in_process: Path | None = None
    tsm: Path | None = None


@dataclass(frozen=True)
class InboundConfig:
    listen: HostPort  # mTLS from other sidecars
    upstream: HostPort  # the local service, plaintext: always loopback
    tls_min_version: TlsMinVersion = "1.3"


@dataclass(frozen=True)
class OutboundConfig:
    """One local listener for one destination service: TCP on loopback or a unix socket."""

    service: str
    listen: HostPort | None = None
    unix: Path | None = None
    allowed_uids: frozenset[int] = frozenset()  # empty: no uid check
    address: HostPort | None = None  # overrides the registry's address for `service`
    unix_owner: int | None = None  # uid the socket file is chowned to (None: the sidecar's)
    unix_group: int | None = None  # gid likewise
    unix_mode: int = 0o660  # the socket file's permission bits
    tunnel: bool = True  # carry connections as streams of a tunnel (when `tunnels.enabled`)

    @property
    def listener(self) -> str:
        """How records and logs name this listener: ``127.0.0.1:15101`` or ``unix:/run/x.sock``."""
        return str(self.listen) if self.listen is not None else f"unix:{self.unix}"


@dataclass(frozen=True)
class TransparentConfig:
    """Transparent capture (with `netshield iptables install`): the service dials its peers'
    own addresses; netfilter redirects outbound TCP to `outbound_port` (bound on 127.0.0.1 and
    ::1) and inbound TCP for `service_ports` to `inbound_port` (bound on 0.0.0.0 and ::)."""

    outbound_port: int = 15001
    inbound_port: int = 15006
    mode: TransparentMode = "strict"  # destinations outside the mesh: refuse, or pass through
    service_ports: tuple[int, ...] = ()  # inbound: relayed to 127.0.0.1:<original port>; () = none


@dataclass(frozen=True)
class AdminConfig:
    listen: HostPort = DEFAULT_ADMIN_LISTEN
    unsafe_public: bool = False


@dataclass(frozen=True)
class RecordsConfig:
    file: Path | None = None
    stdout: bool = False
    max_bytes: int = 100 * 1024 * 1024  # rotate `file` at this size; 0: never (use logrotate)
    keep: int = 10  # rotated files kept (file.1 ... file.<keep>); older ones are deleted
    # denials of one source and reason within this interval share one record (0s: never)
    aggregate_denials: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class Limits:
    max_connections: int = 1024  # authenticated connections (and outbound ones)
    max_handshakes: int = 256  # inbound connections still in their TLS handshake
    max_handshakes_per_source: int = 64  # ... of them from one host
    handshake_timeout: timedelta = timedelta(seconds=10)
    handshake_timeout_min: timedelta = timedelta(seconds=1)  # the deadline at a full budget
    connect_timeout: timedelta = timedelta(seconds=5)
    idle_timeout: timedelta = timedelta(seconds=300)
    drain_timeout: timedelta = timedelta(seconds=15)


@dataclass(frozen=True)
class RenewalConfig:
    fraction: float = 0.5  # renew after this fraction of the certificate's lifetime
    jitter: float = 0.1  # ± this fraction, so a fleet does not renew in lockstep


@dataclass(frozen=True)
class MeshTlsConfig:
    """Mesh TLS between sidecars. With `resumption` on, an outbound sidecar keeps one TLS 1.3
    session ticket per destination identity and resumes with it (`resumed` in the record); an
    inbound sidecar issues one ticket per handshake. Off: full handshakes, no tickets."""

    resumption: bool = True


@dataclass(frozen=True)
class TunnelsConfig:
    """HTTP/2 CONNECT tunnels between sidecars: with `enabled`, the inbound listener accepts
    them (ALPN) and outbound connections travel as streams of a few long-lived mTLS
    connections per destination sidecar (unless an outbound listener says `tunnel: false`)."""

    enabled: bool = True
    max_streams: int = 100  # concurrent streams per tunnel (both directions announce it)
    max_per_peer: int = 4  # tunnels to one destination sidecar at a time
    stream_window: int = 1 << 20  # bytes in flight per stream (HTTP/2 flow control)
    idle_timeout: timedelta = timedelta(seconds=60)  # a tunnel without streams closes after it
    max_lifetime: timedelta = timedelta(hours=1)  # then it drains: new streams go to a new one


@dataclass(frozen=True)
class SidecarConfig:
    service: str
    cas: CasConfig
    platform: PlatformConfig
    workload: WorkloadConfig | None  # set exactly when platform.in_process is
    inbound: InboundConfig | None = None
    outbound: tuple[OutboundConfig, ...] = ()
    transparent: TransparentConfig | None = None
    admin: AdminConfig = field(default_factory=AdminConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    limits: Limits = field(default_factory=Limits)
    renewal: RenewalConfig = field(default_factory=RenewalConfig)
    tls: MeshTlsConfig = field(default_factory=MeshTlsConfig)
    waf: WafConfig = field(default_factory=WafConfig)
    ingress: tuple[IngressConfig, ...] = ()
    tunnels: TunnelsConfig = field(default_factory=TunnelsConfig)


# --- specs this document needs beyond netshield.schema -------------------------------------------

_LOOPBACK_WORDS = "127.0.0.1, ::1 or localhost"


@dataclass(frozen=True)
class _Address(Spec):
    """``host:port`` -> HostPort; `bind` allows port 0 (the kernel picks), `plaintext` names
    what must stay on loopback ("listeners", "upstreams")."""

    expected: str = "an address (host:port)"
    bind: bool = False
    plaintext: str = ""

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if not isinstance(value, str):
            return self._wrong_type(value, path, problems)
        host, _, port = value.rpartition(":")
        problem = host_port_problem(f"{host}:1" if self.bind and port == "0" else value)
        if problem is None:
            try:
                address = HostPort.parse(value)
            except ValueError as err:
                problem = str(err)
        if problem is not None:
            problems.append(Problem(path, problem))
            return INVALID
        if self.plaintext and not address.is_loopback:
            problems.append(
                Problem(
                    path,
                    f"plaintext {self.plaintext} must be on loopback ({_LOOPBACK_WORDS}), "
                    f"got {address}",
                )
            )
            return INVALID
        return address


@dataclass(frozen=True)
class _Number(Spec):
    """A finite int or float in [low, high]; `open_low`/`open_high` exclude that bound."""

    expected: str = "a number"
    low: float = 0.0
    high: float = 1.0
    open_low: bool = False
    open_high: bool = False

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self._wrong_type(value, path, problems)
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        too_low = number <= self.low if self.open_low else number < self.low
        too_high = number >= self.high if self.open_high else number > self.high
        if math.isnan(number) or too_low or too_high:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            bounds = f"{left}{self.low:g}, {self.high:g}{right}"
            problems.append(Problem(path, f"must be in {bounds}, got {describe(value)}"))
            return INVALID
        return number


@dataclass(frozen=True)
class _TlsVersion(Spec):
    """A TLS version, "1.2" or "1.3"; an unquoted YAML 1.3 (a float) counts as "1.3"."""

    expected: str = '"1.3" or "1.2"'

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if isinstance(value, float) and value in (1.2, 1.3):
            value = str(value)
        if value not in ("1.2", "1.3"):
            problems.append(Problem(path, f"expected {self.expected}, got {describe(value)}"))
            return INVALID
        return value


@dataclass(frozen=True)
class _Account(Spec):
    """A uid or gid: a number, or a user/group name that exists on this host."""

    kind: str = "user"

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"a {self.kind} name or number"

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U32_MAX:
            return value
        if isinstance(value, str) and value:
            lookup = pwd.getpwnam if self.kind == "user" else grp.getgrnam
            try:
                return int(lookup(value)[2])
            except KeyError:
                problems.append(Problem(path, f"no {self.kind} named {value!r} on this host"))
                return INVALID
        return self._wrong_type(value, path, problems)


@dataclass(frozen=True)
class _Mode(Spec):
    """Permission bits: an octal string ("0660") or a YAML octal number (0660); at most 0777."""

    expected: str = 'permission bits in octal, e.g. "0660"'

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        mode: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            mode = value
        elif isinstance(value, str) and value.isascii() and value.isdigit():
            try:
                mode = int(value, 8)
            except ValueError:
                mode = None
        if mode is None or not 0 <= mode <= 0o777:
            problems.append(Problem(path, f"expected {self.expected}, got {describe(value)}"))
            return INVALID
        return mode


@dataclass(frozen=True)
class _Optional(Spec):
    """A section that may be absent: absent or null gives None instead of the section's defaults."""

    inner: Spec

    @property
    def expected(self) -> str:  # type: ignore[override]
        return self.inner.expected

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        return self.inner.check(value, path, problems)


@dataclass(frozen=True)
class _OneOrMore(Spec):
    """One value, or a non-empty list of them (a CAS URL, or the URLs of its replicas)."""

    item: Spec
    expected: str = "a value or a list of them"

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if isinstance(value, list):
            many = ListOf(self.item, expected=self.expected, non_empty=True)
            return many.check(value, path, problems)
        return [self.item.check(value, path, problems)]


def _https_url_problem(value: str) -> str | None:
    example = "e.g. https://cas.internal:8443"
    if any(c.isspace() or not c.isprintable() for c in value):
        return f"not a URL: contains spaces or control characters ({example})"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as err:
        return f"not a URL ({err}; {example})"
    if parts.scheme != "https":
        return f"must be an https:// URL: the CAS is only reached over TLS ({example})"
    if not parts.hostname:
        return f"has no host ({example})"
    return None


_PATH = PATH
_CAS_URLS = _OneOrMore(
    Str(expected="an https URL", validators=(_https_url_problem,)),
    expected="an https URL, or a list of the URLs of the CAS's replicas",
)
_NAME = Str(expected="a service name", validators=(name_problem,))
_U32 = Int(min=0, max=_U32_MAX)
_PORT = Int(expected="a port (1-65535)", min=1, max=65535)
_SECOND = timedelta(seconds=1)

_OUTBOUND = Record(
    {
        "service": Field(_NAME, required=True),
        "listen": Field(
            _Address(expected="a loopback address (host:port)", bind=True, plaintext="listeners")
        ),
        "unix": Field(_PATH),
        "allowed_uids": Field(ListOf(Int(min=0, max=_U32_MAX - 1), expected="a list of uids")),
        "address": Field(_Address()),
        "unix_owner": Field(_Account("user")),
        "unix_group": Field(_Account("group")),
        "unix_mode": Field(_Mode(), default=0o660),
        "tunnel": Field(Bool(), default=True),
    },
    expected="an outbound listener (a mapping with service and listen or unix)",
)

_PLATFORM_EXPECTED = (
    "where quotes come from: {socket: /run/netshield/platform.sock} (the host's `netshield "
    "platform serve`), {tsm: /sys/kernel/config/tsm/report} (SEV-SNP or TDX hardware) or "
    "{in_process: DIR} (the sidecar holds the platform key: tests and demos)"
)

SIDECAR_SPEC = Record(
    {
        "service": Field(_NAME, required=True),
        "cas": Field(
            Record(
                {
                    "url": Field(_CAS_URLS, required=True),
                    "ca": Field(_PATH, required=True),
                    "witness_file": Field(_PATH),
                },
                expected="the CAS to attest at (a mapping with url and ca)",
            ),
            required=True,
        ),
        "platform": Field(
            Record(
                {"socket": Field(_PATH), "in_process": Field(_PATH), "tsm": Field(_PATH)},
                expected=_PLATFORM_EXPECTED,
            ),
            required=True,
        ),
        "workload": Field(_Optional(WORKLOAD_SPEC)),
        "inbound": Field(
            _Optional(
                Record(
                    {
                        "listen": Field(_Address(bind=True), required=True),
                        "upstream": Field(
                            _Address(
                                expected="a loopback address (host:port)", plaintext="upstreams"
                            ),
                            required=True,
                        ),
                        "tls_min_version": Field(_TlsVersion(), default="1.3"),
                    },
                    expected="the inbound listener (a mapping with listen and upstream)",
                ),
            )
        ),
        "outbound": Field(ListOf(_OUTBOUND, expected="a list of outbound listeners")),
        "waf": Field(_Optional(WAF_SPEC)),
        "ingress": Field(
            ListOf(ingress_spec(_Address(bind=True)), expected="a list of ingress routes")
        ),
        "transparent": Field(
            _Optional(
                Record(
                    {
                        "outbound_port": Field(_PORT, default=TransparentConfig.outbound_port),
                        "inbound_port": Field(_PORT, default=TransparentConfig.inbound_port),
                        "mode": Field(
                            Str(
                                expected='"strict" or "permissive"',
                                choices=("strict", "permissive"),
                            ),
                            default="strict",
                        ),
                        "service_ports": Field(ListOf(_PORT, expected="a list of ports")),
                    },
                    expected="transparent capture (a mapping with outbound_port, inbound_port, "
                    "mode, service_ports)",
                )
            )
        ),
        "admin": Field(
            Record(
                {
                    "listen": Field(_Address(bind=True), default=DEFAULT_ADMIN_LISTEN),
                    "unsafe_public": Field(Bool(), default=False),
                }
            )
        ),
        "records": Field(
            Record(
                {
                    "file": Field(_PATH),
                    "stdout": Field(Bool(), default=False),
                    "max_bytes": Field(Int(min=0, max=2**50), default=RecordsConfig.max_bytes),
                    "keep": Field(Int(min=1, max=10_000), default=RecordsConfig.keep),
                    "aggregate_denials": Field(
                        Duration(max=timedelta(hours=1)), default=RecordsConfig.aggregate_denials
                    ),
                }
            ),
        ),
        "limits": Field(
            Record(
                {
                    "max_connections": Field(Int(min=1, max=1_000_000), default=1024),
                    "max_handshakes": Field(
                        Int(min=1, max=1_000_000), default=Limits.max_handshakes
                    ),
                    "max_handshakes_per_source": Field(
                        Int(min=1, max=1_000_000), default=Limits.max_handshakes_per_source
                    ),
                    "handshake_timeout": Field(
                        Duration(min=_SECOND, max=timedelta(minutes=5)),
                        default=Limits.handshake_timeout,
                    ),
                    "handshake_timeout_min": Field(
                        Duration(min=_SECOND, max=timedelta(minutes=5)),
                        default=Limits.handshake_timeout_min,
                    ),
                    "connect_timeout": Field(
                        Duration(min=_SECOND, max=timedelta(minutes=5)),
                        default=Limits.connect_timeout,
                    ),
                    "idle_timeout": Field(
                        Duration(min=_SECOND, max=timedelta(hours=24)),
                        default=Limits.idle_timeout,
                    ),
                    "drain_timeout": Field(
                        Duration(max=timedelta(minutes=10)), default=Limits.drain_timeout
                    ),
                }
            )
        ),
        "tls": Field(
            Record(
                {"resumption": Field(Bool(), default=MeshTlsConfig.resumption)},
                expected="mesh TLS settings (a mapping with resumption)",
            )
        ),
        "tunnels": Field(
            Record(
                {
                    "enabled": Field(Bool(), default=TunnelsConfig.enabled),
                    "max_streams": Field(Int(min=1, max=10_000), default=TunnelsConfig.max_streams),
                    "max_per_peer": Field(Int(min=1, max=1000), default=TunnelsConfig.max_per_peer),
                    "stream_window": Field(
                        Int(min=65_535, max=(1 << 31) - 1), default=TunnelsConfig.stream_window
                    ),
                    "idle_timeout": Field(
                        Duration(min=_SECOND, max=timedelta(hours=24)),
                        default=TunnelsConfig.idle_timeout,
                    ),
                    "max_lifetime": Field(
                        Duration(min=_SECOND, max=timedelta(days=7)),
                        default=TunnelsConfig.max_lifetime,
                    ),
                },
                expected="tunnel settings (a mapping with enabled, max_streams, max_per_peer, "
                "stream_window, idle_timeout, max_lifetime)",
            )
        ),
        "renewal": Field(
            Record(
                {
                    "fraction": Field(_Number(open_low=True, open_high=True), default=0.5),
                    "jitter": Field(_Number(high=0.5), default=0.1),
                }
            )
        ),
    },
    expected="a sidecar config (a mapping with service, cas, platform, workload, ...)",
)
"""The sidecar config's shape; `netshield config check` and the docs can walk it."""


# --- parsing -------------------------------------------------------------------------------------


def parse_sidecar_config(
    text: str | bytes, *, source: str = "sidecar config", base_dir: Path = Path()
) -> SidecarConfig:
    """Parse and check a sidecar config; ConfigError(source, every problem) if it is wrong.

    Relative paths are taken relative to `base_dir` (the config file's directory).
    """
    doc, problems = validate(SIDECAR_SPEC, load_yaml(text, source))
    if isinstance(doc, dict):
        problems += _cross_problems(doc, base_dir)
    if problems:
        raise ConfigError(source, problems)
    return _build(doc, base_dir)


def load_sidecar_config(path: Path) -> SidecarConfig:
    """Read, parse and check the config at `path`, including that the files it names exist."""
    text = read_config_file(path)
    config = parse_sidecar_config(text, source=str(path), base_dir=path.parent)
    problems = file_problems(config)
    if problems:
        raise ConfigError(str(path), problems)
    return config


def file_problems(config: SidecarConfig) -> list[Problem]:
    """Files and directories the config names that are missing (checked at load, not parse)."""
    problems: list[Problem] = []
    if not config.cas.ca.is_file():
        problems.append(Problem("cas.ca", f"no such file: {config.cas.ca}"))
    in_process = config.platform.in_process
    if in_process is not None and not in_process.is_dir():
        problems.append(
            Problem(
                "platform.in_process",
                f"no such directory: {in_process} (make one with `netshield platform init`)",
            )
        )
    tsm = config.platform.tsm
    if tsm is not None and not tsm.is_dir():
        problems.append(
            Problem(
                "platform.tsm",
                f"no such directory: {tsm} (configfs-tsm needs a confidential VM with Linux 6.7 or "
                "later and configfs mounted at /sys/kernel/config)",
            )
        )
    if config.workload is not None and not config.workload.path.exists():
        problems.append(
            Problem("workload.path", f"no such file or directory: {config.workload.path}")
        )
    if config.records.file is not None and not config.records.file.parent.is_dir():
        problems.append(Problem("records.file", f"no such directory: {config.records.file.parent}"))
    for i, out in enumerate(config.outbound):
        if out.unix is not None and not out.unix.parent.is_dir():
            problems.append(Problem(f"outbound[{i}].unix", f"no such directory: {out.unix.parent}"))
    return problems


def detect_kind(doc: object) -> ConfigKind:
    """Which kind of netshield config a parsed YAML document is meant to be.

    The kind whose top-level keys it shares more of; on a tie, "sidecar" if it names a
    `service`. Anything that is not a mapping is checked as a policy.
    """
    if not isinstance(doc, Mapping):
        return "policy"
    keys = {key for key in doc if isinstance(key, str)}
    sidecar = len(keys & SIDECAR_SPEC.fields.keys())
    policy = len(keys & POLICY_SPEC.fields.keys())
    if sidecar != policy:
        return "sidecar" if sidecar > policy else "policy"
    return "sidecar" if "service" in keys else "policy"


def _resolve(base_dir: Path, raw: str) -> Path:
    """`raw` as given if absolute, else relative to `base_dir` (`~` is not expanded)."""
    return base_dir / raw


def _records(value: object) -> list[tuple[int, dict[str, Any]]]:
    """The entries of a (partially valid) list of records that are themselves valid records."""
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _platform_problems(doc: dict[str, Any]) -> list[Problem]:
    """One source of quotes; a workload to measure exactly when the sidecar measures it itself."""
    platform, workload = doc["platform"], doc["workload"]
    if not isinstance(platform, dict):
        return []
    socket, in_process, tsm = platform["socket"], platform["in_process"], platform["tsm"]
    chosen = [name for name in ("socket", "tsm", "in_process") if platform[name] is not None]
    if not chosen:
        return [Problem("platform", f"needs socket, tsm or in_process: {_PLATFORM_EXPECTED}")]
    if len(chosen) > 1:
        return [
            Problem(
                f"platform.{chosen[1]}",
                f"give one of socket, tsm, in_process, not {' and '.join(chosen)}",
            )
        ]
    if in_process is not None and workload is None:
        return [
            Problem(
                "workload",
                "is required with platform.in_process (the sidecar measures the workload itself)",
            )
        ]
    if socket is not None and workload is not None:
        return [
            Problem(
                "workload",
                "the platform service measures the workload itself (its own workload map); "
                "remove this section, or use platform.in_process",
            )
        ]
    if tsm is not None and workload is not None:
        return [
            Problem(
                "workload",
                "the hardware measures the confidential VM itself (platform.tsm); remove this "
                "section and put the VM's reference values in the policy",
            )
        ]
    return []


def _cross_problems(doc: dict[str, Any], base_dir: Path) -> list[Problem]:
    """Checks that span keys: one listener kind per outbound, admin exposure, address clashes."""
    problems: list[Problem] = _platform_problems(doc)
    binds: list[tuple[str, HostPort]] = []
    unix_paths: dict[Path, str] = {}
    for i, out in _records(doc["outbound"]):
        path = f"outbound[{i}]"
        listen, unix, uids = out["listen"], out["unix"], out["allowed_uids"]
        if listen is None and unix is None:
            problems.append(Problem(path, "needs listen (a loopback host:port) or unix (a path)"))
        elif listen is not None and unix is not None:
            problems.append(Problem(f"{path}.unix", "give listen or unix, not both"))
        if unix is None:
            for key in ("unix_owner", "unix_group"):
                if out[key] is not None:
                    problems.append(Problem(f"{path}.{key}", "applies to unix listeners only"))
        mode = out["unix_mode"]
        if isinstance(mode, int) and mode & 0o002 and not (isinstance(uids, list) and uids):
            problems.append(
                Problem(
                    f"{path}.unix_mode",
                    f"{mode:04o} lets every local user connect and call {out['service']} as this "
                    "service: drop the o+w bit, or list who may call in allowed_uids",
                )
            )
        if isinstance(listen, HostPort):
            binds.append((f"{path}.listen", listen))
        if isinstance(unix, str):
            resolved = _resolve(base_dir, unix)
            size = len(str(resolved).encode("utf-8", "surrogateescape"))
            if size > UNIX_PATH_MAX:
                problems.append(
                    Problem(
                        f"{path}.unix",
                        f"socket path is {size} bytes, over the {UNIX_PATH_MAX}-byte limit "
                        "of unix sockets (use a shorter path)",
                    )
                )
            if resolved in unix_paths:
                problems.append(
                    Problem(f"{path}.unix", f"{resolved} is also {unix_paths[resolved]}")
                )
            else:
                unix_paths[resolved] = f"{path}.unix"
    for i, entry in _records(doc["ingress"]):
        if isinstance(entry["listen"], HostPort):
            binds.append((f"ingress[{i}].listen", entry["listen"]))
    inbound = doc["inbound"]
    if isinstance(inbound, dict):
        for key in ("listen", "upstream"):
            if isinstance(inbound[key], HostPort):
                binds.append((f"inbound.{key}", inbound[key]))
    problems += _transparent_problems(doc["transparent"], binds)
    limits = doc["limits"]
    if isinstance(limits, dict):
        low, high = limits["handshake_timeout_min"], limits["handshake_timeout"]
        if isinstance(low, timedelta) and isinstance(high, timedelta) and low > high:
            problems.append(
                Problem(
                    "limits.handshake_timeout_min",
                    f"must not exceed limits.handshake_timeout ({format_duration(high)}), got "
                    f"{format_duration(low)}",
                )
            )
    admin = doc["admin"]
    if isinstance(admin, dict) and isinstance(admin["listen"], HostPort):
        binds.append(("admin.listen", admin["listen"]))
        if not admin["listen"].is_loopback and admin["unsafe_public"] is not True:
            problems.append(
                Problem(
                    "admin.listen",
                    f"the admin listener is loopback-only ({_LOOPBACK_WORDS}), got "
                    f"{admin['listen']}; set admin.unsafe_public: true to expose /metrics, "
                    "/connections and /identity beyond this host",
                )
            )
    problems += _clashes(binds)
    return problems


def _transparent_problems(section: object, binds: list[tuple[str, HostPort]]) -> list[Problem]:
    """Capture ports that differ and are not service ports; records their binds for clashes."""
    if not isinstance(section, dict):
        return []
    problems: list[Problem] = []
    out, inn = section["outbound_port"], section["inbound_port"]
    if isinstance(out, int):
        binds.append(("transparent.outbound_port", HostPort("127.0.0.1", out)))
    if isinstance(inn, int):
        binds.append(("transparent.inbound_port", HostPort("0.0.0.0", inn)))  # noqa: S104
    ports = section["service_ports"]
    if isinstance(ports, list):
        seen: set[int] = set()
        for i, port in enumerate(ports):
            if port in (out, inn):
                problems.append(
                    Problem(
                        f"transparent.service_ports[{i}]",
                        f"{port} is a capture port; the service must listen on another port",
                    )
                )
            elif isinstance(port, int) and port in seen:
                problems.append(
                    Problem(f"transparent.service_ports[{i}]", f"{port} is listed twice")
                )
            if isinstance(port, int):
                seen.add(port)
    return problems


_WILDCARDS = frozenset({"0.0.0.0", "::"})  # noqa: S104 -- compared, never bound


def _clashes(binds: list[tuple[str, HostPort]]) -> list[Problem]:
    """Addresses that cannot both be bound: same port and same host, or either a wildcard."""
    problems: list[Problem] = []
    for j, (path, addr) in enumerate(binds):
        for other_path, other in binds[:j]:
            same_host = addr.host == other.host or {addr.host, other.host} & _WILDCARDS
            if addr.port != 0 and addr.port == other.port and same_host:
                problems.append(Problem(path, f"{addr} clashes with {other_path} ({other})"))
                break
    return problems


def build_shared(doc: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The sections a sidecar config shares with the in-process shield's (cas, platform, admin,
    records, limits, renewal), as `SidecarConfig` keyword arguments, from a checked document."""
    cas, platform = doc["cas"], doc["platform"]
    admin, records, limits, renewal = doc["admin"], doc["records"], doc["limits"], doc["renewal"]
    return {
        "cas": CasConfig(
            urls=tuple(cas["url"]),
            ca=_resolve(base_dir, cas["ca"]),
            witness_file=None
            if cas["witness_file"] is None
            else _resolve(base_dir, cas["witness_file"]),
        ),
        "platform": PlatformConfig(
            socket=None if platform["socket"] is None else _resolve(base_dir, platform["socket"]),
            in_process=None
            if platform["in_process"] is None
            else _resolve(base_dir, platform["in_process"]),
            tsm=None if platform["tsm"] is None else _resolve(base_dir, platform["tsm"]),
        ),
        "admin": AdminConfig(listen=admin["listen"], unsafe_public=admin["unsafe_public"]),
        "records": RecordsConfig(
            file=None if records["file"] is None else _resolve(base_dir, records["file"]),
            stdout=records["stdout"],
            max_bytes=records["max_bytes"],
            keep=records["keep"],
            aggregate_denials=records["aggregate_denials"],
        ),
        "limits": Limits(**limits),
        "renewal": RenewalConfig(fraction=renewal["fraction"], jitter=renewal["jitter"]),
    }


def _build(doc: dict[str, Any], base_dir: Path) -> SidecarConfig:
    workload, inbound = doc["workload"], doc["inbound"]
    waf = build_waf(doc["waf"], base_dir)
    return SidecarConfig(
        service=doc["service"],
        workload=None
        if workload is None
        else build_workload(workload, _resolve(base_dir, workload["path"])),
        inbound=None
        if inbound is None
        else InboundConfig(
            listen=inbound["listen"],
            upstream=inbound["upstream"],
            tls_min_version=inbound["tls_min_version"],
        ),
        outbound=tuple(
            OutboundConfig(
                service=out["service"],
                listen=out["listen"],
                unix=None if out["unix"] is None else _resolve(base_dir, out["unix"]),
                allowed_uids=frozenset(out["allowed_uids"]),
                address=out["address"],
                unix_owner=out["unix_owner"],
                unix_group=out["unix_group"],
                unix_mode=out["unix_mode"],
                tunnel=out["tunnel"],
            )
            for out in doc["outbound"]
        ),
        transparent=None
        if doc["transparent"] is None
        else TransparentConfig(
            outbound_port=doc["transparent"]["outbound_port"],
            inbound_port=doc["transparent"]["inbound_port"],
            mode=doc["transparent"]["mode"],
            service_ports=tuple(doc["transparent"]["service_ports"]),
        ),
        tls=MeshTlsConfig(resumption=doc["tls"]["resumption"]),
        **build_shared(doc, base_dir),
        waf=waf,
        ingress=build_ingress(doc["ingress"], waf, base_dir),
        tunnels=TunnelsConfig(**doc["tunnels"]),
    )


__all__ = [
    "DEFAULT_ADMIN_LISTEN",
    "SIDECAR_SPEC",
    "AdminConfig",
    "CasConfig",
    "ConfigKind",
    "InboundConfig",
    "Limits",
    "MeshTlsConfig",
    "OutboundConfig",
    "PlatformConfig",
    "RecordsConfig",
    "RenewalConfig",
    "SidecarConfig",
    "TlsMinVersion",
    "TransparentConfig",
    "TransparentMode",
    "TunnelsConfig",
    "WorkloadConfig",
    "build_shared",
    "detect_kind",
    "file_problems",
    "load_sidecar_config",
    "parse_sidecar_config",
]
