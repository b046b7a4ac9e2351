"""Static checks of the deployment files: infra/docker, infra/compose.yaml, infra/k8s, infra/prometheus, infra/grafana.

Nothing here builds an image or needs a cluster: the files must parse, every image built from
this repository must have its Dockerfile, every ``EDGELAKE_*`` variable must be a real setting
(with a value the settings accept), every ``edgelake`` command line must parse against the real
CLI, the Kubernetes objects must validate against the Kubernetes API's JSON schemas
(kubernetes-validate ships them, so this runs offline), and every metric a dashboard, rule or
autoscaler reads must be one the code exports. Each check is a function returning problems, and
the last tests feed it deliberately broken copies to show that it catches them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgelake.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKER = INFRA / "docker"
COMPOSE = INFRA / "compose.yaml"
K8S = INFRA / "k8s"
KUBERNETES_VERSION = "1.32"  # the schemas validated against; kubernetes-validate ships 1.x up to its own version
IMAGES = ("api", "ingest", "trainer", "edge")  # edgelake/<name> is built from infra/docker/<name>.Dockerfile
SETTINGS = {f"EDGELAKE_{name.upper()}" for name in Settings.model_fields}
KUSTOMIZATION = "kustomization.yaml"


# --- loading -------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_files() -> list[Path]:
    return sorted(path for path in K8S.rglob("*.yaml") if path.name != KUSTOMIZATION)


def k8s_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in k8s_files() for doc in k8s_documents(path)]


def pod_specs(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod spec of a workload, however deeply its kind nests it."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        yield spec
    elif doc.get("kind") == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif "template" in spec:
        yield spec["template"]["spec"]


def containers(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for pod in pod_specs(doc):
        yield from pod.get("initContainers", [])
        yield from pod.get("containers", [])


def dockerfile(image: str) -> Path:
    return DOCKER / f"{image}.Dockerfile"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def exec_form(arguments: str) -> list[str]:
    """A Dockerfile exec-form (JSON) list, or the shell form split like a shell would."""
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "ENV":
            for token in shlex.split(arguments):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def resolve_compose_defaults(value: str) -> str:
    """``${VAR:-default}`` and ``${VAR}`` as compose would resolve them with nothing set."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # the `- NAME=value` form
        environment = dict(item.partition("=")[::2] for item in environment)
    return {name: resolve_compose_defaults(str(value)) for name, value in environment.items()}


def image_name(image: str) -> str:
    """``edgelake/api:0.1.0`` -> ``edgelake/api``."""
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


# --- checks: each returns a list of problems -----------------------------------------------


def env_problems(env: Mapping[str, str], where: str) -> list[str]:
    """Every EDGELAKE_* name must be a Settings field, and the values together must validate."""
    problems = [f"{where}: {name} is not a setting (edgelake/settings.py)" for name in env if name.startswith("EDGELAKE_") and name not in SETTINGS]
    if problems:
        return problems
    ours = {name: value for name, value in env.items() if name.startswith("EDGELAKE_")}
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("EDGELAKE_")}
    try:
        os.environ.update(ours)
        Settings(_env_file=None)
    except ValueError as error:
        problems.append(f"{where}: settings refuse these values: {error}")
    finally:
        for name in ours:
            os.environ.pop(name, None)
        os.environ.update(saved)
    return problems


