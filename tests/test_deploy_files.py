"""deploy/: the Kubernetes manifests validate against a pinned Kubernetes version, and the
Dockerfile, the compose file and the manifests only reference files, configs, volumes and
services that exist; the configs they carry pass netshield's own checks."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from netshield.policy import parse_policy
from netshield.quoting.config import parse_quoting_config
from netshield.sidecar.config import parse_sidecar_config
from tests.support import netshield_cmd

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are meant for
# objects an operator makes before applying (see the README's "Kubernetes" section)
OPERATOR_MADE = {
    ("Secret", "netshield-cas-keys"),
    ("Secret", "netshield-platform"),
    ("ConfigMap", "netshield-mesh-ca"),
    ("Secret", "netshield-cas-database"),  # replicas/: the database URL and password
}
KEY_SECRETS = {"netshield-cas-keys": "netshield-cas", "netshield-platform": "netshield-platform"}
"""Each Secret holding a private key, and the one workload allowed to mount it."""


# --- Kubernetes ----------------------------------------------------------------------------------
def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_every_kubernetes_manifest_validates_against_the_pinned_version() -> None:
    docs = k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "netshield-cas"),
        ("Service", "netshield-cas"),
        ("PersistentVolumeClaim", "netshield-cas-state"),
        ("ConfigMap", "netshield-policy"),
        ("ConfigMap", "orders-sidecar"),
        ("Deployment", "orders"),
        ("DaemonSet", "netshield-platform"),
        ("PersistentVolumeClaim", "netshield-cas-counter"),
    } <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    deployment = next(d for d in k8s_docs() if d["metadata"]["name"] == "orders")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["initContainers"][0]["securityContex"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"])
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
    ]


def k8s_reference_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Volumes, ConfigMaps, Secrets, claims and Service selectors that point at nothing."""
    defined = {(d["kind"], d["metadata"]["name"]) for d in docs} | OPERATOR_MADE
    problems = []
    for name, template in pod_specs(docs):
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        volumes |= {
            claim["metadata"]["name"]: {}
            for d in docs
            if d["metadata"]["name"] == name
            for claim in d["spec"].get("volumeClaimTemplates", [])
        }
        for container in spec.get("initContainers", []) + spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{name}/{container['name']}: no volume {mount['name']}")
        for vol in volumes.values():
            for key, kind, field in (
                ("configMap", "ConfigMap", "name"),
                ("secret", "Secret", "secretName"),
                ("persistentVolumeClaim", "PersistentVolumeClaim", "claimName"),
            ):
                if key in vol and (kind, vol[key][field]) not in defined:
                    problems.append(f"{name}: {kind} {vol[key][field]} is not defined")
    labels = [t["metadata"]["labels"] for _n, t in pod_specs(docs)]
    for doc in docs:
        if doc["kind"] in ("Service", "PodDisruptionBudget"):
            chosen = doc["spec"]["selector"]
            selector = chosen.get("matchLabels", chosen).items()
            if not any(selector <= pod.items() for pod in labels):
                problems.append(f"{doc['kind']} {doc['metadata']['name']} selects no pod")
    return problems


def test_kubernetes_references_resolve() -> None:
    docs = k8s_docs()
    assert k8s_reference_problems(docs) == []
    broken = copy.deepcopy(docs)
    for doc in broken:
        if doc["kind"] == "Service":
            doc["spec"]["selector"] = {"app": "nothing"}
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "orders-sidecar":
            doc["metadata"]["name"] = "renamed"
    problems = k8s_reference_problems(broken)
    assert "orders: ConfigMap orders-sidecar is not defined" in problems
    assert "Service orders selects no pod" in problems


