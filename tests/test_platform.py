"""The simulated platform: it signs quotes about itself, keeps its key out of reprs, and saves and
loads itself only as a consistent, owner-only set of files."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from netshield.attestation.platform import (
    PLATFORM_CERT,
    PLATFORM_JSON,
    PLATFORM_KEY,
    Platform,
    create_platform,
    load_platform,
    save_platform,
)
from netshield.attestation.quote import QUOTE_FORMAT, decode_quote
from netshield.errors import NetshieldError
from netshield.pki.ca import create_root_ca
from netshield.pki.certext import platform_claims_of
from netshield.pki.keys import private_key_pem

NOW = datetime(2025, 1, 1, tzinfo=UTC)
HEX = hashlib.sha256(b"workload").hexdigest()


@pytest.fixture(scope="module")
def vendor():
    return create_root_ca("netshield simulated vendor", now=NOW)


@pytest.fixture(scope="module")
def platform(vendor):
    return create_platform(vendor, platform_id="host-a", tcb_level=3, debug=False, now=NOW)


def _quote(platform: Platform, **changes: object) -> bytes:
    args: dict[str, object] = {
        "measurement": HEX,
        "signer": HEX,
        "product_id": 1,
        "svn": 2,
        "report_data": HEX,
    }
    args.update(changes)
    return platform.quote(**args)  # type: ignore[arg-type]


def test_create_platform_certifies_its_id_and_tcb_level(vendor, platform):
    claims = platform_claims_of(platform.cert)
    assert claims is not None
    assert (claims.platform_id, claims.tcb_level) == ("host-a", 3)
    platform.cert.verify_directly_issued_by(vendor.cert)


@pytest.mark.parametrize(
    ("platform_id", "tcb_level"),
    [("", 1), ("a\nb", 1), ("x" * 65, 1), ("host-a", -1), ("host-a", 2**32), ("host-a", True)],
)
def test_create_platform_refuses_bad_ids_and_tcb_levels(vendor, platform_id, tcb_level):
    assert create_platform(vendor, platform_id="x" * 64, tcb_level=2**32 - 1, debug=True, now=NOW)
    with pytest.raises(NetshieldError):
        create_platform(vendor, platform_id=platform_id, tcb_level=tcb_level, debug=False, now=NOW)


def test_platform_quote_carries_the_platform_facts_and_a_valid_signature(platform):
    quote = decode_quote(_quote(platform, svn=9))
    body = quote.body
    assert body.format == QUOTE_FORMAT
    assert (body.platform_id, body.tcb_level, body.debug, body.svn) == ("host-a", 3, False, 9)
    public_key = platform.cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(quote.signature, quote.body_bytes, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize(
    "changes",
    [{"measurement": "abc"}, {"signer": HEX.upper()}, {"svn": -1}, {"product_id": 2**32}],
)
def test_platform_quote_refuses_fields_outside_the_schema(platform, changes):
    assert _quote(platform)
    with pytest.raises(ValueError, match="cannot quote"):
        _quote(platform, **changes)


def test_platform_repr_never_shows_the_key(platform):
    text = repr(platform) + str(platform)
    assert "host-a" in text
    assert "key" not in text.lower().replace("public", "")
    body = b"".join(private_key_pem(platform.key).splitlines()[1:-1]).decode()
    assert body[:20] not in text


def test_save_then_load_platform_roundtrips_with_an_owner_only_key(tmp_path, platform):
    paths = save_platform(platform, tmp_path / "plat")
    assert [p.name for p in paths] == [PLATFORM_JSON, PLATFORM_CERT, PLATFORM_KEY]
    assert stat.S_IMODE(os.stat(tmp_path / "plat" / PLATFORM_KEY).st_mode) == 0o600
    loaded = load_platform(tmp_path / "plat")
    assert loaded == platform
    assert decode_quote(_quote(loaded)).body.platform_id == "host-a"


def test_save_platform_refuses_to_overwrite_an_existing_platform(tmp_path, platform):
    save_platform(platform, tmp_path)
    before = (tmp_path / PLATFORM_KEY).read_bytes()
    with pytest.raises(NetshieldError, match="already exists"):
        save_platform(platform, tmp_path)
    assert (tmp_path / PLATFORM_KEY).read_bytes() == before


def test_load_platform_names_a_missing_file(tmp_path, platform):
    save_platform(platform, tmp_path)
    assert load_platform(tmp_path)
    (tmp_path / PLATFORM_CERT).unlink()
    with pytest.raises(NetshieldError, match=PLATFORM_CERT) as info:
        load_platform(tmp_path)
    assert "\n" not in info.value.one_line()


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"platform_id": "host-a", "tcb_level": 3}',
        '{"platform_id": "host-a", "tcb_level": 3, "debug": false, "extra": 1}',
        '{"platform_id": "host-a", "tcb_level": "3", "debug": false}',
        '{"platform_id": "host-a", "tcb_level": 3, "debug": "no"}',
        '{"platform_id": "", "tcb_level": 3, "debug": false}',
    ],
)
def test_load_platform_refuses_a_malformed_platform_json(tmp_path, platform, content):
    save_platform(platform, tmp_path)
    assert load_platform(tmp_path)
    (tmp_path / PLATFORM_JSON).write_text(content)
    with pytest.raises(NetshieldError, match=PLATFORM_JSON):
        load_platform(tmp_path)


def test_the_debug_flag_is_certified_with_the_platform(tmp_path, vendor):
    debug = create_platform(vendor, platform_id="host-d", tcb_level=3, debug=True, now=NOW)
    save_platform(debug, tmp_path)
    assert load_platform(tmp_path).debug is True


@pytest.mark.parametrize(
    ("platform_id", "tcb_level", "debug"),
    [("host-b", 3, False), ("host-a", 4, False), ("host-a", 3, True)],
)
def test_load_platform_refuses_settings_that_contradict_the_certificate(
    tmp_path, platform, platform_id, tcb_level, debug
):
    save_platform(platform, tmp_path)
    (tmp_path / PLATFORM_JSON).write_text(
        json.dumps({"platform_id": platform_id, "tcb_level": tcb_level, "debug": debug})
    )
    with pytest.raises(NetshieldError, match="certifies"):
        load_platform(tmp_path)


def test_load_platform_refuses_a_key_that_does_not_match_the_certificate(
    tmp_path, vendor, platform
):
    other = create_platform(vendor, platform_id="host-a", tcb_level=3, debug=False, now=NOW)
    save_platform(platform, tmp_path / "a")
    save_platform(other, tmp_path / "b")
    (tmp_path / "a" / PLATFORM_KEY).unlink()
    os.rename(tmp_path / "b" / PLATFORM_KEY, tmp_path / "a" / PLATFORM_KEY)
    with pytest.raises(NetshieldError, match=f"{PLATFORM_KEY}.*does not hold the key"):
        load_platform(tmp_path / "a")


def test_load_platform_refuses_a_certificate_without_platform_claims(tmp_path, vendor, platform):
    save_platform(platform, tmp_path)
    (tmp_path / PLATFORM_CERT).write_bytes(vendor.bundle_pem())
    with pytest.raises(NetshieldError, match=f"{PLATFORM_CERT}.*no platform claims"):
        load_platform(tmp_path)


def test_load_platform_refuses_a_key_readable_by_others(tmp_path, platform):
    save_platform(platform, tmp_path)
    os.chmod(tmp_path / PLATFORM_KEY, 0o644)
    with pytest.raises(NetshieldError, match="chmod 600"):
        load_platform(tmp_path)
