"""The connection record: one sorted JSON line with a schema version, read back exactly; bad
lines are ValueErrors that name the field; connection ids sort by time."""

from __future__ import annotations

import contextlib
import json
import string
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.reasons import Reason
from netshield.record import (
    AGGREGATE_FIELDS,
    ONE_CONNECTION_FIELDS,
    RECORD_FIELDS,
    RECORD_SCHEMA,
    ConnectionRecord,
    WafOutcome,
    new_conn_id,
    rfc3339,
)

T0 = datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)


def allowed(**changes: Any) -> ConnectionRecord:
    base = ConnectionRecord(
        ts=rfc3339(T0),
        conn_id=new_conn_id(T0, entropy=1),
        direction="inbound",
        listener="inbound",
        src="10.0.0.7:51234",
        dst="127.0.0.1:8080",
        local_identity="spiffe://acme/svc/orders",
        peer_identity="spiffe://acme/svc/frontend",
        tls_version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        decision="allow",
        reason=Reason.OK,
        detail="frontend is an allowed caller of orders",
        bytes_in=12,
        bytes_out=3400,
        duration_ms=41.5,
        close_reason=Reason.CLOSED,
        peer_serial="1f3a",
        peer_epoch=1,
        policy_version=3,
    )
    return replace(base, **changes)


def test_record_is_one_sorted_json_line_with_the_schema_version() -> None:
    line = allowed(detail="two\nlines and a \u2603").to_json()
    assert "\n" not in line and line.isascii()
    data = json.loads(line)
    assert list(data) == sorted(data)
    assert data["schema"] == 1  # one connection: the oldest schema that says it
    # a connection no tunnel carried has no tunnel fields: its line is as it was before them
    assert set(data) == {*ONE_CONNECTION_FIELDS, "schema"} - {"tunnel_id", "stream_id", "streams"}
    assert data["ts"] == "2025-01-31T12:00:00.123Z"
    assert data["reason"] == "OK" and data["close_reason"] == "CLOSED"
    assert data["detail"] == "two\nlines and a \u2603"


def test_a_stream_names_its_tunnel_and_a_tunnel_record_counts_its_streams() -> None:
    stream = allowed(tunnel_id="t0123456789abcde", stream_id=3)
    data = json.loads(stream.to_json())
    assert (data["tunnel_id"], data["stream_id"]) == ("t0123456789abcde", 3)
    assert "streams" not in data
    assert ConnectionRecord.from_json(stream.to_json()) == stream
    tunnel = allowed(direction="tunnel", conn_id="t0123456789abcde", streams=7)
    assert json.loads(tunnel.to_json())["streams"] == 7
    assert ConnectionRecord.from_json(tunnel.to_json()) == tunnel
    with pytest.raises(ValueError, match="stream_id"):
        allowed(stream_id=-1)
    with pytest.raises(ValueError, match="tunnel_id"):
        allowed(tunnel_id="")


def test_design_fields_are_all_present() -> None:
    design = [
        "ts", "conn_id", "direction", "listener", "src", "dst", "original_dst", "local_identity",
        "peer_identity", "tls_version", "cipher", "resumed", "decision", "reason", "detail", "waf",
        "bytes_in", "bytes_out", "duration_ms", "close_reason",
    ]  # fmt: skip
    assert set(design) <= set(RECORD_FIELDS)


def test_record_roundtrips_including_waf_and_denials() -> None:
    for record in (
        allowed(),
        allowed(waf=WafOutcome("block", ("942100", "949110"))),
        allowed(
            decision="deny",
            reason=Reason.PEER_NOT_AUTHORIZED,
            detail="intruder is not in services.orders.allowed_callers",
            mode="audit",
            close_reason=None,
            bytes_in=0,
            bytes_out=0,
        ),
    ):
        assert ConnectionRecord.from_json(record.to_json()) == record
        assert ConnectionRecord.from_json(record.to_json().encode()) == record


def test_reader_ignores_keys_it_does_not_know_but_requires_its_own() -> None:
    data = json.loads(allowed().to_json())
    data["prev_hash"] = "sha256:abcd"
    assert ConnectionRecord.from_json(json.dumps(data)) == allowed()
    del data["bytes_out"]
    with pytest.raises(ValueError, match="bytes_out"):
        ConnectionRecord.from_json(json.dumps(data))


