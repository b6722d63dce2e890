"""A small declarative validator for YAML configuration documents (policy, sidecar config).

A document's shape is written as a tree of specs: scalars (`Str`, `Int`, `Bool`, `Duration`),
`ListOf` an item spec, `Record` (fixed keys, each a `Field` with required/default) and `MapOf`
(free keys, e.g. service names, each checked by a key validator). `validate` walks a parsed
document along the spec and returns plain normalised values (dicts, lists, str, int, bool,
`timedelta`; a `Record` has every field, defaults filled in) with every problem found, each
located by its key path:
``services.orders.measurements[0]: not a sha256 digest (expected 64 hex characters)``.

Guarantees: `load_yaml` raises only `ConfigError` (a syntax error is one line with its line and
column), and so does `read_config_file` (a file that cannot be read); `validate` never raises
for any value `load_yaml` can produce; unknown keys are problems with a did-you-mean; explicit
``null`` for an optional key means "use the default".
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from netshield.errors import ConfigError, Problem

Validator = Callable[[Any], str | None]
"""Returns why a (type-checked) value is not acceptable, or None if it is."""

INVALID: Any = type("Invalid", (), {"__repr__": lambda self: "INVALID"})()
"""Stands in for a value that failed validation (only seen when there are problems)."""


# --- paths and value descriptions ---------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def key_path(parent: str, key: object) -> str:
    """`parent.key`, or `parent[<repr>]` for keys that would make the path ambiguous."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{_short_repr(key)}]"


