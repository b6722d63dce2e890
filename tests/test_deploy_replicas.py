"""deploy/kubernetes/replicas: the CAS as two replicas on PostgreSQL, built from the base
manifests by its kustomization (its JSON 6902 and delete patches applied here as kustomize
applies them), validated against the pinned Kubernetes version like the base, every
reference resolving, and the shape replicas need: two pods on the database, each with its
own witness, a disruption budget, the password from a Secret mounted only where it is used."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.test_deploy_files import K8S, KUBERNETES_VERSION, k8s_docs, k8s_reference_problems

OVERLAY = K8S / "replicas"
DATABASE_SECRET = "netshield-cas-database"


class PatchFailed(Exception):
    pass


def _pointer(doc: Any, path: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc, parts[-1]


def json6902(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add, replace, remove and test, as kustomize applies them."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parent, key = _pointer(doc, op["path"])
        if op["op"] == "test":
            actual = parent[int(key)] if isinstance(parent, list) else parent.get(key)
            if actual != op["value"]:
                raise PatchFailed(f"test {op['path']}: {actual!r} != {op['value']!r}")
        elif op["op"] == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if key == "-" else int(key), op["value"])
            else:
                parent[key] = op["value"]
        elif op["op"] == "replace":
            if isinstance(parent, list):
                parent[int(key)] = op["value"]
            elif key in parent:
                parent[key] = op["value"]
            else:
                raise PatchFailed(f"replace {op['path']}: no such member")
        elif op["op"] == "remove":
            del parent[int(key) if isinstance(parent, list) else key]
        else:
            raise PatchFailed(f"unsupported op {op['op']}")
    return doc


def _matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    return doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]


def build(base: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The overlay's objects: kustomize build deploy/kubernetes/replicas."""
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        if resource == "..":
            docs += copy.deepcopy(base if base is not None else k8s_docs())
        else:
            docs += [d for d in yaml.safe_load_all((OVERLAY / resource).read_text()) if d]
    for patch in kustomization["patches"]:
        if "path" in patch:
            ops = yaml.safe_load((OVERLAY / patch["path"]).read_text())
            docs = [json6902(d, ops) if _matches(d, patch["target"]) else d for d in docs]
        else:
            smp = yaml.safe_load(patch["patch"])
            assert smp.pop("$patch") == "delete"
            target = {"kind": smp["kind"], "name": smp["metadata"]["name"]}
            assert any(_matches(d, target) for d in docs), f"nothing to delete: {target}"
            docs = [d for d in docs if not _matches(d, target)]
    return docs


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
    }


def test_the_replicas_overlay_validates_against_the_pinned_version() -> None:
    docs = build()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "netshield-cas"),
        ("PodDisruptionBudget", "netshield-cas"),
        ("StatefulSet", "netshield-postgres"),
        ("Service", "netshield-postgres"),
        ("Service", "netshield-cas"),
    } <= kinds
    assert ("PersistentVolumeClaim", "netshield-cas-state") not in kinds
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert k8s_reference_problems(docs) == []


def test_the_cas_runs_as_two_replicas_on_the_database_each_with_its_own_witness() -> None:
    docs = build()
    cas = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "netshield-cas"
    )
    assert cas["spec"]["replicas"] == 2
    assert cas["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = cas["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:2] == ["cas", "--adopt-counter"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NETSHIELD_DATABASE"]["valueFrom"]["secretKeyRef"] == {
        "name": DATABASE_SECRET,
        "key": "url",
    }
    password_file = Path(env["NETSHIELD_DATABASE_PASSWORD_FILE"]["value"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert Path(mounts["database"]["mountPath"]) == password_file.parent
    assert mounts["database"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["database"]["secret"]["items"] == [
        {"key": "password", "path": password_file.name}
    ]
    assert "emptyDir" in volumes["counter"]  # per pod: one witness per replica, never shared
    assert not any("persistentVolumeClaim" in v for v in volumes.values())
    budget = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert 1 <= budget["spec"]["minAvailable"] < cas["spec"]["replicas"]


def test_the_database_password_secret_is_mounted_only_into_the_cas_and_the_database() -> None:
    users = {
        name
        for name, template in workloads(build()).items()
        for vol in template["spec"].get("volumes", [])
        if vol.get("secret", {}).get("secretName") == DATABASE_SECRET
    }
    assert users == {"netshield-cas", "netshield-postgres"}


def test_the_patch_refuses_a_base_it_was_not_written_for() -> None:
    base = k8s_docs()
    changed = copy.deepcopy(base)
    for doc in changed:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "netshield-cas":
            doc["spec"]["template"]["spec"]["volumes"].reverse()  # `state` no longer first
    build(base)  # the twin: the real base takes the patch
    with pytest.raises(PatchFailed, match="volumes/0/name"):
        build(changed)
    broken = build()
    for doc in broken:
        if doc["kind"] == "PodDisruptionBudget":
            doc["spec"]["selector"]["matchLabels"] = {"app": "nothing"}
    assert k8s_reference_problems(broken) == ["PodDisruptionBudget netshield-cas selects no pod"]


# --- compose ------------------------------------------------------------------------------------

COMPOSE_DIR = K8S.parent / "compose"


def compose_services() -> tuple[dict[str, Any], dict[str, Any]]:
    base = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    extra = yaml.safe_load((COMPOSE_DIR / "docker-compose.replicas.yml").read_text())
    return base, extra


def test_the_compose_replicas_variant_adds_a_database_and_a_second_replica() -> None:
    base, extra = compose_services()
    volumes = set(base["volumes"]) | set(extra["volumes"])
    services = extra["services"]
    assert {"postgres", "cas", "cas-2"} <= set(services)
    for name, svc in services.items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            assert source in volumes or (COMPOSE_DIR / source).exists(), f"{name}: {source}"
        for dep in svc.get("depends_on", {}):
            assert dep in base["services"] or dep in services, f"{name}: {dep}"
    # one name for both replicas, a witness each, the password only where it is used
    assert services["cas-2"]["networks"]["default"]["aliases"] == ["cas"]
    counters = {
        name: next(m.split(":")[0] for m in svc["volumes"] if "counter" in m)
        for name, svc in (("cas", base["services"]["cas"]), ("cas-2", services["cas-2"]))
    }
    assert len(set(counters.values())) == 2, counters
    users = {
        name
        for name, svc in {**base["services"], **services}.items()
        if any(m.startswith("cas-database-password:") for m in svc.get("volumes", []))
    }
    assert users == {"postgres", "cas", "cas-2"}
    for name in ("cas", "cas-2"):
        env = services[name]["environment"]
        assert env["NETSHIELD_DATABASE"] == "postgresql://netshield@postgres:5432/netshield"
        assert ":" not in env["NETSHIELD_DATABASE"].split("@")[0].removeprefix("postgresql://")
    dockerfile = (K8S.parent / "docker" / "postgres.Dockerfile").read_text()
    assert "COPY deploy/docker/postgres-entrypoint.sh" in dockerfile
    assert (K8S.parent / "docker" / "postgres-entrypoint.sh").exists()
