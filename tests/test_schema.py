"""The declarative config validator: problems with key paths, YAML errors in one line."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.errors import ConfigError, Problem
from netshield.identity import name_problem
from netshield.schema import (
    INVALID,
    Bool,
    Duration,
    Field,
    Int,
    ListOf,
    MapOf,
    Record,
    Str,
    format_duration,
    host_port_problem,
    key_path,
    load_yaml,
    parse_duration,
    sha256_hex_problem,
    validate,
)

DIGEST = "ab" * 32

SPEC = Record(
    {
        "name": Field(Str(), required=True),
        "port": Field(Int(min=1, max=65535), default=80),
        "debug": Field(Bool(), default=False),
        "mode": Field(Str(choices=("enforce", "audit")), default="enforce"),
        "timeout": Field(Duration(min=timedelta(seconds=1)), default=timedelta(seconds=5)),
        "limits": Field(Record({"max_conns": Field(Int(min=0), default=100)})),
        "routes": Field(
            MapOf(
                Record(
                    {
                        "digests": Field(
                            ListOf(Str(validators=(sha256_hex_problem,)), non_empty=True),
                            required=True,
                        ),
                        "allowed_callers": Field(ListOf(Str())),
                    }
                ),
                key=name_problem,
            )
        ),
    }
)


def messages(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]


# --- records, lists, maps ---------------------------------------------------------------------


def test_validate_fills_defaults_for_a_valid_document() -> None:
    value, problems = validate(SPEC, {"name": "x", "routes": {"orders": {"digests": [DIGEST]}}})
    assert problems == []
    assert value == {
        "name": "x",
        "port": 80,
        "debug": False,
        "mode": "enforce",
        "timeout": timedelta(seconds=5),
        "limits": {"max_conns": 100},
        "routes": {"orders": {"digests": [DIGEST], "allowed_callers": []}},
    }


def test_validate_reports_every_problem_with_its_key_path() -> None:
    doc = {
        "port": 0,
        "debug": "yes",
        "limits": {"max_conns": -1},
        "routes": {"orders": {"digests": ["abc", DIGEST, 7]}},
    }
    _, problems = validate(SPEC, doc)
    assert messages(problems) == [
        "name: missing (required: a string)",
        "port: must be at least 1, got an integer (0)",
        "debug: expected true or false, got a string ('yes')",
        "limits.max_conns: must be at least 0, got an integer (-1)",
        "routes.orders.digests[0]: not a sha256 digest (expected 64 hex characters)",
        "routes.orders.digests[2]: expected a string, got an integer (7) (put it in quotes)",
    ]


def test_unknown_key_is_a_problem_with_did_you_mean() -> None:
    doc = {"name": "x", "routes": {"a": {"digests": [DIGEST], "allowed_caller": []}}}
    _, problems = validate(SPEC, doc)
    assert messages(problems) == [
        "routes.a.allowed_caller: unknown key (did you mean 'allowed_callers'?)"
    ]


def test_unknown_key_far_from_every_key_lists_the_known_keys() -> None:
    _, problems = validate(SPEC, {"name": "x", "zzz": 1})
    assert messages(problems) == [
        "zzz: unknown key (expected one of: debug, limits, mode, name, port, routes, timeout)"
    ]


def test_known_keys_are_not_reported_as_unknown() -> None:
    _, problems = validate(SPEC, {"name": "x", "mode": "audit", "debug": True})
    assert problems == []


def test_explicit_null_for_a_required_key_is_a_problem() -> None:
    _, problems = validate(SPEC, {"name": None})
    assert messages(problems) == ["name: has no value (required: a string)"]


def test_explicit_null_for_an_optional_key_takes_the_default() -> None:
    value, problems = validate(SPEC, {"name": "x", "port": None, "limits": None})
    assert problems == []
    assert value["port"] == 80
    assert value["limits"] == {"max_conns": 100}


def test_choice_suggests_the_closest_allowed_value() -> None:
    _, problems = validate(SPEC, {"name": "x", "mode": "enforec"})
    assert messages(problems) == ["mode: 'enforec' is not allowed (did you mean 'enforce'?)"]


def test_int_refuses_booleans_and_floats_but_accepts_ints() -> None:
    for bad in (True, 80.0, "80"):
        _, problems = validate(SPEC, {"name": "x", "port": bad})
        assert [p.path for p in problems] == ["port"]
    _, problems = validate(SPEC, {"name": "x", "port": 65535})
    assert problems == []


def test_non_empty_list_refuses_an_empty_list() -> None:
    _, problems = validate(SPEC, {"name": "x", "routes": {"a": {"digests": []}}})
    assert messages(problems) == ["routes.a.digests: must not be empty (expected a list)"]


def test_map_keys_are_checked_by_the_key_validator() -> None:
    _, problems = validate(SPEC, {"name": "x", "routes": {"Bad!": {"digests": [DIGEST]}, 3: {}}})
    assert [p.path for p in problems] == ["routes['Bad!']", "routes[3]"]
    assert "not a service name" in problems[0].message
    assert problems[1].message == "a name must be a string, got an integer (3)"


def test_wrong_container_type_is_one_problem() -> None:
    _, problems = validate(SPEC, {"name": "x", "routes": ["a"]})
    assert messages(problems) == ["routes: expected a mapping of names, got a list"]
    _, problems = validate(SPEC, None)
    assert messages(problems) == ["expected a mapping, got nothing (null)"]


def test_partial_result_keeps_valid_parts_and_marks_invalid_ones() -> None:
    value, problems = validate(SPEC, {"name": "x", "port": 0})
    assert len(problems) == 1
    assert value["name"] == "x" and value["port"] is INVALID


def test_key_path_brackets_keys_that_would_be_ambiguous() -> None:
    assert key_path("", "a") == "a"
    assert key_path("services", "orders") == "services.orders"
    assert key_path("services", "a.b") == "services['a.b']"
    assert key_path("x", None) == "x[NoneType]"


# --- scalars and validators -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("1h", 3600), ("2h30m", 9000), ("1h0m5s", 3605), (90, 90)],
)
def test_parse_duration_accepts_units_and_seconds(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "s", "1d", "10", "-5s", "1.5h", "1m2h", True, 1.5, "9" * 5000 + "s", -1]
)
def test_parse_duration_refuses_anything_else(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10 * 365 * 86400))
def test_format_duration_roundtrips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@given(st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.none(), st.booleans()))
def test_parse_duration_never_raises_anything_but_value_error(value: object) -> None:
    with contextlib.suppress(ValueError):
        assert isinstance(parse_duration(value), timedelta)


def test_duration_bounds_are_reported_in_duration_units() -> None:
    _, problems = validate(SPEC, {"name": "x", "timeout": "0s"})
    assert messages(problems) == ["timeout: must be at least 1s, got 0s"]


def test_sha256_hex_problem() -> None:
    assert sha256_hex_problem(DIGEST) is None
    assert sha256_hex_problem(DIGEST[:-1]) == "not a sha256 digest (expected 64 hex characters)"
    assert sha256_hex_problem("g" * 64) == "not a sha256 digest (expected 64 hex characters)"
    assert sha256_hex_problem(DIGEST.upper()) == "not a sha256 digest (hex must be lower-case)"


@pytest.mark.parametrize("good", ["127.0.0.1:80", "orders.internal:8443", "[::1]:443", "a:65535"])
def test_host_port_accepts_addresses(good: str) -> None:
    assert host_port_problem(good) is None


@pytest.mark.parametrize(
    "bad",
    ["127.0.0.1", ":80", "h:0", "h:65536", "h:http", "::1:80", "[::g]:80", "[::1:80", "a b:1"],
)
def test_host_port_refuses_non_addresses(bad: str) -> None:
    assert host_port_problem(bad) is not None


# --- YAML ---------------------------------------------------------------------------------------


def test_load_yaml_parses_a_document() -> None:
    assert load_yaml("a: [1, two]\n", "f.yaml") == {"a": [1, "two"]}
    assert load_yaml(b"a: 1\n", "f.yaml") == {"a": 1}


def test_yaml_syntax_error_is_one_line_with_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml("a: 1\nb: [1, 2\nc: 3\n", "f.yaml")
    text = str(info.value)
    assert text.startswith("f.yaml: 1 problem(s): line ")
    assert "column" in text and "\n" not in text


def test_yaml_mapping_error_names_its_position() -> None:
    with pytest.raises(ConfigError, match=r"line 1, column 5: mapping values are not allowed"):
        load_yaml("a: b: c", "f.yaml")


def test_yaml_duplicate_key_is_an_error_not_a_silent_override() -> None:
    with pytest.raises(ConfigError, match=r"line 3, column 3: duplicate key 'c'"):
        load_yaml("a:\n  c: 1\n  c: 2\n", "f.yaml")
    assert load_yaml("a:\n  c: 1\n  d: 2\n", "f.yaml") == {"a": {"c": 1, "d": 2}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: \x00", "line 1, column 4: unacceptable #x0000"),
        ("a: " + "1" * 5000, "line 1, column 4: a value could not be read"),
        ("a: 1\nb: 2001-13-45", "line 2, column 4: a value could not be read"),
        ("a: !!int ", "line 1, column 4: a value could not be read"),
        ("[" * 5000, "not valid YAML: nested too deeply"),
        ("? [a]\n: 1", "line 1, column 3: found unhashable key"),
        ("a: !!python/object:os.system x", "line 1"),
    ],
)
def test_yaml_values_that_cannot_be_read_are_config_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_yaml(text, "f.yaml")
    assert "\n" not in str(info.value)


def test_non_utf8_bytes_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 3\)"):
        load_yaml(b"a: \xff", "f.yaml")


YAMLISH = st.lists(
    st.sampled_from(
        [
            ":",
            "- ",
            " ",
            "\n",
            "  ",
            "[",
            "]",
            "{",
            "}",
            ",",
            "&a ",
            "*a",
            "!!int ",
            "'",
            '"',
            "? ",
            "#",
            "a",
            "b",
            "1",
            "0x1F",
            "2001-01-01",
            "~",
            "<<: ",
            "---",
            "...",
            "%YAML 1.1",
            "!!binary ",
            "\t",
            "|",
            ">",
        ]
    ),
    max_size=40,
).map("".join)


@given(st.one_of(st.text(), YAMLISH, st.binary()))
def test_load_yaml_returns_a_value_or_raises_a_one_line_config_error(text: str | bytes) -> None:
    try:
        load_yaml(text, "f.yaml")
    except ConfigError as err:
        assert "\n" not in str(err)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["name", "port", "routes", "digests", "limits", "x"])
                | st.text(max_size=5),
                children,
                max_size=4,
            )
        ),
        max_leaves=30,
    )
)
def test_validate_never_raises_for_any_parsed_value(doc: object) -> None:
    _, problems = validate(SPEC, doc)
    assert all(isinstance(p, Problem) and "\n" not in str(p) for p in problems)