def test_a_line_written_before_the_proxy_field_reads_as_a_sidecar_record() -> None:
    data = json.loads(replace(allowed(), proxy="in-process").to_json())
    assert data["proxy"] == "in-process"
    assert ConnectionRecord.from_dict(data).proxy == "in-process"
    del data["proxy"]
    assert ConnectionRecord.from_dict(data).proxy == "sidecar"


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("schema", 3, "schema 3"),
        ("schema", 0, "schema 0"),
        ("schema", True, "schema True"),
        ("ts", "2025-01-31 12:00:00", "RFC 3339"),
        ("ts", "2025-01-31T12:00:00+01:00", "RFC 3339"),
        ("ts", "2025-02-30T12:00:00Z", "real date"),
        ("conn_id", "", "conn_id"),
        ("direction", "sideways", "inbound or outbound"),
        ("decision", "maybe", "allow or deny"),
        ("mode", "yolo", "enforce or audit"),
        ("proxy", "in-kernel", "sidecar or in-process"),
        ("reason", "not a code", "reason code"),
        ("close_reason", 7, "close_reason"),
        ("resumed", 1, "true or false"),
        ("bytes_in", -1, "non-negative integer"),
        ("bytes_out", 1.5, "non-negative integer"),
        ("duration_ms", "fast", "non-negative number"),
        ("peer_serial", "XYZ", "hex"),
        ("peer_epoch", True, "peer_epoch"),
        ("waf", {"rule_ids": []}, "waf"),
        ("waf", {"action": "block", "rule_ids": [942100]}, "waf.rule_ids"),
        ("src", None, "'src'"),
    ],
)
def test_bad_field_is_a_value_error_naming_it(field: str, value: object, fragment: str) -> None:
    data = json.loads(allowed().to_json())
    data[field] = value
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        ConnectionRecord.from_json(json.dumps(data))


def test_constructor_refuses_what_the_reader_would_refuse() -> None:
    with pytest.raises(ValueError, match="bytes_in"):
        allowed(bytes_in=-5)
    with pytest.raises(ValueError, match="duration_ms"):
        allowed(duration_ms=float("nan"))
    assert allowed(duration_ms=7).duration_ms == 7.0


def denied(**changes: Any) -> ConnectionRecord:
    return allowed(
        decision="deny",
        reason=Reason.HANDSHAKE_TIMEOUT,
        detail="the client did not complete the TLS handshake",
        bytes_in=0,
        bytes_out=0,
        close_reason=Reason.HANDSHAKE_TIMEOUT,
        peer_identity=None,
        **changes,
    )


def test_an_aggregate_of_denials_is_a_schema_2_line_with_its_count() -> None:
    agg = denied(count=1999, last_ts="2025-01-31T12:00:09.876Z")
    data = json.loads(agg.to_json())
    assert data["schema"] == RECORD_SCHEMA == 2
    assert set(data) == {*RECORD_FIELDS, "schema"} - {"tunnel_id", "stream_id", "streams"}
    assert set(AGGREGATE_FIELDS) <= set(data)
    assert data["count"] == 1999 and data["last_ts"] == "2025-01-31T12:00:09.876Z"
    assert ConnectionRecord.from_json(agg.to_json()) == agg


