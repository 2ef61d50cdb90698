"""The deployment files parse and hang together: deploy/docker-compose.yml and deploy/k8s/*.yaml.

No Docker engine or cluster here: the files are read with pyyaml and checked for what
running the stack needs (services, ports, mounts, environment, cross-references).
"""

from __future__ import annotations

import fnmatch
import re
import sys
from dataclasses import dataclass
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
    assert services["flink-job"]["command"][:2] == ["flink", "run"]  # submitted to the session cluster


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
    # The job sets its parallelism on its environment, which wins over the operator's: keep them equal.
    assert "--cluster" in job["args"]
    assert int(job["args"][job["args"].index("--parallelism") + 1]) == job["parallelism"]
    assert spec["flinkConfiguration"]["python.client.executable"] == "python3"
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


# --- the vigie image (deploy/Dockerfile) ---------------------------------------------------------

ROOT = DEPLOY.parent
DOCKERFILE = DEPLOY / "Dockerfile"
VIGIE_TAG = "vigie:0.1.0"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def _instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions: comments dropped, continuation lines joined."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            instructions.append(Instruction(keyword.upper(), " ".join(args.split())))
            pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return _instructions(DOCKERFILE.read_text())


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    return dict(i.args.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.args)


def _pin(name: str) -> str:
    """The version constraints.txt pins ``name`` to."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_image_is_flink_of_the_pinned_version(dockerfile: list[Instruction], manifests: list[dict[str, Any]]) -> None:
    args = _arg_defaults(dockerfile)
    flink_image = args["FLINK_IMAGE"]
    version = re.fullmatch(r"flink:(\d+\.\d+\.\d+)-scala_2\.12-java17", flink_image)
    assert version, flink_image
    # PyFlink on the task managers must match the cluster: the pip pin and the image agree.
    assert version.group(1) == _pin("apache-flink")
    (flink,) = [m for m in manifests if m["kind"] == "FlinkDeployment"]
    assert flink["spec"]["job"]["jarURI"] == f"local:///opt/flink/opt/flink-python-{version.group(1)}.jar"
    assert args["PYTHON_VERSION"] == "3.11"
    assert 'python_requires=">=3.11,<3.12"' in (ROOT / "setup.py").read_text()
    final = _stages(dockerfile)[-1]
    assert final[0].args == "${FLINK_IMAGE}"


def test_image_runs_vigie_as_a_non_root_user_through_flinks_entrypoint(dockerfile: list[Instruction]) -> None:
    final = _stages(dockerfile)[-1]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    # Flink's entrypoint starts `jobmanager` / `taskmanager` and runs any other command as given.
    (entrypoint,) = [i.args for i in final if i.keyword == "ENTRYPOINT"]
    assert entrypoint == '["/docker-entrypoint.sh"]'
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    path = re.search(r"PATH=(\S+)", env)
    assert path and path.group(1).split(":")[0] == "/opt/vigie/.venv/bin" and path.group(1).endswith("$PATH")
    # The venv is copied from the build stage, where `vigie` is installed into it and run once.
    assert any(i.keyword == "COPY" and i.args.endswith("/opt/vigie /opt/vigie") for i in final)
    build = "\n".join(i.args for i in _stages(dockerfile)[1] if i.keyword == "RUN")
    assert "-m venv /opt/vigie/.venv" in build and ".venv/bin/vigie --help" in build
    assert 'console_scripts": ["vigie=vigie.streams.cli:main"]' in (ROOT / "setup.py").read_text()
    # Compose's Flink settings run Python UDFs with `python3`: a venv has one on PATH.
    compose_text = (DEPLOY / "docker-compose.yml").read_text()
    assert "python.executable: python3" in compose_text


def test_image_installs_like_the_makefile(dockerfile: list[Instruction]) -> None:
    runs = [i.args for i in dockerfile if i.keyword == "RUN"]
    install = next(r for r in runs if "--no-build-isolation" in r)
    assert "-c constraints.txt --no-build-isolation -e ." in install
    assert "pip check" in install
    makefile = (ROOT / "Makefile").read_text()
    for spec in re.findall(r'"((?:pip|setuptools|cython)[<>=!][^"]*)"', makefile):
        assert f'"{spec}"' in install, f"the Makefile's {spec} is not what the image installs"
    # The build tools pinned in the Makefile are also in the image.
    assert '"pip>=24"' in install and '"cython>=3.3,<3.4"' in install


def test_image_copies_what_the_editable_install_and_the_job_need(dockerfile: list[Instruction]) -> None:
    copied: list[str] = []
    for instruction in dockerfile:
        if instruction.keyword != "COPY" or "--from=" in instruction.args:
            continue
        *sources, _ = instruction.args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            copied.append(source.rstrip("/"))
    setup = (ROOT / "setup.py").read_text()
    subpackages = re.search(r"SUBPACKAGES = \(([^)]*)\)", setup)
    assert subpackages
    for name in [*re.findall(r'"(\w+)"', subpackages.group(1)), "vigie"]:
        assert name in copied, f"{name}/ is part of the distribution but not copied"
    for name in ("setup.py", "pyproject.toml", "constraints.txt", "deploy/pom.xml", "deploy/kafka/fetch-jars.sh"):
        assert name in copied, name
    # The Flink job reads its Kafka connector from deploy/jars/flink next to its sources.
    from vigie.streams import flink_job

    assert flink_job.FLINK_JARS_DIR.relative_to(flink_job.REPO_ROOT) == Path("deploy/jars/flink")
    assert any(i.keyword == "RUN" and "fetch-jars.sh flink" in i.args for i in dockerfile)
    # Nothing copied is excluded from the build context.
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in copied:
        for pattern in ignored:
            assert not fnmatch.fnmatch(source, pattern.removeprefix("**/")), f"{source} is excluded by {pattern}"


def test_compose_and_k8s_use_the_image_tag_and_build_it(
    compose: dict[str, Any], manifests: list[dict[str, Any]]
) -> None:
    version = re.search(r'version="([^"]+)"', (ROOT / "setup.py").read_text())
    assert version and f"vigie:{version.group(1)}" == VIGIE_TAG
    vigie_services = {name: s for name, s in compose["services"].items() if VIGIE_TAG in str(s.get("image"))}
    assert {"jobmanager", "taskmanager", "flink-job", "vigie-worker"} <= set(vigie_services)
    for name, service in vigie_services.items():
        assert service["image"] == "${VIGIE_IMAGE:-vigie:0.1.0}", name
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT, name
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
    images = [m["spec"]["image"] for m in manifests if m["kind"] == "FlinkDeployment"]
    images += [c["image"] for _, spec in _pod_specs(manifests) for c in spec["containers"] if "vigie" in c["image"]]
    assert images and set(images) == {VIGIE_TAG}


def test_compose_volumes_are_writable_by_the_image_user(compose: dict[str, Any], dockerfile: list[Instruction]) -> None:
    final = _stages(dockerfile)[-1]
    user = [i.args for i in final if i.keyword == "USER"][-1]
    owned = " ".join(i.args for i in final if i.keyword == "RUN" and f"chown {user}:{user}" in i.args)
    for name, service in compose["services"].items():
        if VIGIE_TAG not in str(service.get("image")):
            continue
        for volume in service.get("volumes", []):
            target = volume.split(":")[1]
            assert target in owned, f"{name}: {target} is not created for {user} in the image"


# `flink run` options of Flink 2.2 (`flink run --help`; -j/--jarfile is parsed though not listed there).
FLINK_RUN_OPTIONS_WITH_VALUE = {
    "-c": "--class", "-C": "--classpath", "-cm": "--claimMode", "-p": "--parallelism", "-py": "--python",
    "-pyarch": "--pyArchives", "-pyclientexec": "--pyClientExecutable", "-pyexec": "--pyExecutable",
    "-pyfs": "--pyFiles", "-pym": "--pyModule", "-pypath": "--pyPythonPath", "-pyreq": "--pyRequirements",
    "-rm": "--restoreMode", "-s": "--fromSavepoint", "-t": "--target", "-e": "--executor", "-m": "--jobmanager",
    "-z": "--zookeeperNamespace", "-yid": "--yarnapplicationId", "-j": "--jarfile",
}  # fmt: skip
FLINK_RUN_FLAGS = {"-d": "--detached", "-n": "--allowNonRestoredState", "-sae": "--shutdownOnAttachedExit"}
PYTHON_MODULES_AS_VIGIE = {"vigie.streams.flink_cli": ["flink"]}
"""`python -m MODULE ...` programs (Flink's PythonDriver) and the `vigie` command group they are."""


@dataclass(frozen=True)
class FlinkSubmission:
    """A `flink run` (or PythonDriver) argument list: its options (short names) and the program's arguments."""

    options: dict[str, str]
    program: list[str]


def _flink_submission(argv: list[str]) -> FlinkSubmission:
    """Parse like Flink's CLI: options up to the first word that is not one, the rest for the program."""
    long_names = {long: short for short, long in (FLINK_RUN_OPTIONS_WITH_VALUE | FLINK_RUN_FLAGS).items()}
    options: dict[str, str] = {}
    words = list(argv)
    while words and words[0].startswith("-"):
        word = long_names.get(words[0], words.pop(0))
        if word in FLINK_RUN_OPTIONS_WITH_VALUE:
            assert words and not words[0].startswith("-"), f"flink run {word} needs a value: {argv}"
            options[word] = words.pop(0)
        elif word in FLINK_RUN_FLAGS:
            options[word] = ""
        elif word.startswith("-D") and "=" in word:
            options[word.split("=", 1)[0]] = word.split("=", 1)[1]
        else:
            raise AssertionError(f"flink run has no option {word}: {argv}")
    return FlinkSubmission(options, words)


def _compose_defaults(word: str) -> str:
    """A word as compose runs it with the environment unset: ``${VAR:-default}`` -> ``default``."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", word)


def _python_programs(compose: dict[str, Any], manifests: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(where, vigie argv) of the Python programs Flink runs: `flink run -pym` in compose, PythonDriver in k8s."""
    programs: list[tuple[str, FlinkSubmission]] = []
    for name, service in compose["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[:2] == ["flink", "run"]:
            programs.append((f"compose {name}", _flink_submission(command[2:])))
    for flink in (m for m in manifests if m["kind"] == "FlinkDeployment"):
        programs.append((f"k8s {flink['metadata']['name']}", _flink_submission(flink["spec"]["job"]["args"])))
    commands: list[tuple[str, list[str]]] = []
    for where, submission in programs:
        module = submission.options.get("-pym")
        assert module in PYTHON_MODULES_AS_VIGIE, f"{where}: runs {module or submission.options}"
        commands.append((where, [*PYTHON_MODULES_AS_VIGIE[module], *submission.program]))
    return commands


def _cli_commands(compose: dict[str, Any], manifests: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    commands: list[tuple[str, list[str]]] = []
    for name, service in compose["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[:1] == ["vigie"]:
            commands.append((f"compose {name}", command[1:]))
    for workload, spec in _pod_specs(manifests):
        for container in spec["containers"]:
            command = container.get("command", [])
            if command[:1] == ["vigie"]:
                commands.append((f"k8s {workload['metadata']['name']}", command[1:]))
    return commands + _python_programs(compose, manifests)


def _vigie_command(argv: list[str]) -> tuple[Any, list[str]]:
    """The click command ``vigie ARGV`` names and the words left for it."""
    import typer.main

    from vigie.streams.cli import app

    command: Any = typer.main.get_command(app)
    words = list(argv)
    # Typer ships its own click: groups are recognised by their subcommands.
    while hasattr(command, "commands") and words and words[0] in command.commands:
        command = command.commands[words.pop(0)]
    assert not hasattr(command, "commands"), f"{argv} names no command"
    return command, words


def test_commands_name_real_cli_options(compose: dict[str, Any], manifests: list[dict[str, Any]]) -> None:
    """Every `vigie ...` command the deployment runs (also through Flink's PythonDriver) names a subcommand
    and options the CLI has, and the CLI's parser accepts its values."""
    commands = _cli_commands(compose, manifests)
    assert len(commands) >= 5
    assert {where for where, _ in commands} >= {"compose flink-job", "k8s vigie-scoring"}
    for where, argv in commands:
        command, words = _vigie_command(argv)
        options = {opt for param in command.params for opt in param.opts}
        assert "--help" not in words
        for word in words:
            if word.startswith("-"):
                assert word in options, f"{where}: vigie {' '.join(argv[:2])} has no option {word}"
        command.make_context(f"vigie {' '.join(argv[:2])}", [_compose_defaults(w) for w in words])  # raises if bad


def test_python_driver_modules_are_the_vigie_commands_they_stand_for() -> None:
    """`python -m vigie.streams.flink_cli X` (what Flink's PythonDriver runs) is `vigie flink X`."""
    import importlib.util

    import typer.main

    from vigie.streams.cli import app

    root = typer.main.get_command(app)
    for module, group in PYTHON_MODULES_AS_VIGIE.items():
        spec = importlib.util.find_spec(module)  # in the installed package, as on the cluster's workers
        assert spec is not None and spec.origin is not None, module
        source = Path(spec.origin).read_text()
        assert 'if __name__ == "__main__":' in source, f"python -m {module} would do nothing"
        app_name = re.search(r"^(\w+)\(\)$", source.split('if __name__ == "__main__":')[1].strip(), re.M)
        assert app_name is not None
        mounted: Any = root
        for word in group:
            mounted = mounted.commands[word]
        module_app = typer.main.get_command(getattr(importlib.import_module(module), app_name.group(1)))
        assert set(mounted.commands) == set(module_app.commands), module


def test_compose_flink_job_submits_to_the_session_cluster(
    compose: dict[str, Any], dockerfile: list[Instruction]
) -> None:
    """The flink-job service is a `flink run` client of the compose session cluster (jobmanager +
    taskmanager), as Flink runs Python jobs; the job leaves the cluster its own configuration."""
    services = compose["services"]
    job, jm, tm = services["flink-job"], services["jobmanager"], services["taskmanager"]
    command = job["command"]
    assert command[:2] == ["flink", "run"], command
    submission = _flink_submission(command[2:])
    options = submission.options

    # The same Flink configuration as the cluster's (the image's entrypoint writes FLINK_PROPERTIES for `flink` too).
    properties = _env(jm)["FLINK_PROPERTIES"]
    assert _env(job)["FLINK_PROPERTIES"] == properties == _env(tm)["FLINK_PROPERTIES"]
    conf = dict(line.split(":", 1) for line in properties.strip().splitlines())
    conf = {k.strip(): v.strip() for k, v in conf.items()}
    # To the job manager's REST endpoint, once it is healthy (a task manager registered).
    host, port = options["-m"].rsplit(":", 1)
    assert host in ("jobmanager", jm.get("hostname")) and conf["rest.address"] == host
    assert port == conf.get("rest.port", "8081") and f"{port}:{port}" in jm["ports"]
    assert job["depends_on"]["jobmanager"]["condition"] == "service_healthy"
    assert "taskmanager" in job["depends_on"]
    probe = " ".join(jm["healthcheck"]["test"])
    assert f"localhost:{port}/overview" in probe and "slots-total" in probe
    assert "-d" not in options  # attached: the client loads ClickHouse from the job's outputs and ends with it

    # A Python module of the installed package, as `vigie flink run --cluster`.
    assert "-py" not in options and options["-pym"] == "vigie.streams.flink_cli"
    program = submission.program
    assert program[:1] == ["run"] and "--cluster" in program
    # The Kafka connector where the image's build fetched it (deploy/Dockerfile: fetch-jars.sh flink under
    # VIGIE_HOME), at the version deploy/pom.xml pins.
    env = " ".join(i.args for i in _stages(dockerfile)[-1] if i.keyword == "ENV")
    home = re.search(r"VIGIE_HOME=(\S+)", env)
    assert home is not None
    version = re.search(r"<flink.kafka.connector.version>([^<]+)<", (DEPLOY / "pom.xml").read_text())
    assert version is not None
    from vigie.streams import flink_job

    jars_dir = flink_job.FLINK_JARS_DIR.relative_to(flink_job.REPO_ROOT)
    assert options["-j"] == f"{home.group(1)}/{jars_dir}/flink-sql-connector-kafka-{version.group(1)}.jar"

    # What the job's own options say matches the cluster: parallelism within its slots, checkpoints
    # where the cluster writes them (--from-checkpoint latest looks there), Python on the PATH.
    command_obj, words = _vigie_command(["flink", *program])
    params = command_obj.make_context("vigie flink run", [_compose_defaults(w) for w in words]).params
    assert params["cluster"] is True and params["bootstrap"] == "kafka:9092"
    slots = int(conf["taskmanager.numberOfTaskSlots"]) * int(tm.get("deploy", {}).get("replicas", 1))
    assert params["parallelism"] == int(conf["parallelism.default"]) <= slots
    checkpoints = conf["execution.checkpointing.dir"].removeprefix("file://")
    assert str(params["checkpoint_dir"]) == checkpoints
    for service in (job, jm, tm):
        assert any(v.split(":")[1] == checkpoints for v in service["volumes"])
    assert "--state-backend" not in program  # the cluster's state.backend.type applies
    # A restarted flink-job container resumes from the newest checkpoint in that storage (fresh the first time).
    assert params["from_checkpoint"] == "auto"
    assert conf["python.executable"] == conf["python.client.executable"] == "python3"
    # `flink` is Flink's CLI on the image's PATH: nothing in the virtual environment (first on PATH) shadows it.
    assert not (Path(sys.executable).parent / "flink").exists()


def test_flink_operator_runs_a_module_with_a_main(manifests: list[dict[str, Any]]) -> None:
    (flink,) = [m for m in manifests if m["kind"] == "FlinkDeployment"]
    args = flink["spec"]["job"]["args"]
    module = args[args.index("-pym") + 1]
    assert module.startswith("vigie.streams.")
    source = ROOT / "streams" / f"{module.rsplit('.', 1)[1]}.py"
    assert source.is_file(), module
    assert 'if __name__ == "__main__":' in source.read_text(), f"python -m {module} would do nothing"
    import typer.main

    from vigie.streams.flink_cli import flink_app

    subcommand = args[args.index("-pym") + 2]
    assert subcommand in getattr(typer.main.get_command(flink_app), "commands", {})


def test_the_k8s_worker_takes_its_store_from_the_secret_not_the_command_line(manifests: list[dict[str, Any]]) -> None:
    """`ps` on a node must not show the ClickHouse password: the worker reads VIGIE_CLICKHOUSE_URL itself."""
    import typer

    from vigie.streams.faust_app import faust_app_cli

    containers = {workload["metadata"]["name"]: spec["containers"][0] for workload, spec in _pod_specs(manifests)}
    worker = containers["vigie-worker"]
    assert "--sink" not in worker["command"] and not any("VIGIE_CLICKHOUSE_URL" in a for a in worker["command"])
    env = {e["name"]: e for e in worker["env"]}
    assert env["VIGIE_CLICKHOUSE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "clickhouse-url"
    options = {p.name: p for p in typer.main.get_command(faust_app_cli).commands["worker"].params}  # type: ignore[attr-defined]
    assert options["sink"].envvar == "VIGIE_CLICKHOUSE_URL" and options["bootstrap"].envvar == "VIGIE_KAFKA_BOOTSTRAP"
