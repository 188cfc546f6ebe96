"""docker-compose.yml: what `docker compose config` would check, plus the contract with the code.

No docker engine here, so the file is interpolated like Compose does, validated against the Compose
specification (compose-spec, the Rust `compose_spec` parser), and cross-checked with the settings
module, the Dockerfiles and the modules it runs.
"""

from __future__ import annotations

import re

import pytest
from compose_spec import PyOptions

from common.settings import Settings
from tests.infra.specs import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO,
    THIRD_PARTY_ENV,
    MissingVariable,
    command_list,
    compose_variables,
    interpolate,
    load_compose,
    module_file,
    parse_dockerfile,
    python_modules_run_by,
    read_env_file,
    setting_env_names,
)

APP_SERVICES = ("migrate", "api", "worker", "worker-cpu", "worker-io", "beat", "flower")
ONE_SHOT = ("minio-init", "migrate")


@pytest.fixture(scope="module", params=["defaults", "env-example"])
def compose(request) -> dict:
    """The file as `docker compose up` sees it: without a .env, and with .env.example copied."""
    env = {} if request.param == "defaults" else read_env_file(ENV_EXAMPLE)
    return load_compose(env)


def test_valid_against_compose_specification() -> None:
    for env in ({}, read_env_file(ENV_EXAMPLE)):
        parsed = PyOptions(apply_merge=True).from_yaml(interpolate(COMPOSE_FILE.read_text(), env))
        parsed.validate()  # networks, volumes, configs and secrets referenced are declared
        assert set(parsed.service_names()) >= set(APP_SERVICES) | {"redis", "postgres", "minio", "minio-init"}


