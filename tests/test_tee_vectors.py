"""The fetch of the real TEE vectors: pinned releases only, laid out again from the cache without
the network, and a failure the real-evidence tests can show."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tee_vectors import (
    DCAP_QVL,
    RELEASES,
    FetchError,
    Index,
    Release,
    cache_dir,
    check_digest,
    error_file,
    fetch,
    missing_reason,
    release_bytes,
)

CACHED = all((cache_dir() / r.filename).is_file() for r in RELEASES)


class Unreachable:
    """An index that is never to be asked."""

    def download(self, release: Release) -> bytes:
        raise AssertionError(f"the index was asked for {release.filename}")


class Serving:
    """An index that serves the same bytes for every release (as a compromised mirror would)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def download(self, release: Release) -> bytes:
        return self.data


class Offline:
    def download(self, release: Release) -> bytes:
        raise OSError("Network is unreachable")


def test_a_release_with_another_digest_than_its_pin_is_refused_and_not_cached(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        FetchError, match=r"dcap_qvl-0\.7\.0\.tar\.gz has SHA-256 \w+, not the pinned"
    ):
        check_digest(DCAP_QVL, b"not the release")

    def index() -> Index:
        return Serving(b"tampered")

    with pytest.raises(FetchError, match="not the pinned"):
        release_bytes(DCAP_QVL, tmp_path, index)
    assert not (tmp_path / DCAP_QVL.filename).exists()
    # a damaged cached copy is not used either: it is fetched again, and refused again
    (tmp_path / DCAP_QVL.filename).write_bytes(b"damaged")
    with pytest.raises(FetchError, match="not the pinned"):
        release_bytes(DCAP_QVL, tmp_path, index)


def test_an_unreachable_index_leaves_a_reason_the_tests_show(tmp_path: Path) -> None:
    dest = tmp_path / "vectors"
    with pytest.raises(FetchError, match="OSError: Network is unreachable"):
        fetch(dest, tmp_path / "empty-cache", Offline)
    assert not dest.exists()
    assert "Network is unreachable" in error_file(dest).read_text()
    assert "Network is unreachable" in missing_reason(dest)


@pytest.mark.skipif(not CACHED, reason=f"the releases are not cached in {cache_dir()}")
def test_the_vectors_are_laid_out_again_from_the_cache_without_the_index(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir(), cache)
    dest = tmp_path / "vectors"
    error_file(dest).write_text("fetching them failed: an earlier run\n")
    assert "files from 5 releases" in fetch(dest, cache, Unreachable)
    assert (dest / "SOURCES.md").is_file() and not error_file(dest).exists()
    assert len((dest / "snp-genoa-sev-attest-tool" / "report.bin").read_bytes()) == 1184
    assert fetch(dest, cache, Unreachable).endswith("(current)")
    (dest / ".complete").write_text("another pin set\n")  # pins changed: laid out anew
    assert "files from 5 releases" in fetch(dest, cache, Unreachable)