def compose_problems(compose: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    services: dict[str, Any] = compose.get("services") or {}
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        image = service.get("image", "")
        build = service.get("build")
        if not image and not build:
            problems.append(f"{name}: neither image nor build")
        if image.startswith("edgelake/"):
            short = image_name(image).removeprefix("edgelake/")
            if not build:
                problems.append(f"{name}: {image} is built from this repository but the service has no build (compose would pull it)")
            elif (INFRA / build["context"] / build["dockerfile"]).resolve() != dockerfile(short).resolve():
                problems.append(f"{name}: {image} must build from infra/docker/{short}.Dockerfile, not {build['dockerfile']}")
        if build:
            path = INFRA / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            if not path.is_file():
                problems.append(f"{name}: Dockerfile {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} does not exist")
        elif ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.append(f"{name}: image {image!r} is not pinned by tag")
        for dependency in service.get("depends_on") or []:
            if dependency not in services:
                problems.append(f"{name}: depends on unknown service {dependency}")
        network_mode = service.get("network_mode", "")
        if network_mode.startswith("service:") and network_mode.removeprefix("service:") not in services:
            problems.append(f"{name}: network_mode names unknown service {network_mode}")
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                if not (INFRA / source).exists():
                    problems.append(f"{name}: bind mount source {source} does not exist")
            elif source and source not in declared_volumes:
                problems.append(f"{name}: volume {source} is not declared under volumes")
        problems += env_problems(compose_env(service), f"compose service {name}")
    return problems


def k8s_schema_problems(docs: list[dict[str, Any]], where: str) -> list[str]:
    """Each object against the Kubernetes API's schema, strictly: an unknown field is an error too."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the dev extra) ships the schemas")
    problems: list[str] = []
    for doc in docs:
        label = f"{where}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{label}: {error.message}")
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(part) for part in error.absolute_path)
            problems.append(f"{label}: {path}: {error.message}")
    return problems


def k8s_env_problems(docs: list[dict[str, Any]], where: str) -> list[str]:
    problems: list[str] = []
    configmaps = {doc["metadata"]["name"]: doc.get("data") or {} for doc in docs if doc.get("kind") == "ConfigMap"}
    if not configmaps:  # a single file checked alone: the base's shared ConfigMap
        configmaps = {doc["metadata"]["name"]: doc.get("data") or {} for doc in k8s_documents(K8S / "configmap.yaml")}
    for name, data in configmaps.items():
        problems += env_problems(data, f"{where}: ConfigMap {name}")
    for doc in docs:
        for container in containers(doc):
            env = {}
            for source in container.get("envFrom", []):
                env.update(configmaps.get((source.get("configMapRef") or {}).get("name"), {}))
            env.update({item["name"]: str(item.get("value", "")) for item in container.get("env", [])})
            problems += env_problems(env, f"{where}: {doc['kind']}/{doc['metadata']['name']} container {container['name']}")
    return problems


def k8s_image_problems(docs: list[dict[str, Any]], where: str) -> list[str]:
    problems: list[str] = []
    for doc in docs:
        for container in containers(doc):
            image = container["image"]
            if image.startswith("edgelake/"):
                short = image_name(image).removeprefix("edgelake/")
                if not dockerfile(short).is_file():
                    problems.append(f"{where}: {doc['kind']}/{doc['metadata']['name']}: no Dockerfile for {image} (infra/docker/{short}.Dockerfile)")
            elif ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{where}: {doc['kind']}/{doc['metadata']['name']}: image {image!r} is not pinned by tag")
    return problems


def k8s_security_problems(docs: list[dict[str, Any]], where: str) -> list[str]:
    """Non-root, no privilege escalation, read-only root, no capabilities: what the namespace's `restricted` level enforces."""
    problems: list[str] = []
    for doc in docs:
        for pod in pod_specs(doc):
            label = f"{where}: {doc['kind']}/{doc['metadata']['name']}"
            if not (pod.get("securityContext") or {}).get("runAsNonRoot"):
                problems.append(f"{label}: pod securityContext.runAsNonRoot is not true")
            if pod.get("automountServiceAccountToken") is not False:
                problems.append(f"{label}: automountServiceAccountToken is not false")
            for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                context = container.get("securityContext") or {}
                if context.get("allowPrivilegeEscalation") is not False or context.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{label} container {container['name']}: needs allowPrivilegeEscalation false and readOnlyRootFilesystem true")
                if (context.get("capabilities") or {}).get("drop") != ["ALL"]:
                    problems.append(f"{label} container {container['name']}: capabilities must drop ALL")
    return problems


def cli_problems(argv: list[str], where: str) -> list[str]:
    """``edgelake ARGV`` parsed by the real CLI (options, choices, ranges), without running it."""
    import typer.main

    try:  # recent typer releases carry their own copy of click
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError

    from edgelake.cli import app

    command: Any = typer.main.get_command(app)
    name, args, context = "edgelake", list(argv), None
    try:
        while True:
            context = command.make_context(name, args, parent=context)
            if not hasattr(command, "resolve_command"):  # a command, not a group: parsed
                return []
            rest = [*getattr(context, "_protected_args", []), *context.args]
            name, found, args = command.resolve_command(context, rest)
            if found is None:
                return [f"{where}: no command {name!r} in edgelake {' '.join(argv)}"]
            command = found
    except UsageError as error:
        return [f"{where}: edgelake {' '.join(argv)}: {error.format_message()}"]


# --- compose -------------------------------------------------------------------------------


def test_compose_parses_and_has_the_platform() -> None:
    services = load_compose()["services"]
    kafka = [name for name, service in services.items() if service.get("image", "").startswith("apache/kafka:")]
    assert len(kafka) == 3
    for name in kafka:
        env = services[name]["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft: no ZooKeeper
        assert len(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == 3
    assert {services[name]["environment"]["KAFKA_NODE_ID"] for name in kafka} == {1, 2, 3}
    assert len({services[name]["environment"]["CLUSTER_ID"] for name in kafka}) == 1
    images = {name: image_name(service.get("image", "")) for name, service in services.items()}
    for expected in ("minio/minio", "redis", "nginx", "prom/prometheus", "grafana/grafana", "apache/beam_flink1.20_job_server"):
        assert expected in images.values(), expected
    assert sum(1 for service in services.values() if service.get("command") == "jobmanager") == 1
    assert sum(1 for service in services.values() if service.get("command") == "taskmanager") == 1
    spark_workers = [service for service in services.values() if service.get("entrypoint", [None])[-1] == "org.apache.spark.deploy.worker.Worker"]
    assert len(spark_workers) == 2
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["api"]["environment"]["EDGELAKE_ONLINE_FEATURES"] == "redis"
    bootstrap = services["api"]["environment"]["EDGELAKE_KAFKA_BOOTSTRAP_SERVERS"].split(",")
    assert sorted(host.split(":")[0] for host in bootstrap) == sorted(kafka)


def test_compose_runs_the_kafka_the_tests_run() -> None:
    pinned = re.search(r"<kafka.version>([^<]+)</kafka.version>", (INFRA / "jars" / "kafka" / "pom.xml").read_text())
    assert pinned is not None
    images = {service["image"] for service in load_compose()["services"].values() if str(service.get("image", "")).startswith("apache/kafka:")}
    assert images == {f"apache/kafka:{pinned.group(1)}"}


def test_compose_checks_pass() -> None:
    assert compose_problems(load_compose()) == []


def test_compose_edgelake_commands_parse() -> None:
    problems: list[str] = []
    for name, service in load_compose()["services"].items():
        image = image_name(service.get("image", ""))
        if not image.startswith("edgelake/") or "entrypoint" in service:
            continue  # Spark daemons, the Beam worker pool: not the edgelake CLI
        instructions = dict(dockerfile_instructions(dockerfile(image.removeprefix("edgelake/"))))
        entrypoint = exec_form(instructions["ENTRYPOINT"])
        command = service.get("command") or exec_form(instructions["CMD"])
        argv = [*entrypoint, *(resolve_compose_defaults(str(part)) for part in command)]
        assert argv[0] in ("edgelake", "edgelake-edge"), name
        device_commands = ["edge"] if argv[0] == "edgelake-edge" else []  # the device's CLI is `edgelake edge`'s commands
        problems += cli_problems([*device_commands, *argv[1:]], f"compose service {name}")
    assert problems == []


def test_compose_ingesters_split_the_topics() -> None:
    """Each topic has exactly one ingester: two on the same partitions would read the same offsets."""
    from edgelake.contracts import EVENT_BY_TOPIC

    owners: dict[str, list[str]] = {}
    for name, service in load_compose()["services"].items():
        command = [str(part) for part in service.get("command") or []]
        if command[:2] == ["ingest", "run"]:
            topics = [command[i + 1] for i, part in enumerate(command) if part == "--topics"]
            assert topics, f"{name} ingests every topic, beside other ingesters"
            for topic in topics:
                owners.setdefault(topic, []).append(name)
    assert {topic: len(names) for topic, names in owners.items()} == dict.fromkeys(EVENT_BY_TOPIC, 1)


# --- Dockerfiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile(image: str) -> None:
    path = dockerfile(image)
    instructions = dockerfile_instructions(path)
    keywords = [keyword for keyword, _ in instructions]
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for keyword, rest in instructions if keyword == "ARG" and "=" in rest}
    for keyword, rest in instructions:
        if keyword == "FROM":
            base = rest.split()[0]
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base)
            if base == "build" or base in {r.split()[-1] for k, r in instructions if k == "FROM" and " AS " in r.upper()}:
                continue
            assert ":" in base and not base.endswith(":latest"), f"{image}: base {base} is not pinned by tag"
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _target = exec_form(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"{image}: COPY {source}: not in the repository"
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, f"{image} must run as a non-root user"
    assert "HEALTHCHECK" in keywords, f"{image}: no HEALTHCHECK (say HEALTHCHECK NONE where the exit status is the health)"
    assert exec_form(dict(instructions)["ENTRYPOINT"])[0] == ("edgelake-edge" if image == "edge" else "edgelake")
    problems = env_problems(dockerfile_env(path), f"{path.name} ENV")
    assert problems == []


@pytest.mark.parametrize("image", ("api", "ingest", "trainer"))
def test_dockerfile_default_commands_parse(image: str) -> None:
    instructions = dict(dockerfile_instructions(dockerfile(image)))
    argv = [*exec_form(instructions["ENTRYPOINT"]), *exec_form(instructions["CMD"])]
    assert cli_problems(argv[1:], f"{image}.Dockerfile") == []


def test_healthchecks_name_real_scripts_and_routes() -> None:
    for image in ("api", "ingest", "edge"):
        check = exec_form(dict(dockerfile_instructions(dockerfile(image)))["HEALTHCHECK"].split("CMD", 1)[1].strip())
        assert check[1] == "/usr/local/lib/edgelake/healthcheck.py"
    api_check = dict(dockerfile_instructions(dockerfile("api")))["HEALTHCHECK"]
    assert "http://127.0.0.1:8000/healthz" in api_check
    assert '"/healthz"' in (ROOT / "api/routers/health.py").read_text()


def test_edge_image_installs_the_edge_distribution_only() -> None:
    text = dockerfile("edge").read_text()
    assert "ARG EDGE_EXTRA=litert" in text and 'pip install "./infra/edge-dist[${EDGE_EXTRA}]"' in text
    assert "[cloud]" not in text and "COPY api" not in text and "COPY pyproject.toml" not in text
    # Multi-arch: nothing in it may depend on the build or target architecture.
    assert not re.search(r"TARGETARCH|TARGETPLATFORM|amd64|x86_64|aarch64|arm64v8|--platform", text.split("FROM", 1)[1])


def test_trainer_has_a_cuda_base_and_java() -> None:
    text = dockerfile("trainer").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-", text, re.M)
    assert "tensorflow[and-cuda]" in text and "openjdk-17-jre-headless" in text


def test_dockerignores_are_identical_and_keep_what_the_images_copy() -> None:
    ignores = {image: (DOCKER / f"{image}.Dockerfile.dockerignore").read_text() for image in IMAGES}
    assert len(set(ignores.values())) == 1
    kept = {line[1:].rstrip("/") for line in ignores["api"].splitlines() if line.startswith("!")}
    for image in IMAGES:
        for keyword, rest in dockerfile_instructions(dockerfile(image)):
            if keyword == "COPY" and not rest.startswith("--from"):
                for source in exec_form(rest)[:-1]:
                    assert source.rstrip("/") in kept, f"{image}: COPY {source} is excluded by the .dockerignore"


# --- Kubernetes ----------------------------------------------------------------------------


def test_k8s_yaml_parses() -> None:
    files = k8s_files()
    assert files
    for path in files:
        for doc in k8s_documents(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            assert doc["metadata"].get("name"), path


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / KUSTOMIZATION).read_text())
    listed = {(K8S / name).resolve() for name in kustomization["resources"]}
    assert all(path.is_file() for path in listed)
    assert listed == {path.resolve() for path in k8s_files()}
    images = {entry["name"] for entry in kustomization["images"]}
    used = {image_name(container["image"]) for doc in all_k8s_documents() for container in containers(doc)}
    assert {image for image in used if image.startswith("edgelake/")} <= images


def test_secret_files_are_never_committed() -> None:
    """The generated Secrets' sources are git-ignored: keys come from the operator, not the repository."""
    kustomization = yaml.safe_load((K8S / KUSTOMIZATION).read_text())
    sources = [item.split("=", 1)[-1] for generator in kustomization["secretGenerator"] for item in [*generator.get("files", []), *generator.get("envs", [])]]
    assert "secrets/registry.key" in sources
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    for source in sources:
        result = subprocess.run(["git", "check-ignore", "-q", str(K8S / source)], cwd=ROOT, check=False)
        assert result.returncode == 0, f"infra/k8s/{source} is not ignored by git"


@pytest.mark.parametrize("path", k8s_files(), ids=lambda path: str(path.relative_to(K8S)))
def test_k8s_manifest_validates_against_the_schemas(path: Path) -> None:
    assert k8s_schema_problems(k8s_documents(path), str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize("path", k8s_files(), ids=lambda path: str(path.relative_to(K8S)))
def test_k8s_manifest_settings_images_and_security(path: Path) -> None:
    docs = k8s_documents(path)
    where = str(path.relative_to(ROOT))
    problems = [
        *k8s_env_problems(docs, where),
        *k8s_image_problems(docs, where),
        *k8s_security_problems(docs, where),
    ]
    assert problems == []


def test_k8s_kustomize_build_validates(tmp_path: Path) -> None:
    """The base as kustomize renders it (generated Secrets, image tags, namespace) validates too."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (kubectl kustomize runs offline)")
    base = tmp_path / "k8s"
    shutil.copytree(K8S, base)
    for name in ("registry.key", "registry.pub", "object-store.env", "control-db.env"):  # stand-ins for the operator's files
        (base / "secrets" / name).write_text("")
    rendered = subprocess.run([kubectl, "kustomize", str(base)], check=True, capture_output=True, text=True, timeout=120).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "StatefulSet", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job", "CronJob", "Secret", "NetworkPolicy"} <= kinds
    assert all(doc["metadata"].get("namespace") == "edgelake" for doc in docs if doc["kind"] != "Namespace")
    secret_names = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "Secret"}
    for doc in docs:  # kustomize renamed every reference to the hashed Secret names
        for pod in pod_specs(doc):
            for volume in pod.get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in secret_names
    assert k8s_schema_problems(docs, "kustomize build") == []


def test_k8s_workloads() -> None:
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for doc in all_k8s_documents()}
    hpa = docs[("HorizontalPodAutoscaler", "edgelake-api")]["spec"]
    assert {metric["type"] for metric in hpa["metrics"]} == {"Resource", "Pods"}
    assert hpa["minReplicas"] >= 2
    budget, deployment = docs[("PodDisruptionBudget", "edgelake-api")], docs[("Deployment", "edgelake-api")]
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    job = docs[("Job", "edgelake-train-fraud")]
    (train,) = containers(job)
    assert train["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert cli_problems(train["args"], "training Job") == []
    cronjobs = [doc for (kind, _), doc in docs.items() if kind == "CronJob"]
    commands = [" ".join(container["args"][:2]) for doc in cronjobs for container in containers(doc)]
    assert {"lake build-gold", "lake optimize", "lake vacuum"} <= set(commands)
    for doc in cronjobs:
        assert doc["spec"]["concurrencyPolicy"] == "Forbid"
        for container in containers(doc):
            assert cli_problems(container["args"], doc["metadata"]["name"]) == []
    api = next(containers(docs[("Deployment", "edgelake-api")]))
    assert cli_problems(api["args"], "API Deployment") == []
    kinds = {kind for kind, _ in docs}
    assert {"NetworkPolicy", "Service", "PersistentVolumeClaim"} <= kinds


def test_k8s_ingesters_split_the_topics() -> None:
    """One topic set per StatefulSet ordinal, each topic in exactly one, and each command parses."""
    from edgelake.contracts import EVENT_BY_TOPIC

    docs = {(doc["kind"], doc["metadata"]["name"]): doc for doc in all_k8s_documents()}
    statefulset = docs[("StatefulSet", "edgelake-ingest")]
    (container,) = containers(statefulset)
    script = container["args"][0]
    sets = dict(re.findall(r'^\s*(\d+)\) topics="([^"]*)"', script, re.M))
    assert sorted(int(ordinal) for ordinal in sets) == list(range(statefulset["spec"]["replicas"]))
    owners: dict[str, int] = {}
    tail = re.search(r"exec edgelake (.*)$", script, re.M).group(1)  # type: ignore[union-attr]
    for topics in sets.values():
        argv = shlex.split(tail.replace("$topics", topics))
        assert cli_problems(argv, "ingest StatefulSet") == []
        for topic in argv[argv.index("run") + 1 :: 1]:
            if topic in EVENT_BY_TOPIC:
                owners[topic] = owners.get(topic, 0) + 1
    assert owners == dict.fromkeys(EVENT_BY_TOPIC, 1)


# --- Prometheus and Grafana ----------------------------------------------------------------


def exported_metrics() -> set[str]:
    """The sample names the code exports, by the prometheus_client rules: counters gain _total,
    histograms _bucket/_count/_sum; gauges computed when scraped (GaugeMetricFamily) keep their name.
    Read from the sources (importing ingest.loop pulls in Beam)."""
    names: set[str] = set()
    for source in ("api/metrics.py", "ingest/loop.py"):
        text = (ROOT / source).read_text()
        for kind, name in re.findall(r'\b(Counter|Gauge|Histogram|GaugeMetricFamily)\(\s*"(edgelake_\w+)"', text):
            if kind == "Counter":
                names.add(name.removesuffix("_total") + "_total")
            elif kind == "Histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            else:
                names.add(name)
    return names


def route_templates() -> set[str]:
    """Every route template the API's routers declare (prefix + path): the `route` label's values."""
    templates: set[str] = set()
    for path in (ROOT / "api/routers").glob("*.py"):
        text = path.read_text()
        prefixes = {"", *re.findall(r'prefix="([^"]*)"', text)}
        for route in re.findall(r'@\w+\.(?:get|post|put|delete|patch)\(\s*"([^"]*)"', text):
            templates |= {prefix + route for prefix in prefixes}
    return templates


def promql_problems(expressions: list[str], where: str) -> list[str]:
    exported = exported_metrics()
    routes = route_templates()
    outcomes = set(re.search(r"OUTCOMES = \(([^)]*)\)", (ROOT / "ingest/pipeline.py").read_text()).group(1).replace('"', "").replace(" ", "").split(","))  # type: ignore[union-attr]
    problems: list[str] = []
    for expression in expressions:
        for name in re.findall(r"\b(edgelake_\w+)", expression):
            if name not in exported and name != "edgelake_http_requests_per_second":  # the adapter's own name
                problems.append(f"{where}: {name} is not exported by the code ({expression})")
        for route in re.findall(r'route="([^"]*)"', expression):
            if route not in routes:
                problems.append(f"{where}: no route {route}")
        for outcome in re.findall(r'outcome="([^"]*)"', expression):
            if outcome not in outcomes:
                problems.append(f"{where}: no ingest outcome {outcome}")
    return problems


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((INFRA / "grafana/dashboards/edgelake.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_reads_exported_metrics() -> None:
    dashboard = json.loads((INFRA / "grafana/dashboards/edgelake.json").read_text())
    datasource = yaml.safe_load((INFRA / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"][0]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("ingest", "lag", "quarantine", "latency", "decision", "model version", "device"):
        assert topic in titles, topic
    assert promql_problems(dashboard_expressions(), "dashboard") == []


def test_prometheus_rules_and_adapter_read_exported_metrics() -> None:
    rules = yaml.safe_load((INFRA / "prometheus/rules.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    adapter = yaml.safe_load((INFRA / "prometheus/adapter-rules.yaml").read_text())
    expressions += [rule["seriesQuery"] for rule in adapter["rules"]["custom"]]
    assert promql_problems(expressions, "rules") == []
    hpa_metric = next(doc for doc in all_k8s_documents() if doc["kind"] == "HorizontalPodAutoscaler")["spec"]["metrics"]
    pods_metric = next(metric["pods"]["metric"]["name"] for metric in hpa_metric if metric["type"] == "Pods")
    assert adapter["rules"]["custom"][0]["name"]["as"] == pods_metric
    config = yaml.safe_load((INFRA / "prometheus/prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} >= {"edgelake-api", "edgelake-ingest"}


# --- the checks catch what they should -----------------------------------------------------


def api_deployment() -> dict[str, Any]:
    return next(doc for doc in k8s_documents(K8S / "api.yaml") if doc["kind"] == "Deployment")


def test_a_wrong_api_version_fails() -> None:
    broken = api_deployment()
    broken["apiVersion"] = "apps/v1beta3"
    assert any("Couldn't find schema" in problem for problem in k8s_schema_problems([broken], "broken"))


def test_a_misspelt_field_fails() -> None:
    broken = api_deployment()
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    assert any("replica" in problem for problem in k8s_schema_problems([broken], "broken"))
    broken = api_deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"  # a string, not an int
    assert k8s_schema_problems([broken], "broken")


def test_an_unknown_setting_fails_in_k8s_and_compose() -> None:
    broken = api_deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "EDGELAKE_ONLINE_FEATURE", "value": "redis"})
    assert any("EDGELAKE_ONLINE_FEATURE is not a setting" in problem for problem in k8s_env_problems([broken], "broken"))
    compose = load_compose()
    compose["services"]["api"]["environment"]["EDGELAKE_REDIS"] = "redis://redis:6379/0"
    assert any("EDGELAKE_REDIS is not a setting" in problem for problem in compose_problems(compose))


def test_a_setting_with_a_refused_value_fails() -> None:
    compose = load_compose()
    compose["services"]["api"]["environment"]["EDGELAKE_ONLINE_FEATURES"] = "memcached"
    assert any("settings refuse" in problem for problem in compose_problems(compose))


def test_a_missing_dockerfile_or_unpinned_image_fails() -> None:
    compose = load_compose()
    compose["services"]["api"]["build"] = {"context": "..", "dockerfile": "infra/docker/nope.Dockerfile"}
    compose["services"]["redis"]["image"] = "redis:latest"
    problems = compose_problems(compose)
    assert any("nope.Dockerfile does not exist" in problem for problem in problems)
    assert any("'redis:latest' is not pinned" in problem for problem in problems)
    broken = api_deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["image"] = "edgelake/scorer"
    assert any("no Dockerfile for edgelake/scorer" in problem for problem in k8s_image_problems([broken], "broken"))


def test_a_root_container_fails() -> None:
    broken = copy.deepcopy(api_deployment())
    broken["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = False
    assert k8s_security_problems([broken], "broken")


def test_a_wrong_cli_option_or_metric_fails() -> None:
    # `ingest run` hands unknown options to Beam, so they cannot be caught here; its own are.
    assert cli_problems(["ingest", "run", "--max-events", "0"], "broken")
    assert cli_problems(["ingest", "runn"], "broken")
    assert cli_problems(["lake", "vacuum", "all", "--retention-hours", "-1"], "broken")
    assert cli_problems(["train", "fraud", "--device", "tpu"], "broken")
    assert cli_problems(["serve", "--replicas", "2"], "broken")
    assert promql_problems(["rate(edgelake_fraud_decisions_total[5m])"], "broken")
    assert promql_problems(['rate(edgelake_http_request_duration_seconds_count{route="/v1/scores"}[5m])'], "broken")
