"""The architecture as a test: pure layers import no I/O, and the CAS and the agent never import
each other (they share only the pure layers and the CAS client)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "netshield"
IO_MODULES = {"asyncio", "socket", "aiohttp", "sqlite3", "ssl", "subprocess", "uvloop", "selectors"}
PURE = [
    "reasons",
    "errors",
    "identity",
    "nonces",
    "netaddr",
    "schema",
    "policy",
    "policyslice",
    "pki",
    "attestation",
    "cas/auditlog.py",
    "waf",
    "cas/ratelimit.py",
    "cas/store/model.py",
    "cas/store/integrity.py",
    "cas/store/backend.py",
    "cas/store/sql.py",
    "sidecar/handshakes.py",
    "sidecar/denials.py",
]
FORBIDDEN_EDGES = [("agent", "netshield.cas"), ("cas", "netshield.agent")]


def modules(prefix: str) -> list[Path]:
    target = PKG / prefix
    if target.is_dir():
        return sorted(target.rglob("*.py"))
    return [target if target.suffix == ".py" else target.with_suffix(".py")]


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("prefix", PURE)
def test_pure_layers_do_no_network_or_database_io(prefix: str) -> None:
    for path in modules(prefix):
        bad = {m for m in imports_of(path) if m.split(".")[0] in IO_MODULES}
        assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"


@pytest.mark.parametrize(("package", "forbidden"), FORBIDDEN_EDGES)
def test_cas_and_agent_never_import_each_other(package: str, forbidden: str) -> None:
    for path in modules(package):
        bad = {m for m in imports_of(path) if m == forbidden or m.startswith(forbidden + ".")}
        assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"


def test_the_check_itself_catches_an_io_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import socket\nfrom asyncio import sleep\n")
    assert {"socket", "asyncio"} <= imports_of(probe)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_no_two_modules_import_each_other() -> None:
    graph = {_module_name(p): imports_of(p) for p in sorted(PKG.rglob("*.py"))}
    mutual = sorted(
        (a, b) for a, deps in graph.items() for b in deps if a < b and a in graph.get(b, set())
    )
    assert not mutual, f"modules that import each other: {mutual}"


DATABASE_DRIVERS = {"sqlite3", "psycopg", "psycopg_pool"}


def test_cas_store_logic_reaches_databases_only_through_the_storage_interface() -> None:
    core = PKG / "cas" / "store" / "core.py"
    bad = {m for m in imports_of(core) if m.split(".")[0] in DATABASE_DRIVERS}
    assert not bad, f"cas/store/core.py imports {sorted(bad)}"
    for module in ("model", "integrity", "backend", "sql", "sqlite"):
        imported = imports_of(PKG / "cas" / "store" / f"{module}.py")
        assert not {"netshield.cas.store.core", "netshield.cas.store.rollback"} & imported