def configmap(name: str) -> dict[str, str]:
    doc = next(d for d in k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
    return dict(doc["data"])


def test_the_kubernetes_policy_and_sidecar_configs_pass_netshields_checks() -> None:
    policy = parse_policy(configmap("netshield-policy")["policy.yaml"], source="netshield-policy")
    assert policy.services["orders"].allowed_callers == {"frontend"}
    config = parse_sidecar_config(
        configmap("orders-sidecar")["sidecar.yaml"], source="orders-sidecar", base_dir=Path("/")
    )
    assert config.transparent is not None and config.transparent.service_ports == (8080,)
    assert config.cas.url.startswith("https://netshield-cas.netshield.svc")


def capture_args_problem(args: list[str]) -> str | None:
    """Run `netshield iptables show` with an init step's `install` arguments (applies nothing)."""
    assert args[:2] == ["iptables", "install"], args
    proc = subprocess.run(
        netshield_cmd("iptables", "show", *args[2:]), capture_output=True, text=True, timeout=30
    )
    return None if proc.returncode == 0 else proc.stderr.strip()


def test_the_kubernetes_capture_init_container_installs_valid_rules_for_the_sidecar_uid() -> None:
    template = dict(pod_specs(k8s_docs()))["orders"]
    spec = template["spec"]
    (init,) = spec["initContainers"]
    assert "NET_ADMIN" in init["securityContext"]["capabilities"]["add"]
    assert capture_args_problem(init["args"]) is None
    assert capture_args_problem([*init["args"], "--inbound-ports", "x"]) is not None  # twin
    sidecar = next(c for c in spec["containers"] if c["name"] == "netshield-sidecar")
    uid = init["args"][init["args"].index("--proxy-uid") + 1]
    assert str(sidecar["securityContext"]["runAsUser"]) == uid
    app = next(c for c in spec["containers"] if c["name"] == "orders")
    assert str(app["securityContext"]["runAsUser"]) != uid  # the app's traffic is captured
    assert sidecar["readinessProbe"]["exec"]["command"][:2] == ["netshield", "wait"]


def custody_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Private keys mounted anywhere but their one workload, or writable; state and counter on
    one volume; sidecars that could reach a platform key."""
    problems = []
    for name, template in pod_specs(docs):
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for vol in volumes.values():
            secret = vol.get("secret", {}).get("secretName")
            if secret in KEY_SECRETS and KEY_SECRETS[secret] != name:
                problems.append(f"{name}: mounts key Secret {secret}")
        for container in spec.get("initContainers", []) + spec["containers"]:
            for mount in container.get("volumeMounts", []):
                secret = volumes[mount["name"]].get("secret", {}).get("secretName")
                if secret in KEY_SECRETS and not mount.get("readOnly"):
                    problems.append(f"{name}/{container['name']}: {secret} is writable")
    cas = dict(pod_specs(docs))["netshield-cas"]["spec"]
    (container,) = cas["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in cas["volumes"]
        if "persistentVolumeClaim" in v
    }

    def volume_of(path: str) -> str | None:
        best = max(
            (m for m in mounts if path.startswith(m + "/") or path == m), key=len, default=None
        )
        return None if best is None else claims.get(mounts[best], mounts[best])

    state, counter = volume_of(env["NETSHIELD_STATE"]), volume_of(env["NETSHIELD_COUNTER"])
    if state == counter:
        problems.append(f"netshield-cas: state and counter share the volume {state}")
    return problems


def test_kubernetes_keys_are_mounted_read_only_into_their_one_workload() -> None:
    docs = k8s_docs()
    assert custody_problems(docs) == []
    broken = copy.deepcopy(docs)
    for doc in broken:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "orders":
            spec = doc["spec"]["template"]["spec"]
            spec["volumes"].append({"name": "p", "secret": {"secretName": "netshield-platform"}})
            spec["containers"][0]["volumeMounts"].append(
                {"name": "p", "mountPath": "/p", "readOnly": True}
            )
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "netshield-cas":
            env = doc["spec"]["template"]["spec"]["containers"][0]["env"]
            for e in env:
                if e["name"] == "NETSHIELD_COUNTER":
                    e["value"] = "/var/lib/netshield/state/cas.counter"
    assert custody_problems(broken) == [
        "orders: mounts key Secret netshield-platform",
        "netshield-cas: state and counter share the volume netshield-cas-state",
    ]


def test_the_kubernetes_platform_daemonset_measures_sidecars_through_the_nodes_socket() -> None:
    docs = k8s_docs()
    pods = dict(pod_specs(docs))
    platform = pods["netshield-platform"]["spec"]
    assert platform["hostPID"] is True
    (container,) = platform["containers"]
    assert {"SYS_PTRACE"} <= set(container["securityContext"]["capabilities"]["add"])
    socket_dir = next(v for v in platform["volumes"] if v["name"] == "socket")["hostPath"]["path"]
    config_doc = configmap("netshield-platform-config")["platform.yaml"]
    config = parse_quoting_config(config_doc, source="netshield-platform-config")
    assert str(config.socket.parent) == socket_dir
    orders = pods["orders"]["spec"]
    sidecar = next(c for c in orders["containers"] if c["name"] == "netshield-sidecar")
    sidecar_volumes = {v["name"]: v for v in orders["volumes"]}
    mounted = {
        sidecar_volumes[m["name"]].get("hostPath", {}).get("path"): m
        for m in sidecar["volumeMounts"]
    }
    assert mounted[socket_dir].get("readOnly") is True
    assert not any("secret" in sidecar_volumes[m["name"]] for m in sidecar["volumeMounts"])
    sidecar_config = parse_sidecar_config(
        configmap("orders-sidecar")["sidecar.yaml"], source="orders-sidecar", base_dir=Path("/")
    )
    assert sidecar_config.platform.socket == config.socket and sidecar_config.workload is None


# --- Dockerfile ----------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_files_that_exist_and_takes_the_base_image_as_an_argument() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.12-slim")
    assert instructions[1] == ("FROM", "${BASE_IMAGE}")
    copies = [shlex.split(rest)[:-1] for word, rest in instructions if word == "COPY"]
    assert copies
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the build context"
    # the build context (the repo root) sends only what the .dockerignore allows back in
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for sources in copies:
        for source in sources:
            assert any(source == a or source.startswith(a + "/") for a in allowed), source
    entrypoint = DEPLOY / "docker" / "entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(entrypoint)]).returncode == 0


def test_dockerfile_runs_as_non_root_with_a_health_check_on_attestation() -> None:
    instructions = dockerfile_instructions()
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    (health,) = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    command = re.search(r"CMD (\[.*\])", health)
    assert command is not None
    argv = yaml.safe_load(command.group(1))
    assert argv[:4] == ["netshield", "wait", "--admin", "127.0.0.1:15000"]
    # the command is real: with no sidecar it fails in one line (healthy needs a 200 /readyz)
    proc = subprocess.run(netshield_cmd(*argv[1:]), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1


# --- compose -------------------------------------------------------------------------------------
def compose_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return doc


def compose_reference_problems(doc: dict[str, Any], base: Path) -> list[str]:
    """Bind mounts, build paths, services and sidecar configs the compose file names but lacks."""
    services: dict[str, Any] = doc["services"]
    problems = []
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = (base / build["context"]).resolve()
            if not (context / build["dockerfile"]).is_file():
                problems.append(f"{name}: no Dockerfile {build['dockerfile']} in {context}")
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")) and not (base / source).exists():
                problems.append(f"{name}: bind mount source {source} does not exist")
            elif not source.startswith((".", "/")) and source not in (doc.get("volumes") or {}):
                problems.append(f"{name}: volume {source} is not declared")
        mode = svc.get("network_mode", "")
        if mode.startswith("service:") and mode.removeprefix("service:") not in services:
            problems.append(f"{name}: network_mode names no service {mode}")
        for dep in svc.get("depends_on", {}):
            if dep not in services:
                problems.append(f"{name}: depends_on names no service {dep}")
    return problems


def test_compose_references_resolve() -> None:
    doc = compose_doc()
    assert compose_reference_problems(doc, COMPOSE_DIR) == []
    broken = copy.deepcopy(doc)
    broken["services"]["orders"]["volumes"] = ["./apps/nothing:/workload:ro"]
    broken["services"]["story"]["network_mode"] = "service:ghost"
    assert compose_reference_problems(broken, COMPOSE_DIR) == [
        "orders: bind mount source ./apps/nothing does not exist",
        "story: network_mode names no service service:ghost",
    ]


def test_compose_mesh_shape_each_sidecar_shares_its_apps_namespace_after_a_capture_step() -> None:
    services = compose_doc()["services"]
    assert {"setup", "cas", "legacy", "attacker", "story"} <= set(services)
    assert "version" not in compose_doc()  # obsolete in compose v2; v1 1.27+ reads it without
    for app in ("orders", "frontend", "intruder"):
        sidecar, init = services[f"{app}-sidecar"], services[f"{app}-init"]
        assert sidecar["network_mode"] == init["network_mode"] == f"service:{app}"
        assert init["cap_add"] == ["NET_ADMIN"] and "NET_ADMIN" not in sidecar.get("cap_add", [])
        assert sidecar["depends_on"][f"{app}-init"] == {
            "condition": "service_completed_successfully"
        }
        assert sidecar["depends_on"]["cas"] == {"condition": "service_healthy"}
        assert capture_args_problem(init["entrypoint"][1:] + init["command"]) is None
        uid = init["entrypoint"][init["entrypoint"].index("--proxy-uid") + 1]
        assert services[app]["user"].split(":")[0] != uid
        config_path = sidecar["environment"]["NETSHIELD_CONFIG"].replace(
            "/demo/sidecars", str(COMPOSE_DIR / "sidecars")
        )
        config = parse_sidecar_config(
            Path(config_path).read_text(), source=config_path, base_dir=Path("/")
        )
        assert config.service == app and config.transparent is not None
    assert services["story"]["depends_on"]["frontend-sidecar"] == {"condition": "service_healthy"}


def witness_volume_problems(doc: dict[str, Any]) -> list[str]:
    """Each compose sidecar keeps its rollback witness file on a named volume no other
    container mounts (the one-shot setup step, which prepares it, aside)."""
    services: dict[str, Any] = doc["services"]
    problems = []
    for app in ("orders", "frontend", "intruder"):
        name = f"{app}-sidecar"
        config_path = services[name]["environment"]["NETSHIELD_CONFIG"].replace(
            "/demo/sidecars", str(COMPOSE_DIR / "sidecars")
        )
        config = parse_sidecar_config(
            Path(config_path).read_text(), source=config_path, base_dir=Path("/")
        )
        if config.cas.witness_file is None:
            problems.append(f"{name}: no cas.witness_file")
            continue
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name].get("volumes", [])}
        volume = mounts.get(str(config.cas.witness_file.parent))
        if volume is None or volume.startswith((".", "/")):
            problems.append(f"{name}: {config.cas.witness_file} is not on a named volume")
            continue
        sharing = sorted(
            other
            for other, svc in services.items()
            if other not in (name, "setup")
            and any(v.split(":")[0] == volume for v in svc.get("volumes", []))
        )
        if sharing:
            problems.append(f"{name}: witness volume {volume} is mounted into {sharing} too")
    return problems


def test_every_compose_sidecar_keeps_its_witness_file_on_a_volume_of_its_own() -> None:
    doc = compose_doc()
    assert witness_volume_problems(doc) == []
    broken = copy.deepcopy(doc)
    broken["services"]["intruder-sidecar"]["volumes"].append(
        "orders-witness:/var/lib/netshield/other"
    )
    assert witness_volume_problems(broken) == [
        "orders-sidecar: witness volume orders-witness is mounted into ['intruder-sidecar'] too"
    ]
    setup = (COMPOSE_DIR / "setup.sh").read_text()
    assert 'WITNESSES="orders-witness frontend-witness intruder-witness"' in setup


def test_the_kubernetes_sidecar_keeps_its_witness_file_on_the_pods_own_volume() -> None:
    config = parse_sidecar_config(
        configmap("orders-sidecar")["sidecar.yaml"], source="orders-sidecar", base_dir=Path("/")
    )
    assert config.cas.witness_file is not None
    ((_, template),) = [(n, s) for n, s in pod_specs(k8s_docs()) if n == "orders"]
    spec = template["spec"]
    sidecar = next(c for c in spec["containers"] if c["name"] == "netshield-sidecar")
    mount = next(
        m for m in sidecar["volumeMounts"] if m["mountPath"] == str(config.cas.witness_file.parent)
    )
    assert not mount.get("readOnly")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume == {"name": mount["name"], "emptyDir": {}}
    others = [c for c in spec["containers"] if c is not sidecar]
    assert all(m["name"] != mount["name"] for c in others for m in c.get("volumeMounts", []))
