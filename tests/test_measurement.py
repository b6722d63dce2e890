"""Workload measurement: stable, order-independent, and sensitive to every byte, mode, path and
command argument; scanning never follows symlinks and never skips a file silently."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.attestation.measurement import (
    MEASUREMENT_FORMAT,
    FileEntry,
    measure,
    measurement_of,
    scan_tree,
)
from netshield.errors import NetshieldError

CMD = ["python3", "-m", "app"]
DIGEST = hashlib.sha256(b"x").hexdigest()

# --- trees for property tests: {relpath: (content, mode)} --------------------------------------

_names = st.text(alphabet="abcdefghij_.-", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..")
)
_relpaths = st.lists(_names, min_size=1, max_size=3).map("/".join)
_modes = st.sampled_from([0o400, 0o444, 0o600, 0o644, 0o700, 0o755, 0o4755, 0o640])


def _valid_tree(paths: dict[str, tuple[bytes, int]]) -> bool:
    # A path must not be both a file and a directory ("a" and "a/b").
    names = set(paths)
    return not any(p.startswith(q + "/") for p in names for q in names)


_trees = st.dictionaries(
    _relpaths, st.tuples(st.binary(min_size=1, max_size=64), _modes), min_size=1, max_size=5
).filter(_valid_tree)
_cmds = st.lists(st.text(max_size=8), min_size=1, max_size=4)


def _write_tree(root: Path, tree: dict[str, tuple[bytes, int]]) -> Path:
    for relpath, (content, mode) in tree.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode)
    return root


def _measure_tree(tree: dict[str, tuple[bytes, int]], cmd: list[str]) -> str:
    with tempfile.TemporaryDirectory() as d:
        return measure(_write_tree(Path(d) / "app", tree), cmd)


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(tree=_trees, cmd=_cmds)
def test_measurement_is_the_same_for_the_same_tree_in_another_directory(tree, cmd):
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        first = measure(_write_tree(Path(a) / "app", tree), cmd)
        again = measure(Path(a) / "app", cmd)
        elsewhere = measure(_write_tree(Path(b) / "other" / "place", tree), cmd)
    assert first == again == elsewhere


@settings(max_examples=25, deadline=None)
@given(tree=_trees, cmd=_cmds, data=st.data())
def test_measurement_changes_when_any_single_byte_changes(tree, cmd, data):
    relpath = data.draw(st.sampled_from(sorted(tree)))
    content, mode = tree[relpath]
    index = data.draw(st.integers(0, len(content) - 1))
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != content[index]))
    changed = content[:index] + bytes([new_byte]) + content[index + 1 :]
    edited = {**tree, relpath: (changed, mode)}
    assert _measure_tree(tree, cmd) != _measure_tree(edited, cmd)


@settings(max_examples=25, deadline=None)
@given(tree=_trees, cmd=_cmds, data=st.data())
def test_measurement_changes_when_a_mode_changes(tree, cmd, data):
    relpath = data.draw(st.sampled_from(sorted(tree)))
    content, mode = tree[relpath]
    new_mode = data.draw(_modes.filter(lambda m: m != mode))
    edited = {**tree, relpath: (content, new_mode)}
    assert _measure_tree(tree, cmd) != _measure_tree(edited, cmd)


@settings(max_examples=25, deadline=None)
@given(tree=_trees, cmd=_cmds, data=st.data())
def test_measurement_changes_when_a_file_is_renamed(tree, cmd, data):
    relpath = data.draw(st.sampled_from(sorted(tree)))
    new_path = data.draw(
        _relpaths.filter(lambda p: p not in tree and _valid_tree({**tree, p: (b"", 0)}))
    )
    edited = dict(tree)
    edited[new_path] = edited.pop(relpath)
    assert _measure_tree(tree, cmd) != _measure_tree(edited, cmd)


@settings(max_examples=100, deadline=None)
@given(cmd=_cmds, other=_cmds)
def test_measurement_changes_when_the_command_changes(cmd, other):
    entries = [FileEntry("app.py", 0o644, "file", DIGEST)]
    same = measurement_of(entries, cmd) == measurement_of(entries, other)
    assert same == (cmd == other)


_entries = st.lists(
    st.builds(
        FileEntry,
        relpath=_relpaths,
        mode=st.integers(0, 0o7777),
        kind=st.sampled_from(["file", "symlink"]),
        digest=st.binary(max_size=8).map(lambda b: hashlib.sha256(b).hexdigest()),
    ),
    max_size=6,
    unique_by=lambda e: e.relpath,
)


@settings(max_examples=100)
@given(entries=_entries, cmd=_cmds, data=st.data())
def test_measurement_of_ignores_entry_order(entries, cmd, data):
    shuffled = data.draw(st.permutations(entries))
    assert measurement_of(entries, cmd) == measurement_of(shuffled, cmd)


@settings(max_examples=50)
@given(a=_entries, b=_entries, cmd=_cmds)
def test_measurement_of_differs_for_different_entry_sets(a, b, cmd):
    same_set = {(e.relpath, e.mode, e.kind, e.digest) for e in a} == {
        (e.relpath, e.mode, e.kind, e.digest) for e in b
    }
    assert (measurement_of(a, cmd) == measurement_of(b, cmd)) == same_set


# --- examples -----------------------------------------------------------------------------------


def test_measurement_of_known_answer_keeps_the_format_stable():
    # Policies pin measurements: the encoding must never change under the same format tag.
    entries = [
        FileEntry("lib", 0o777, "symlink", DIGEST),
        FileEntry("bin/app", 0o755, "file", DIGEST),
    ]
    canonical = (
        '{"cmd":["bin/app","--port","8080"],'
        f'"entries":[["bin/app","file",493,"{DIGEST}"],["lib","symlink",511,"{DIGEST}"]],'
        '"format":"netshield-measurement/1"}'
    )
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    assert MEASUREMENT_FORMAT == "netshield-measurement/1"
    assert expected == "4b10e8a84e2a01356d8caf1c72bfc18bfbedd70deca342261d32d203672c8b1a"
    assert measurement_of(entries, ["bin/app", "--port", "8080"]) == expected


def test_measurement_separates_command_arguments():
    entries = [FileEntry("app", 0o755, "file", DIGEST)]
    assert measurement_of(entries, ["a b"]) != measurement_of(entries, ["a", "b"])
    assert measurement_of(entries, ["ab"]) != measurement_of(entries, ["a", "b"])


def test_measurement_of_refuses_duplicate_paths():
    entry = FileEntry("app", 0o755, "file", DIGEST)
    assert measurement_of([entry], CMD)
    with pytest.raises(ValueError, match="duplicate"):
        measurement_of([entry, entry], CMD)


def test_measurement_of_refuses_a_bare_string_command():
    entries = [FileEntry("app", 0o755, "file", DIGEST)]
    assert measurement_of(entries, ["python3 app.py"])
    with pytest.raises(ValueError, match="sequence of strings"):
        measurement_of(entries, "python3 app.py")


@pytest.mark.parametrize(
    ("relpath", "mode", "kind", "digest"),
    [
        ("", 0o644, "file", DIGEST),
        ("/abs", 0o644, "file", DIGEST),
        ("a/../b", 0o644, "file", DIGEST),
        ("a//b", 0o644, "file", DIGEST),
        ("a", 0o10000, "file", DIGEST),
        ("a", 0o644, "dir", DIGEST),
        ("a", 0o644, "file", DIGEST.upper()),
        ("a", 0o644, "file", DIGEST[:-1]),
    ],
)
def test_file_entry_refuses_malformed_fields(relpath, mode, kind, digest):
    assert FileEntry("a/b", 0o644, "file", DIGEST)
    with pytest.raises(ValueError):
        FileEntry(relpath, mode, kind, digest)


def test_scan_tree_lists_files_and_symlinks_with_relative_posix_paths(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "mod.py").write_bytes(b"print(1)\n")
    (tmp_path / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(tmp_path / "run.sh", 0o755)
    os.chmod(tmp_path / "pkg" / "sub" / "mod.py", 0o644)
    os.symlink("pkg/sub/mod.py", tmp_path / "link")
    entries = scan_tree(tmp_path)
    assert [(e.relpath, e.kind, e.mode) for e in entries] == [
        ("link", "symlink", 0o777),
        ("pkg/sub/mod.py", "file", 0o644),
        ("run.sh", "file", 0o755),
    ]
    assert entries[0].digest == hashlib.sha256(b"pkg/sub/mod.py").hexdigest()
    assert entries[1].digest == hashlib.sha256(b"print(1)\n").hexdigest()


def test_scan_tree_of_a_single_file_names_it_by_its_name(tmp_path):
    (tmp_path / "app.py").write_bytes(b"x")
    [entry] = scan_tree(tmp_path / "app.py")
    assert entry.relpath == "app.py"
    assert entry.digest == DIGEST


def test_scan_tree_does_not_follow_symlinks_below_the_path(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"one")
    app = tmp_path / "app"
    app.mkdir()
    os.symlink(outside, app / "config")
    before = measure(app, CMD)
    outside.write_bytes(b"two")  # the link's target content is not measured ...
    assert measure(app, CMD) == before
    (app / "config").unlink()
    os.symlink(tmp_path / "elsewhere.txt", app / "config")  # ... but its target text is
    assert measure(app, CMD) != before


def test_scan_tree_follows_a_symlinked_top_level_path(tmp_path):
    real = tmp_path / "release-1"
    real.mkdir()
    (real / "app.py").write_bytes(b"x")
    os.symlink(real, tmp_path / "current")
    assert measure(tmp_path / "current", CMD) == measure(real, CMD)


def test_scan_tree_ignores_empty_directories_but_sees_new_files(tmp_path):
    (tmp_path / "app.py").write_bytes(b"x")
    before = measure(tmp_path, CMD)
    (tmp_path / "empty").mkdir()
    assert measure(tmp_path, CMD) == before
    (tmp_path / "empty" / "new.py").write_bytes(b"")
    assert measure(tmp_path, CMD) != before


def test_scan_tree_refuses_a_missing_path_naming_it(tmp_path):
    assert scan_tree(tmp_path) == []
    with pytest.raises(NetshieldError, match="no-such-dir") as info:
        scan_tree(tmp_path / "no-such-dir")
    assert "\n" not in str(info.value)


def test_scan_tree_refuses_a_special_file_instead_of_skipping_it(tmp_path):
    (tmp_path / "app.py").write_bytes(b"x")
    assert len(scan_tree(tmp_path)) == 1
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(NetshieldError, match=r"pipe.*fifo"):
        scan_tree(tmp_path)


def test_scan_tree_reports_a_read_error_instead_of_skipping_the_file(tmp_path, monkeypatch):
    # Runs as root too (root can read mode-000 files): simulate the failing open.
    (tmp_path / "ok.py").write_bytes(b"x")
    (tmp_path / "secret.py").write_bytes(b"x")
    assert len(scan_tree(tmp_path)) == 2
    real_open = os.open

    def failing_open(path, flags, *args):
        if str(path).endswith("secret.py"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(NetshieldError, match=r"secret\.py.*Permission denied") as info:
        scan_tree(tmp_path)
    assert "\n" not in info.value.one_line()


def _unprivileged(check: Callable[[Path], None]) -> None:
    """Run `check` in a world-traversable temp dir; as root, in a forked child that dropped to nobody,
    because root reads files whatever their mode."""
    base = Path(tempfile.mkdtemp(prefix="netshield-unpriv-"))
    base.chmod(0o755)
    try:
        if os.geteuid() != 0:
            check(base)
            return
        os.chown(base, NOBODY, NOBODY)
        pid = os.fork()
        if pid == 0:  # child: drop privileges, run the check, report by exit code
            code = 1
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                check(base)
                code = 0
            except BaseException as err:
                print(f"unprivileged check failed: {err!r}", file=sys.stderr)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the check failed in the unprivileged child"
    finally:
        shutil.rmtree(base, ignore_errors=True)


NOBODY = 65534


def _unreadable_file(base: Path) -> None:
    tree = base / "tree"
    tree.mkdir()
    secret = tree / "secret.py"
    secret.write_bytes(b"x")
    assert len(scan_tree(tree)) == 1  # the readable twin
    os.chmod(secret, 0)
    with pytest.raises(NetshieldError, match=r"secret\.py"):
        scan_tree(tree)


def _unreadable_dir(base: Path) -> None:
    tree = base / "tree"
    locked = tree / "locked"
    locked.mkdir(parents=True)
    assert scan_tree(tree) == []  # the readable twin
    os.chmod(locked, 0)
    try:
        with pytest.raises(NetshieldError, match="locked"):
            scan_tree(tree)
    finally:
        os.chmod(locked, 0o700)


def test_scan_tree_refuses_an_unreadable_file_instead_of_skipping_it() -> None:
    _unprivileged(_unreadable_file)


def test_scan_tree_refuses_an_unreadable_directory_instead_of_skipping_it() -> None:
    _unprivileged(_unreadable_dir)
