"""deploy/k8s, checked offline: rendered as kustomize renders it, every core object valid against the Kubernetes
schemas (kubernetes-validate) and KEDA's objects against KEDA's own CRDs (vendored in deploy/k8s/keda/), then
what the objects must say about this app: probes on routes it serves, only settings it knows, the Dockerfile's
images and commands, the migrations before the web app and the workers, autoscaling on what the app exports."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from litestar import Litestar
from prometheus_client.parser import text_string_to_metric_families

from app import db
from app.settings import Settings, load_settings
from tests.k8s import Object, crd_schemas, quantity, render

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "openvino": K8S / "overlays" / "openvino"}
# The oldest and the newest Kubernetes checked; kubernetes-validate ships the schemas of both.
KUBERNETES_VERSIONS = ("1.32", "1.35")
# From kedacore/keda at tag v2.20.2 (commit 68a5b5028f35b22d50597c69819ab32c4e92f21a), unchanged:
# config/crd/bases/keda.sh_scaledobjects.yaml and keda.sh_triggerauthentications.yaml.
KEDA_CRDS = K8S / "keda"
# The Secret imageclass-secrets (README.md of deploy/k8s): its keys, with stand-in values.
SECRETS = {
    "SECRET_KEY": "s" * 40,
    "ADMIN_PASSWORD": "a-real-password",
    "DATABASE_URL": "postgres://app:pw@db:5432/app",
    "REDIS_URL": "redis://redis:6379/0",
    "METRICS_TOKEN": "t" * 32,
}
SETTINGS = {field.name.upper() for field in dataclasses.fields(Settings)}
WORKLOADS = {"Deployment", "Job"}


@cache
def rendered(name: str) -> tuple[Object, ...]:
    return tuple(render(KUSTOMIZATIONS[name]))


def objects(name: str, kind: str) -> list[Object]:
    return [o for o in rendered(name) if o["kind"] == kind]


def one(name: str, kind: str, object_name: str) -> Object:
    found = [o for o in objects(name, kind) if o["metadata"]["name"] == object_name]
    assert len(found) == 1, f"{kind} {object_name}: {len(found)} rendered"
    return found[0]


def pod_spec(workload: Object) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Object, init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def all_containers(name: str) -> list[tuple[Object, dict[str, Any]]]:
    return [(w, c) for w in rendered(name) if w["kind"] in WORKLOADS for c in containers(w)]


def environment(name: str, container: dict[str, Any]) -> dict[str, str]:
    """What the container's process finds in its environment, the Secret's values stood in for."""
    found: dict[str, str] = {}
    for source in container.get("envFrom", []):
        found |= one(name, "ConfigMap", source["configMapRef"]["name"])["data"]
    for variable in container.get("env", []):
        secret = variable.get("valueFrom", {}).get("secretKeyRef")
        found[variable["name"]] = SECRETS[secret["key"]] if secret else variable["value"]
    return found


kustomizations = pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))


@kustomizations
def test_the_renderer_renders_as_kubectl_kustomize_does(name: str) -> None:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("no kubectl here to compare tests/kustomize.py with (`kubectl kustomize`)")
    result = subprocess.run([kubectl, "kustomize", str(KUSTOMIZATIONS[name])], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(result.stdout) if o}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in rendered(name)}
    assert sorted(ours) == sorted(theirs)
    for key, obj in ours.items():
        assert obj == theirs[key], key


@kustomizations
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_are_valid_kubernetes(name: str, version: str) -> None:
    core = [o for o in rendered(name) if not o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in core} >= {"ConfigMap", "Deployment", "Service", "Job", "PersistentVolumeClaim"}
    errors = []
    for obj in core:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']} {obj['metadata']['name']}: {exc.message} at {list(exc.absolute_path)}")
    assert not errors, "\n".join(errors)


@kustomizations
def test_keda_objects_match_kedas_crds(name: str) -> None:
    schemas = crd_schemas(KEDA_CRDS)
    keda = [o for o in rendered(name) if o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in keda} == {"ScaledObject", "TriggerAuthentication"}
    for obj in keda:
        schema = schemas[(obj["apiVersion"], obj["kind"])]
        errors = [
            f"{e.message} at {list(e.absolute_path)}" for e in jsonschema.Draft7Validator(schema).iter_errors(obj)
        ]
        assert not errors, f"{obj['kind']} {obj['metadata']['name']}: " + "\n".join(errors)


def test_probes_ask_routes_the_app_serves(app: Litestar) -> None:
    paths = {route.path for route in app.routes}
    web = one("base", "Deployment", "imageclass-web")
    (container,) = containers(web, init=False)
    ports = {port["name"] for port in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in paths, probe
        assert container[probe]["httpGet"]["port"] in ports, probe
    service = one("base", "Service", "imageclass-web")
    assert service["spec"]["selector"].items() <= web["spec"]["template"]["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


async def test_web_readiness_does_not_wait_for_workers(client: httpx.AsyncClient, no_worker: None) -> None:
    """Workers come and go with the queue: web pods must stay in the Service while none is alive."""
    (container,) = containers(one("base", "Deployment", "imageclass-web"), init=False)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        response = await client.get(container[probe]["httpGet"]["path"])
        assert response.status_code == 200, (probe, response.text)


@kustomizations
def test_every_variable_is_a_setting(name: str) -> None:
    assert set(SECRETS) <= SETTINGS
    for workload, container in all_containers(name):
        where = f"{workload['metadata']['name']}/{container['name']}"
        for source in container.get("envFrom", []):
            assert set(source) == {"configMapRef"}, where  # the Secret's keys are named one by one
            assert set(one(name, "ConfigMap", source["configMapRef"]["name"])["data"]) <= SETTINGS, where
        for variable in container.get("env", []):
            assert variable["name"] in SETTINGS, f"{where}: {variable['name']} is no setting"
            if secret := variable.get("valueFrom", {}).get("secretKeyRef"):
                assert secret["name"] == "imageclass-secrets" and secret["key"] == variable["name"], where
    for auth in objects(name, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == "imageclass-secrets" and ref["key"] in SECRETS


@kustomizations
def test_every_container_starts_with_valid_production_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for workload, container in all_containers(name):
        for variable in SETTINGS:
            monkeypatch.delenv(variable, raising=False)
        for variable, value in environment(name, container).items():
            monkeypatch.setenv(variable, value)
        settings = load_settings()  # a SettingsError names the bad value
        assert settings.production, workload["metadata"]["name"]
        if container["name"] == "worker":
            # A named backend (auto would try both in every new pod), on as many threads as cores requested.
            assert settings.inference_backend in {"tensorflow", "openvino"}
            assert settings.model_threads == quantity(container["resources"]["requests"]["cpu"])


def dockerfile_stages() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    return {chunk.split()[2]: chunk for chunk in text.split("\nFROM ")[1:]}


def instruction(stage: str, name: str) -> str:
    lines = [line for line in stage.splitlines() if line.startswith(f"{name} ")]
    return lines[-1].removeprefix(f"{name} ") if lines else ""


def test_images_and_commands_are_the_dockerfiles_and_composes() -> None:
    stages = dockerfile_stages()
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    users = {instruction(stage, "USER").split(":")[0] for stage in (stages["web"], stages["worker"])}
    for workload in (o for o in rendered("base") if o["kind"] in WORKLOADS):
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        target = services[component]["build"]["target"]
        (main,) = containers(workload, init=False)
        for container in containers(workload):
            assert container["image"] == f"imageclass-{target}", (component, container["name"])
        assert {str(pod_spec(workload)["securityContext"]["runAsUser"])} == users
        if component == "migrate":
            assert main["command"] == services["migrate"]["command"]
        else:  # the image's own CMD
            assert "command" not in main and "args" not in main, component
    web_cmd = json.loads(instruction(stages["web"], "CMD"))
    (web,) = containers(one("base", "Deployment", "imageclass-web"), init=False)
    port = web_cmd[web_cmd.index("--port") + 1]
    assert [str(p["containerPort"]) for p in web["ports"]] == [port] == [instruction(stages["web"], "EXPOSE")]
    assert json.loads(instruction(stages["worker"], "CMD")) == ["python", "-m", "app.worker"]


@kustomizations
def test_the_web_app_and_the_workers_wait_for_the_migrations_job(name: str) -> None:
    job = one(name, "Job", "imageclass-migrate")
    assert containers(job)[0]["command"] == ["tortoise", "migrate"]
    waits = set()
    for deployment in objects(name, "Deployment"):
        (wait,) = pod_spec(deployment)["initContainers"]
        assert "tortoise migrate --dry-run" in wait["command"][-1], deployment["metadata"]["name"]
        waits.add(tuple(wait["command"]))
    assert len(waits) == 1


async def test_the_wait_for_migrations_ends_once_they_are_applied(tmp_path: Path) -> None:
    (wait,) = pod_spec(one("base", "Deployment", "imageclass-web"))["initContainers"]
    migrated, empty = f"sqlite://{tmp_path / 'migrated.sqlite3'}", f"sqlite://{tmp_path / 'empty.sqlite3'}"
    await db.apply_migrations(migrated)
    base = os.environ | environment("base", wait) | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def start(url: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            wait["command"],
            cwd=ROOT,
            env=base | {"DATABASE_URL": url},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def stop(process: subprocess.Popen[str]) -> str:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        return process.communicate(timeout=10)[0]

    done = start(migrated)
    try:
        assert done.wait(timeout=30) == 0
    finally:
        output = stop(done)
    assert "waiting for the migrations" not in output
    waiting = start(empty)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=8)  # still waiting: two rounds of `tortoise migrate --dry-run`, at least
    finally:
        output = stop(waiting)
    assert "waiting for the migrations" in output


@kustomizations
def test_every_container_requests_cpu_and_memory(name: str) -> None:
    for workload, container in all_containers(name):
        resources, where = container["resources"], f"{workload['metadata']['name']}/{container['name']}"
        assert set(resources["requests"]) == {"cpu", "memory"}, where
        assert quantity(resources["limits"]["memory"]) >= quantity(resources["requests"]["memory"]), where


@kustomizations
def test_workers_scale_on_the_queue_the_web_app_exports(name: str, app: Litestar) -> None:
    scaled = one(name, "ScaledObject", "imageclass-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api" and trigger["metadata"]["format"] == "prometheus"
    url = urlsplit(trigger["metadata"]["url"])
    service = one(name, "Service", url.hostname.split(".")[0] if url.hostname else "")
    assert url.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    assert url.path in {route.path for route in app.routes}
    auth = one(name, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert trigger["metadata"]["authMode"] == "bearer"
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "token", "name": "imageclass-secrets", "key": "METRICS_TOKEN"}
    ]
    # A worker with a full batch in hand asks for no other; none from zero (the ScaledObject's comment says why).
    assert quantity(trigger["metadata"]["targetValue"]) >= Settings().max_batch
    assert scaled["spec"]["minReplicaCount"] >= 1


@kustomizations
def test_web_pods_scale_on_cpu(name: str) -> None:
    scaled = one(name, "ScaledObject", "imageclass-web")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "cpu" and trigger["metricType"] == "Utilization"
    web = one(name, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    (container,) = [c for c in containers(web, init=False) if c["name"] == trigger["metadata"]["containerName"]]
    assert "cpu" in container["resources"]["requests"]  # utilization is of the request
    for deployment in objects(name, "Deployment"):
        assert "replicas" not in deployment["spec"]  # the ScaledObjects own the counts
        one(name, "ScaledObject", deployment["metadata"]["name"])


async def test_the_queue_depth_is_a_gauge_of_metrics(client: httpx.AsyncClient, no_worker: None) -> None:
    (trigger,) = one("base", "ScaledObject", "imageclass-worker")["spec"]["triggers"]
    response = await client.get(urlsplit(trigger["metadata"]["url"]).path)
    assert response.status_code == 200
    found = list(text_string_to_metric_families(response.text))
    families = {f.name: f for f in found}
    assert len(families) == len(found)  # KEDA's parser refuses a family declared twice
    gauge = families[trigger["metadata"]["valueLocation"]]
    assert gauge.type == "gauge" and [s.value for s in gauge.samples] == [0]


def test_the_openvino_overlay_changes_only_the_workers() -> None:
    base = {(o["kind"], o["metadata"]["name"]): o for o in rendered("base")}
    overlay = {(o["kind"], o["metadata"]["name"]): o for o in rendered("openvino")}
    assert base.keys() == overlay.keys()
    changed = {key for key in base if base[key] != overlay[key]}
    assert changed == {("Deployment", "imageclass-worker"), ("ScaledObject", "imageclass-worker")}
    (worker,) = containers(overlay[("Deployment", "imageclass-worker")], init=False)
    assert environment("openvino", worker)["INFERENCE_BACKEND"] == "openvino"
