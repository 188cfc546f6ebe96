"""infra/k8s: schema-valid (kubernetes-validate, strict), and consistent with the code and each other.

Built-in kinds are validated against the Kubernetes API schemas bundled in kubernetes-validate;
KEDA's custom resources (no schema available offline) get structural checks of the fields that
decide scaling.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from common.settings import Settings
from tests.infra.specs import (
    IMAGE_DOCKERFILES,
    K8S_DIR,
    REPO,
    THIRD_PARTY_ENV,
    command_list,
    load_k8s_documents,
    module_file,
    pod_specs,
    python_modules_run_by,
    setting_env_names,
)

K8S_VERSION = "1.33.0"
DOCUMENTS = load_k8s_documents()
ALL = [doc for docs in DOCUMENTS.values() for doc in docs]


def _find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in ALL if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} definitions"
    return matches[0]


def _containers(name: str) -> list[dict[str, Any]]:
    for workload, spec in pod_specs(ALL):
        if workload == name:
            return spec["containers"]
    raise AssertionError(f"no workload {name}")


def test_every_document_is_a_resource() -> None:
    assert DOCUMENTS, "no manifests"
    for path, docs in DOCUMENTS.items():
        assert docs, f"{path.name} is empty"
        if path.name == "kustomization.yaml":  # kustomize's own file, not applied to the cluster
            continue
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}: {doc.get('kind')}"
            assert doc["metadata"].get("name"), f"{path.name}: unnamed {doc['kind']}"


@pytest.mark.parametrize("path", sorted(DOCUMENTS), ids=lambda p: p.name)
def test_builtin_kinds_match_the_kubernetes_schemas(path: Path) -> None:
    for doc in DOCUMENTS[path]:
        if doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")):
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {error}")


def test_validator_rejects_a_broken_manifest() -> None:
    broken = yaml.safe_load((K8S_DIR / "api.yaml").read_text().split("---")[0])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecs"] = 10
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_applied_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    # Applied by hand, on purpose: a Secret template with placeholders, a one-off download.
    by_hand = {"secret.example.yaml", "download-models-job.yaml"}
    # Other kustomizations: the monitoring ConfigMaps are made from infra/monitoring's own files.
    included = {"../monitoring"}
    assert listed == (on_disk - by_hand) | included
    assert all((K8S_DIR / name / "kustomization.yaml").is_file() for name in included)
    assert {image["name"] for image in kustomization["images"]} == set(IMAGE_DOCKERFILES)


def test_images_come_from_our_dockerfiles() -> None:
    for _, spec in pod_specs(ALL):
        for container in spec["containers"]:
            assert container["image"] in IMAGE_DOCKERFILES, container["image"]
            assert (REPO / "infra/docker" / IMAGE_DOCKERFILES[container["image"]]).is_file()


def test_commands_and_probes_run_existing_modules() -> None:
    for workload, spec in pod_specs(ALL):
        for container in spec["containers"]:
            argv = command_list(container.get("command") or container.get("args"))
            assert argv, f"{workload}: relies on the image CMD; say what runs"
            modules = python_modules_run_by(argv)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if "exec" in container.get(probe, {}):
                    modules += python_modules_run_by(container[probe]["exec"]["command"])
            assert modules, f"{workload}: {argv}"
            for module in modules:
                assert module_file(module), f"{workload}: module {module} does not exist"


def test_configuration_is_settings_from_configmap_and_secret() -> None:
    names = setting_env_names()
    config = _find("ConfigMap", "faceedit-config")["data"]
    secret_docs = list(yaml.safe_load_all((K8S_DIR / "secret.example.yaml").read_text()))
    secrets = {doc["metadata"]["name"]: doc["stringData"] for doc in secret_docs}
    assert set(config) <= names, sorted(set(config) - names)
    assert set(secrets["faceedit-secrets"]) <= names, sorted(set(secrets["faceedit-secrets"]) - names)
    assert not set(config) & set(secrets["faceedit-secrets"]), "a setting defined twice"
    # Together they are a valid configuration (types, ranges, cross-field rules).
    merged = {**config, **secrets["faceedit-secrets"]}
    settings = Settings(**{k.lower(): v for k, v in merged.items()})
    assert settings.storage_backend == "s3" and settings.redis_url
    for workload, spec in pod_specs(ALL):
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] == "faceedit-config"
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for variable in container.get("env", []):
                assert variable["name"] in names | THIRD_PARTY_ENV, f"{workload}: {variable['name']} is no setting"
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]], f"{workload}: {ref}"
                if variable["name"] in names and "value" in variable:
                    Settings(**{k.lower(): v for k, v in {**merged, variable["name"]: variable["value"]}.items()})


def test_gpu_worker_resources_shutdown_and_probes() -> None:
    worker = _find("Deployment", "faceedit-worker")
    spec = worker["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 == resources["requests"]["nvidia.com/gpu"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    settings = Settings()
    assert spec["terminationGracePeriodSeconds"] >= settings.job_deadline_seconds, "scale-in would kill a running edit"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["python", "-m", "worker.liveness", "check"]
    # The startup budget covers loading the models before the first message.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    argv = container["args"]
    # no pool on the command line: DEVICE=cuda picks threads, several jobs at once (common/topology.py)
    assert argv[argv.index("-Q") + 1] == settings.edits_queue and "--pool" not in argv
    assert {m["mountPath"]: m.get("readOnly") for m in container["volumeMounts"]}["/models"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODEL_DIR"] == "/models" and env["DEVICE"] == "cuda"
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"


def test_keda_scales_gpu_workers_on_the_edits_queue_to_zero() -> None:
    scaled = _find("ScaledObject", "faceedit-worker")
    spec = scaled["spec"]
    target = _find("Deployment", spec["scaleTargetRef"]["name"])
    assert target["spec"]["template"]["spec"]["containers"][0]["image"] == "faceedit-worker-cuda"
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == Settings().edits_queue
    assert int(trigger["metadata"]["listLength"]) >= 1
    auth = _find("TriggerAuthentication", trigger["authenticationRef"]["name"])
    secret_docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((K8S_DIR / "secret.example.yaml").read_text())}
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in ("address", "host", "port", "username", "password")
        assert ref["key"] in secret_docs[ref["name"]]["stringData"]


def test_services_select_pods_and_ports_line_up() -> None:
    deployments = [d for d in ALL if d["kind"] == "Deployment"]
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (d for d in ALL if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        selected = [d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} deployments"
        ports = {p["name"]: p["containerPort"] for c in selected[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: no container port {port['targetPort']}"
    api = _containers("faceedit-api")[0]
    assert api["args"][api["args"].index("--port") + 1] == str(api["ports"][0]["containerPort"])
    metrics_port = int(_find("ConfigMap", "faceedit-config")["data"]["METRICS_PORT"])
    for name in ("faceedit-worker", "faceedit-worker-io"):
        assert {p["name"]: p["containerPort"] for p in _containers(name)[0]["ports"]}["metrics"] == metrics_port


def test_single_beat_and_private_flower() -> None:
    beat = _find("Deployment", "faceedit-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    flower_service = _find("Service", "faceedit-flower")
    assert flower_service["spec"].get("type", "ClusterIP") == "ClusterIP"
    flower = _containers("faceedit-flower")[0]
    assert any(e["name"] == "FLOWER_GATE_AUTH" for e in flower["env"])  # the gate's login (api/flower_gate.py)
    assert flower["args"][:4] == ["python", "-m", "api", "flower-gate"]


def test_pods_run_as_non_root() -> None:
    for workload, spec in pod_specs(ALL):
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        for container in spec["containers"]:
            assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False or \
                workload == "faceedit-download-models", workload


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (optional extra check)")
def test_kustomize_build_renders() -> None:
    result = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = list(yaml.safe_load_all(result.stdout))
    assert all(doc["metadata"].get("namespace") == "faceedit" for doc in rendered if doc["kind"] != "Namespace")
    images = {c["image"] for doc in rendered for _, spec in pod_specs([doc]) for c in spec["containers"]}
    assert images and all(image.startswith("registry.example.com/faceedit/") for image in images)