def test_every_variable_has_a_default_and_is_documented() -> None:
    text = COMPOSE_FILE.read_text()
    variables = compose_variables(text)
    documented = read_env_file(ENV_EXAMPLE)
    no_default = sorted(name for name, default in variables.items() if default is None)
    assert not no_default, f"`docker compose up` without .env would leave these empty: {no_default}"
    # Commented-out entries (e.g. COMPOSE_PROFILES) count as documented.
    mentioned = set(documented) | set(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert set(variables) <= mentioned, f"not in .env.example: {sorted(set(variables) - mentioned)}"
    # .env.example's defaults agree with the inline ones (one source of truth for a fresh checkout).
    for name, default in variables.items():
        if name in documented:
            assert documented[name] == default, f"{name}: .env.example {documented[name]!r} != compose {default!r}"


def test_env_example_holds_only_compose_variables_and_settings() -> None:
    known = set(compose_variables(COMPOSE_FILE.read_text())) | setting_env_names() | {"COMPOSE_PROFILES"}
    unknown = sorted(set(read_env_file(ENV_EXAMPLE)) - known)
    assert not unknown, f".env.example entries nobody reads: {unknown}"
    settings_part = {k: v for k, v in read_env_file(ENV_EXAMPLE).items() if k in setting_env_names()}
    Settings(**{k.lower(): v for k, v in settings_part.items()})  # valid values


def test_interpolation_rules() -> None:
    assert interpolate("${A:-x} ${B-y} $$HOME ${C}", {"A": "", "B": ""}) == "x  $HOME "
    with pytest.raises(MissingVariable):
        interpolate("${A:?set A}", {})


def test_app_environment_is_made_of_settings(compose) -> None:
    names = setting_env_names()
    for name in APP_SERVICES:
        environment = compose["services"][name].get("environment", {})
        assert isinstance(environment, dict), f"{name}: use a mapping for environment"
        unknown = sorted(set(environment) - names - THIRD_PARTY_ENV)
        assert not unknown, f"{name}: not settings of common/settings.py: {unknown}"
        # Values parse: types, ranges and cross-field rules of Settings hold for what compose passes.
        settings = Settings(**{k.lower(): str(v) for k, v in environment.items() if k in names})
        assert settings.redis_url and settings.database_url.startswith("postgresql+psycopg://")
        assert settings.storage_backend == "s3" and settings.s3_endpoint_url == "http://minio:9000"


def test_dependencies_wait_for_health_and_one_shots(compose) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for health of {dependency}, which has none"
            elif condition == "service_completed_successfully":
                assert dependency in ONE_SHOT
            else:
                pytest.fail(f"{name} -> {dependency}: {condition} (start order only is not readiness)")
    for name in ("api", "worker", "worker-cpu", "worker-io", "beat"):
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
        assert deps["migrate"]["condition"] == "service_completed_successfully"


def test_long_running_services_have_healthchecks(compose) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT or name == "beat":  # beat has no endpoint; a crash restarts it
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
    assert compose["services"]["worker"]["healthcheck"]["test"][1:] == ["python", "-m", "worker.liveness", "check"]


def test_gpu_worker_and_cpu_profile(compose) -> None:
    services = compose["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "profiles" not in services["worker"], "`docker compose up` must start the GPU worker"
    assert services["worker"]["environment"]["DEVICE"] == "cuda"
    cpu = services["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu and cpu["environment"]["DEVICE"] == "cpu"
    # Only the CPU variant is optional: everything else starts with a plain `docker compose up`.
    assert [n for n, s in services.items() if "profiles" in s] == ["worker-cpu"]


def test_workers_consume_the_configured_queues_with_a_long_grace(compose) -> None:
    services, defaults = compose["services"], Settings()
    for name in ("worker", "worker-cpu"):
        argv = command_list(services[name].get("command")) or _dockerfile_cmd(services[name]["build"]["dockerfile"])
        assert argv[argv.index("-Q") + 1] == defaults.edits_queue
        assert "--pool" not in argv  # DEVICE picks it (common/topology.py); worker/app.py warms either pool
        grace = _seconds(services[name]["stop_grace_period"])
        assert grace >= defaults.job_deadline_seconds, f"{name}: SIGKILL before a running edit can finish"
    io = command_list(services["worker-io"]["command"])
    assert io[io.index("-Q") + 1].split(",") == [defaults.io_queue, defaults.webhooks_queue]


def test_volumes_data_and_models(compose) -> None:
    services, declared = compose["services"], set(compose["volumes"])
    used = set()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared, f"declared {sorted(declared)} but used {sorted(used)}"
    for name in ("worker", "worker-cpu"):
        mounts = services[name]["volumes"]
        model_dir = services[name]["environment"]["MODEL_DIR"]
        assert any(m.endswith(f":{model_dir}:ro") for m in mounts), f"{name}: model bundle not mounted read-only"
    for name in ("postgres", "redis", "minio"):
        assert services[name].get("volumes"), f"{name} keeps its data in the container layer"


def test_images_build_from_existing_dockerfiles_and_run_existing_modules(compose) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        assert build["context"] == "."
        dockerfile = REPO / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        argv = command_list(service.get("command")) or _dockerfile_cmd(build["dockerfile"])
        for module in python_modules_run_by(argv):
            assert module_file(module), f"{name}: runs module {module}, which does not exist"
        for module in python_modules_run_by(command_list(service.get("healthcheck", {}).get("test", [])[1:])):
            assert module_file(module), f"{name}: healthcheck runs missing module {module}"


def test_ports_match_the_images_and_settings(compose) -> None:
    services = compose["services"]
    api_port = services["api"]["ports"][0].rsplit(":", 1)[1]
    argv = _dockerfile_cmd(services["api"]["build"]["dockerfile"])
    assert argv[argv.index("--port") + 1] == api_port
    assert "8000" in services["api"]["healthcheck"]["test"][-1]
    assert int(services["worker"]["environment"]["METRICS_PORT"]) == Settings(
        metrics_port=services["worker"]["environment"]["METRICS_PORT"]).metrics_port
    # Internal services are not published on all interfaces: Flower's /metrics bypasses its auth.
    for name in ("flower", "minio"):
        for mapping in services[name]["ports"]:
            assert mapping.startswith("127.0.0.1:"), f"{name} published beyond localhost: {mapping}"
    for name in ("redis", "postgres"):
        assert "ports" not in services[name]


def test_flower_requires_auth(compose) -> None:
    """Behind the service's own gate (api/flower_gate.py), which starts Flower on loopback itself."""
    flower = compose["services"]["flower"]
    assert command_list(flower["command"])[:4] == ["python", "-m", "api", "flower-gate"]
    assert "--upstream" not in command_list(flower["command"])
    assert re.fullmatch(r"[^:\s]+:\S+", flower["environment"]["FLOWER_GATE_AUTH"])


def test_bucket_created_at_start(compose) -> None:
    init = compose["services"]["minio-init"]
    script = " ".join(command_list(init["command"]))
    assert "mc mb --ignore-existing" in script and "$S3_BUCKET" in script
    assert init["environment"]["S3_BUCKET"] == compose["services"]["api"]["environment"]["S3_BUCKET"]


def _dockerfile_cmd(dockerfile: str) -> list[str]:
    from tests.infra.specs import exec_form

    instructions = parse_dockerfile(REPO / dockerfile)
    return exec_form([i for i in instructions if i.keyword == "CMD"][-1].arguments)


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(amount) * units[unit]
    return total
