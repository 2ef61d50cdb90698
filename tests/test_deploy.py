"""The deployment files parse and hang together: deploy/docker-compose.yml and deploy/k8s/*.yaml.

No Docker engine or cluster here: the files are read with pyyaml and checked for what
running the stack needs (services, ports, mounts, environment, cross-references).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "k8s"
NAMESPACED = {"Secret", "Service", "StatefulSet", "Deployment", "Job", "PersistentVolumeClaim", "FlinkDeployment"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file__"] = path.name
                docs.append(doc)
    return docs


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _image_major(image: str) -> int:
    return int(re.search(r":(\d+)", image).group(1))  # type: ignore[union-attr]


# --- docker compose ------------------------------------------------------------------------------


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "clickhouse", "jobmanager", "taskmanager", "grafana", "vigie-worker", "flink-job"} <= set(services)
    assert not any("zookeeper" in name or "zookeeper" in str(s.get("image")) for name, s in services.items())

    kafka = _env(services["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].endswith("@kafka:9093")
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert _image_major(services["kafka"]["image"]) >= 4

    clickhouse = services["clickhouse"]
    assert _image_major(clickhouse["image"]) >= 24
    assert {"9000:9000", "8123:8123"} <= set(clickhouse["ports"])
    assert any(v.endswith(":/var/lib/clickhouse") for v in clickhouse["volumes"])
    assert _env(clickhouse)["CLICKHOUSE_DB"] == "vigie"

    jm, tm = services["jobmanager"], services["taskmanager"]
    assert (jm["command"], tm["command"]) == ("jobmanager", "taskmanager")
    assert "8081:8081" in jm["ports"]
    assert "jobmanager.rpc.address: jobmanager" in _env(jm)["FLINK_PROPERTIES"]
    assert "taskmanager.numberOfTaskSlots" in _env(tm)["FLINK_PROPERTIES"]
    # PyFlink runs Vigie's code on the task managers: one image for the cluster and the workers.
    assert jm["image"] == tm["image"] == services["vigie-worker"]["image"] == services["flink-job"]["image"]
    assert services["flink-job"]["command"][:3] == ["vigie", "flink", "run"]


def test_compose_worker_and_grafana_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["vigie-worker"]
    command = worker["command"]
    assert command[:3] == ["vigie", "faust", "worker"]
    assert command[command.index("--bootstrap") + 1] == "kafka:9092"
    sink = command[command.index("--sink") + 1]
    assert re.fullmatch(
        r"clickhouse://\$\{CLICKHOUSE_USER:-\w+\}:\$\{CLICKHOUSE_PASSWORD:-[\w-]+\}@clickhouse:9000/vigie", sink
    )
    # The worker's credentials default to the server's.
    ch_env = _env(services["clickhouse"])
    assert ch_env["CLICKHOUSE_USER"] in sink and ch_env["CLICKHOUSE_PASSWORD"] in sink

    grafana = services["grafana"]
    env = _env(grafana)
    assert "grafana-clickhouse-datasource" in env["GF_PLUGINS_PREINSTALL"]
    assert _image_major(grafana["image"]) >= 10
    assert "3000:3000" in grafana["ports"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    for target in ("/etc/grafana/provisioning", "/var/lib/grafana/dashboards/vigie"):
        assert (DEPLOY / mounts[target]).is_dir(), target
    assert list((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    # Every ${VAR} the provisioning files read is in Grafana's environment.
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yaml"):
        for var in re.findall(r"\$\{(\w+)\}", path.read_text()):
            assert var in env, f"{path.name} reads ${{{var}}}"


def test_compose_references_resolve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set(compose.get("volumes", {}))
    for name, service in services.items():
        assert service.get("image"), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        depends = service.get("depends_on", {})
        for dependency in depends:
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if isinstance(depends, dict) and depends[dependency].get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} needs a healthcheck"


# --- kubernetes ----------------------------------------------------------------------------------


def _pod_specs(manifests: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) for Deployments, StatefulSets and Jobs."""
    return [(m, m["spec"]["template"]["spec"]) for m in manifests if m["kind"] in ("Deployment", "StatefulSet", "Job")]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert kustomization["namespace"] == "vigie"