def test_a_schema_1_line_reads_as_one_connection_and_a_schema_2_line_needs_its_keys() -> None:
    one = json.loads(denied().to_json())
    one["count"] = 5  # a key schema 1 does not have: ignored, like any unknown key
    assert ConnectionRecord.from_json(json.dumps(one)).count == 1
    two = json.loads(denied(count=2, last_ts=rfc3339(T0)).to_json())
    del two["last_ts"]
    with pytest.raises(ValueError, match="last_ts"):
        ConnectionRecord.from_json(json.dumps(two))


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"count": 0}, "positive integer"),
        ({"count": True}, "positive integer"),
        ({"last_ts": "yesterday"}, "last_ts"),
        ({"last_ts": "2025-02-30T12:00:00Z"}, "last_ts"),
    ],
)
def test_bad_aggregate_fields_are_value_errors(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        denied(**changes)


def test_only_denials_are_aggregated() -> None:
    assert denied(count=3).count == 3
    with pytest.raises(ValueError, match="only denials"):
        allowed(count=3)


@pytest.mark.parametrize(
    "line", ["", "null", "[]", "{", '"text"', "{}", "[" * 100_000, '{"schema": 1}']
)
def test_garbage_lines_are_value_errors(line: str) -> None:
    with pytest.raises(ValueError):
        ConnectionRecord.from_json(line)


def test_rfc3339_is_utc_with_milliseconds_and_needs_a_timezone() -> None:
    cet = timezone(timedelta(hours=1))
    assert rfc3339(datetime(2025, 1, 31, 13, 0, 0, 5000, tzinfo=cet)) == "2025-01-31T12:00:00.005Z"
    assert allowed().started == datetime(2025, 1, 31, 12, 0, 0, 123000, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone"):
        rfc3339(datetime(2025, 1, 31))


def test_conn_ids_are_16_chars_sortable_by_time_and_distinct() -> None:
    ids = [new_conn_id(T0 + timedelta(milliseconds=ms)) for ms in (0, 1, 999, 60_000, 10**9)]
    assert all(len(i) == 16 and i.isalnum() and i.islower() for i in ids)
    assert ids == sorted(ids)
    assert len({new_conn_id() for _ in range(10_000)}) == 10_000
    # the twin: same millisecond, ids differ only by their random part
    a, b = new_conn_id(T0, entropy=1), new_conn_id(T0, entropy=2)
    assert a != b and a[:10] == b[:10]


# --- properties ------------------------------------------------------------------------------

CODES = st.builds(
    str.__add__,
    st.sampled_from(string.ascii_uppercase),
    st.text(alphabet=string.ascii_uppercase + string.digits + "_", max_size=20),
)
TEXT = st.text(max_size=30)
OPT_TEXT = st.none() | TEXT
NAT = st.integers(min_value=0, max_value=2**63)

RECORDS = st.builds(
    ConnectionRecord,
    ts=st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
    ).map(rfc3339),
    conn_id=st.text(min_size=1, max_size=20),
    direction=st.sampled_from(["inbound", "outbound"]),
    listener=TEXT,
    src=TEXT,
    dst=TEXT,
    original_dst=OPT_TEXT,
    local_identity=OPT_TEXT,
    peer_identity=OPT_TEXT,
    tls_version=OPT_TEXT,
    cipher=OPT_TEXT,
    resumed=st.booleans(),
    decision=st.sampled_from(["allow", "deny"]),
    reason=CODES,
    detail=TEXT,
    mode=st.sampled_from(["enforce", "audit"]),
    waf=st.none() | st.builds(WafOutcome, TEXT, st.lists(TEXT, max_size=3).map(tuple)),
    bytes_in=NAT,
    bytes_out=NAT,
    duration_ms=st.floats(min_value=0, max_value=1e12) | st.integers(0, 10**9),
    close_reason=st.none() | CODES,
    peer_serial=st.none() | st.integers(0, 2**160).map(lambda n: format(n, "x")),
    peer_epoch=st.none() | NAT,
    policy_version=st.none() | NAT,
).flatmap(
    lambda r: (
        st.just(r)
        if r.decision == "allow"
        else st.builds(
            replace,
            st.just(r),
            count=st.integers(1, 2**40),
            last_ts=st.none()
            | st.datetimes(
                min_value=datetime(1970, 1, 1),
                max_value=datetime(9999, 1, 1),
                timezones=st.just(UTC),
            ).map(rfc3339),
        )
    )
)


@settings(max_examples=300, deadline=None)
@given(RECORDS)
def test_any_record_roundtrips_through_one_line(record: ConnectionRecord) -> None:
    line = record.to_json()
    assert "\n" not in line and "\r" not in line
    assert ConnectionRecord.from_json(line) == record


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_from_json_of_any_text_raises_only_value_error(line: str | bytes) -> None:
    with contextlib.suppress(ValueError):
        ConnectionRecord.from_json(line)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*RECORD_FIELDS, "schema"]), JSON, max_size=6), RECORDS)
def test_any_field_values_over_a_valid_record_raise_only_value_error(
    changes: dict[str, Any], record: ConnectionRecord
) -> None:
    data = json.loads(record.to_json()) | changes
    try:
        parsed = ConnectionRecord.from_json(json.dumps(data))
    except ValueError:
        return
    assert ConnectionRecord.from_json(parsed.to_json()) == parsed