def _short_repr(value: object, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(value: object) -> str:
    """A short, never-failing description of a parsed YAML value, for messages."""
    match value:
        case None:
            return "nothing (null)"
        case bool():
            return f"a boolean ({str(value).lower()})"
        case int():
            return "an integer" if value.bit_length() > 64 else f"an integer ({value})"
        case float():
            return f"a number ({value})"
        case str():
            return f"a string ({_short_repr(value)})"
        case datetime() | date():
            return "a date"
        case Mapping():
            return "a mapping"
        case list():
            return "a list"
    return type(value).__name__


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`did you mean 'x'?` for the closest choice, else `expected one of: a, b` (or '')."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    if choices:
        return "expected one of: " + ", ".join(sorted(choices))
    return ""


# --- specs --------------------------------------------------------------------------------------


def _fail(problems: list[Problem], path: str, message: str) -> Any:
    problems.append(Problem(path, message))
    return INVALID


class Spec:
    """One node of a document's shape. `expected` names it in messages ("a list of names")."""

    expected: str = "a value"

    def empty(self) -> object:
        """The raw value an absent optional key stands for: {} or [] for containers, else None."""
        return None

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        """The normalised value; after appending problems, INVALID or a partial container.

        Containers of the right type always come back as containers (with INVALID where an
        entry failed), so cross-field checks can still look at the valid parts.
        """
        raise NotImplementedError

    def _wrong_type(self, value: object, path: str, problems: list[Problem]) -> Any:
        hint = ""
        if isinstance(self, Str) and isinstance(value, int | float | date):
            hint = " (put it in quotes)"
        return _fail(problems, path, f"expected {self.expected}, got {describe(value)}{hint}")


@dataclass(frozen=True)
class Str(Spec):
    expected: str = "a string"
    choices: tuple[str, ...] = ()
    validators: tuple[Validator, ...] = ()

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if not isinstance(value, str):
            return self._wrong_type(value, path, problems)
        if self.choices and value not in self.choices:
            hint = did_you_mean(value, self.choices)
            return _fail(problems, path, f"{_short_repr(value)} is not allowed ({hint})")
        for validator in self.validators:
            problem = validator(value)
            if problem:
                return _fail(problems, path, problem)
        return value


@dataclass(frozen=True)
class Int(Spec):
    expected: str = "an integer"
    min: int | None = None
    max: int | None = None

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            return self._wrong_type(value, path, problems)
        if self.min is not None and value < self.min:
            return _fail(problems, path, f"must be at least {self.min}, got {describe(value)}")
        if self.max is not None and value > self.max:
            return _fail(problems, path, f"must be at most {self.max}, got {describe(value)}")
        return value


@dataclass(frozen=True)
class Bool(Spec):
    expected: str = "true or false"

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if not isinstance(value, bool):
            return self._wrong_type(value, path, problems)
        return value


_DURATION = re.compile(r"(?:(\d{1,6})h)?(?:(\d{1,8})m)?(?:(\d{1,9})s)?")
_MAX_DURATION_SECONDS = 10 * 365 * 86400


def parse_duration(value: object) -> timedelta:
    """'30s', '10m', '1h', '2h30m' or an int number of seconds; ValueError with a reason."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())) and any(m.groups()):
        h, mi, s = (int(g) if g else 0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    else:
        raise ValueError("not a duration (e.g. 30s, 10m, 1h, 2h30m, or a number of seconds)")
    if seconds < 0 or seconds > _MAX_DURATION_SECONDS:
        raise ValueError("duration out of range (0 to 10 years)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The inverse of `parse_duration` for whole seconds: 9000s -> '2h30m'."""
    total = int(value.total_seconds())
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return text or "0s"


@dataclass(frozen=True)
class Duration(Spec):
    expected: str = "a duration (e.g. 30s, 10m, 1h, 2h30m, or a number of seconds)"
    min: timedelta | None = None
    max: timedelta | None = None

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        try:
            result = parse_duration(value)
        except ValueError as err:
            return _fail(problems, path, f"{err}, got {describe(value)}")
        got = format_duration(result)
        if self.min is not None and result < self.min:
            return _fail(problems, path, f"must be at least {format_duration(self.min)}, got {got}")
        if self.max is not None and result > self.max:
            return _fail(problems, path, f"must be at most {format_duration(self.max)}, got {got}")
        return result


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    expected: str = "a list"
    non_empty: bool = False

    def empty(self) -> object:
        return []

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if not isinstance(value, list):
            return self._wrong_type(value, path, problems)
        if self.non_empty and not value:
            return _fail(problems, path, f"must not be empty (expected {self.expected})")
        return [self.item.check(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]


@dataclass(frozen=True)
class Field:
    """A key of a `Record`: its spec, whether it must be present, and its default.

    An absent (or null) optional key takes `default`; for a container spec without a default it
    is the empty container, checked like any other value (so a sub-record gets its defaults).
    """

    spec: Spec
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class Record(Spec):
    """A mapping with a fixed set of keys; the result has every field (defaults filled in)."""

    fields: Mapping[str, Field]
    expected: str = "a mapping"

    def empty(self) -> object:
        return {}

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if not isinstance(value, Mapping):
            return self._wrong_type(value, path, problems)
        result: dict[str, Any] = {}
        for key in value:
            if key not in self.fields:
                hint = did_you_mean(key, list(self.fields)) if isinstance(key, str) else ""
                message = f"unknown key ({hint})" if hint else "unknown key"
                _fail(problems, key_path(path, key), message)
        for name, spec_field in self.fields.items():
            raw, sub = value.get(name), key_path(path, name)
            if raw is not None:
                result[name] = spec_field.spec.check(raw, sub, problems)
            elif spec_field.required:
                state = "has no value" if name in value else "missing"
                message = f"{state} (required: {spec_field.spec.expected})"
                result[name] = _fail(problems, sub, message)
            elif spec_field.default is None and spec_field.spec.empty() is not None:
                result[name] = spec_field.spec.check(spec_field.spec.empty(), sub, problems)
            else:
                result[name] = spec_field.default
        return result


@dataclass(frozen=True)
class MapOf(Spec):
    """A mapping from names (checked by `key`) to values of one spec, e.g. services by name."""

    value: Spec
    key: Validator | None = None
    expected: str = "a mapping of names"

    def empty(self) -> object:
        return {}

    def check(self, value: object, path: str, problems: list[Problem]) -> Any:
        if not isinstance(value, Mapping):
            return self._wrong_type(value, path, problems)
        result: dict[str, Any] = {}
        for key, item in value.items():
            sub = key_path(path, key)
            if not isinstance(key, str):
                _fail(problems, sub, f"a name must be a string, got {describe(key)}")
                continue
            key_problem = self.key(key) if self.key else None
            if key_problem:
                _fail(problems, sub, key_problem)
            result[key] = self.value.check(item, sub, problems)
        return result


def validate(spec: Spec, value: object) -> tuple[Any, list[Problem]]:
    """Check a parsed document: (normalised value, []) or (partial value with INVALID, problems)."""
    problems: list[Problem] = []
    result = spec.check(value, "", problems)
    return result, problems


# --- reusable validators ------------------------------------------------------------------------

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def sha256_hex_problem(value: str) -> str | None:
    """Why `value` is not a lower-case 64-hex SHA-256 digest, or None."""
    if _SHA256_HEX.fullmatch(value):
        return None
    if len(value) == 64 and _SHA256_HEX.fullmatch(value.lower()):
        return "not a sha256 digest (hex must be lower-case)"
    return "not a sha256 digest (expected 64 hex characters)"


def host_port_problem(value: str) -> str | None:
    """Why `value` is not "host:port" ("[v6addr]:port" for IPv6, port 1-65535), or None."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or len(port) > 5:
        return "not an address (expected host:port, e.g. 10.0.0.7:8443 or orders.internal:8443)"
    if not 1 <= int(port) <= 65535:
        return f"port {port} is out of range (1-65535)"
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            return "not an IPv6 address in brackets (e.g. [::1]:8443)"
        return None if host.endswith("]") else "not an IPv6 address in brackets (e.g. [::1]:8443)"
    if ":" in host:
        return "an IPv6 address must be in brackets (e.g. [::1]:8443)"
    if not re.fullmatch(r"[A-Za-z0-9._\-]{1,253}", host):
        return "not a host name or IP address (letters, digits, '.', '-', '_')"
    return None


def non_empty_problem(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


# --- YAML ---------------------------------------------------------------------------------------


class _SafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last)
    and remembers where the value it is constructing starts, to place constructor failures."""

    last_mark: yaml.Mark | None = None

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        self.last_mark = node.start_mark
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_short_repr(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _at(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""


def read_config_file(path: Path) -> bytes:
    """The bytes of the config file at `path`; ConfigError naming it if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(
            str(path), [Problem("", f"cannot read ({err.strerror or err})")]
        ) from None


def load_yaml(text: str | bytes, source: str) -> object:
    """Parse one YAML document (safe loader, no duplicate keys); failures: one-line ConfigError."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(source, [Problem("", f"not UTF-8 text (byte {err.start})")]) from None
    loader: _SafeLoader | None = None
    try:
        loader = _SafeLoader(text)  # the reader checks for unacceptable characters here
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        what = (err.problem or "not valid YAML") + (f" ({err.context})" if err.context else "")
        problem = _at(err.problem_mark or err.context_mark) + _one_line(what)
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        char = f"#x{err.character:04x}" if isinstance(err.character, int) else "character"
        problem = f"line {line}, column {column}: unacceptable {char} ({err.reason})"
    except RecursionError:
        problem = "not valid YAML: nested too deeply"
    except Exception as err:  # PyYAML's constructors raise assorted errors on odd values/tags
        detail = _one_line(str(err)) or type(err).__name__
        mark = loader.last_mark if loader else None
        problem = f"{_at(mark)}a value could not be read ({detail})"
    finally:
        if loader:
            loader.dispose()
    raise ConfigError(source, [Problem("", problem)])


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


__all__ = [
    "INVALID",
    "Bool",
    "Duration",
    "Field",
    "Int",
    "ListOf",
    "MapOf",
    "Record",
    "Spec",
    "Str",
    "Validator",
    "describe",
    "did_you_mean",
    "format_duration",
    "host_port_problem",
    "key_path",
    "load_yaml",
    "non_empty_problem",
    "parse_duration",
    "sha256_hex_problem",
    "validate",
]