def test_manifests_cover_the_stack(manifests: list[dict[str, Any]]) -> None:
    by_kind: dict[str, set[str]] = {}
    for m in manifests:
        by_kind.setdefault(m["kind"], set()).add(m["metadata"]["name"])
        if m["kind"] in NAMESPACED:
            assert m["metadata"]["namespace"] == "vigie", m["metadata"]["name"]
    assert {"kafka", "clickhouse"} <= by_kind["StatefulSet"]
    assert {"grafana", "vigie-worker"} <= by_kind["Deployment"]
    assert {"kafka", "clickhouse", "grafana"} <= by_kind["Service"]
    assert "grafana-provision" in by_kind["Job"]
    assert by_kind["Namespace"] == {"vigie"}
    assert "vigie-scoring" in by_kind["FlinkDeployment"]


def test_flink_deployment(manifests: list[dict[str, Any]]) -> None:
    (flink,) = [m for m in manifests if m["kind"] == "FlinkDeployment"]
    assert flink["apiVersion"] == "flink.apache.org/v1beta1"
    spec = flink["spec"]
    assert re.fullmatch(r"v\d+_\d+", spec["flinkVersion"])
    assert spec["image"]
    assert spec["jobManager"]["resource"]["memory"] and spec["taskManager"]["resource"]["cpu"]
    job = spec["job"]
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    assert job["jarURI"].startswith("local:///opt/flink/opt/flink-python")
    assert "-pym" in job["args"] and "run" in job["args"]
    assert job["args"][job["args"].index("--bootstrap") + 1] == "kafka:9092"
    assert job["upgradeMode"] in ("stateless", "savepoint", "last-state")
    assert "execution.checkpointing.interval" in spec["flinkConfiguration"]


def test_services_select_pods_and_ports(manifests: list[dict[str, Any]]) -> None:
    pods = _pod_specs(manifests)
    for service in (m for m in manifests if m["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matches = [
            spec
            for workload, spec in pods
            if selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matches, f"service {service['metadata']['name']} selects no pod"
        container_ports = {
            p["containerPort"] for spec in matches for c in spec["containers"] for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["port"] in container_ports, (service["metadata"]["name"], port)
    for workload in (m for m in manifests if m["kind"] in ("Deployment", "StatefulSet")):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        if workload["kind"] == "StatefulSet":
            services = {m["metadata"]["name"] for m in manifests if m["kind"] == "Service"}
            assert workload["spec"]["serviceName"] in services


def test_volumes_secrets_and_variables_resolve(manifests: list[dict[str, Any]]) -> None:
    (secret,) = [m for m in manifests if m["kind"] == "Secret"]
    secret_keys = set(secret["stringData"])
    claims = {m["metadata"]["name"] for m in manifests if m["kind"] == "PersistentVolumeClaim"}
    for workload, spec in _pod_specs(manifests):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in spec["containers"]:
            name = f"{workload['metadata']['name']}/{container['name']}"
            assert container["image"], name
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates, f"{name}: {mount['name']}"
            env_names = set()
            for var in container.get("env", []):
                env_names.add(var["name"])
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret_keys, (name, ref)
            # Kubernetes expands $(VAR) in commands from the container's env only.
            for used in re.findall(r"\$\((\w+)\)", " ".join(container.get("command", []) + container.get("args", []))):
                assert used in env_names, f"{name}: $({used}) is not in its env"


def test_k8s_images_and_wiring(manifests: list[dict[str, Any]]) -> None:
    containers = {workload["metadata"]["name"]: spec["containers"][0] for workload, spec in _pod_specs(manifests)}
    kafka_env = {e["name"]: e.get("value") for e in containers["kafka"]["env"]}
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert _image_major(containers["clickhouse"]["image"]) >= 24
    grafana_env = {e["name"]: e.get("value") for e in containers["grafana"]["env"]}
    assert "grafana-clickhouse-datasource" in grafana_env["GF_PLUGINS_PREINSTALL"]
    provision = containers["grafana-provision"]["command"]
    assert provision[:3] == ["vigie", "grafana", "provision"]
    assert provision[provision.index("--url") + 1] == "http://grafana:3000"
    worker = containers["vigie-worker"]["command"]
    assert worker[:3] == ["vigie", "faust", "worker"]
    assert worker[worker.index("--bootstrap") + 1] == "kafka:9092"
