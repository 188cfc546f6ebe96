"""Readers for the deployment files, shared by the infra tests (no docker engine or cluster needed).

`interpolate` follows Compose's variable rules (`${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?error}`, `${VAR?error}`, `$$`), so the checks see what `docker compose config` would.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKER_DIR = REPO / "infra" / "docker"
K8S_DIR = REPO / "infra" / "k8s"
IMAGE_DOCKERFILES = {  # the k8s image names
    "faceedit-api": "api.Dockerfile",
    "faceedit-worker-cuda": "worker-cuda.Dockerfile",
    "faceedit-worker-cpu": "worker-cpu.Dockerfile",
}

# Environment variables read by third-party programs rather than by Settings.
THIRD_PARTY_ENV = {
    "FLOWER_BASIC_AUTH",  # Flower's own option
    "PROMETHEUS_MULTIPROC_DIR",  # prometheus_client's multiprocess mode
}

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def setting_env_names() -> set[str]:
    """Environment variable names Settings reads (field names, upper case)."""
    return {name.upper() for name in Settings.model_fields}


class MissingVariable(ValueError):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Substitute Compose variables in `text` from `env`."""

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        unset_or_empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-") and unset_or_empty:
            return arg
        if op in (":?", "?") and unset_or_empty:
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(substitute, text)


def compose_variables(text: str) -> dict[str, str | None]:
    """Every variable the compose text interpolates, with its inline default (None: no default)."""
    found: dict[str, str | None] = {}
    for match in _VARIABLE.finditer(text):
        name = match["braced"] or match["bare"]
        if name:
            found[name] = match["arg"] if match["op"] in (":-", "-") else found.get(name)
    return found


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


def load_compose(env: dict[str, str]) -> dict[str, Any]:
    """docker-compose.yml after interpolation from `env`, YAML anchors and merge keys resolved."""
    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), env))


def command_list(command: Any) -> list[str]:
    """A compose/k8s/Dockerfile command as an argv list (shell-form strings are split)."""
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def python_modules_run_by(argv: list[str]) -> list[str]:
    """Modules a command imports first: `python -m X`, `celery -A X`, `uvicorn [--factory] X:attr`."""
    modules = []
    for i, part in enumerate(argv):
        if part == "-m" and argv[:1] and "python" in argv[0]:
            modules.append(argv[i + 1])
        elif part in ("-A", "--app") and argv[:1] == ["celery"]:
            modules.append(argv[i + 1].split(":")[0])
    if argv[:1] == ["uvicorn"]:
        positional = [p for p in argv[1:] if not p.startswith("-") and ":" in p]
        modules += [positional[0].split(":")[0]] if positional else []
    return modules


def module_file(module: str) -> Path | None:
    """The source file of a repository module (`api.main` → api/main.py or api/main/__init__.py)."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py", base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, arguments = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return instructions


def exec_form(arguments: str) -> list[str]:
    """CMD/ENTRYPOINT in exec form (JSON array); shell form is refused (no signal forwarding)."""
    parsed = yaml.safe_load(arguments)
    assert isinstance(parsed, list), f"not exec form (PID 1 would be a shell and swallow SIGTERM): {arguments}"
    return [str(p) for p in parsed]


def load_k8s_documents() -> dict[Path, list[dict[str, Any]]]:
    """Every YAML document under infra/k8s, by file."""
    return {
        path: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        for path in sorted(K8S_DIR.glob("*.yaml"))
    }


def pod_specs(documents: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) for every Deployment, Job and CronJob."""
    specs = []
    for doc in documents:
        kind = doc.get("kind")
        if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            specs.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
        elif kind == "CronJob":
            specs.append((doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return specs


def copies(path: Path) -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context (not `--from=` stages)."""
    pairs = []
    for instruction in parse_dockerfile(path):
        if instruction.keyword != "COPY":
            continue
        args = [a for a in instruction.arguments.split() if not a.startswith("--chown")]
        assert not any(a.startswith("--from") for a in args)
        *sources, destination = args
        pairs += [(source, destination) for source in sources]
    return pairs


def build_layout(dockerfile: Path, root: Path) -> None:
    """Copy exactly what `dockerfile` COPYs, relative to its WORKDIR, into `root` (the image's WORKDIR)."""
    for source, destination in copies(dockerfile):
        target = root / destination.removeprefix("./")
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            target = target / Path(source).name if destination.endswith("/") else target
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, target)


def dockerfile_env(path: Path) -> dict[str, str]:
    """The image's ENV (KEY=VALUE form), later instructions winning."""
    env = {}
    for instruction in parse_dockerfile(path):
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                key, sep, value = pair.partition("=")
                assert sep, f"{path.name}: ENV {pair!r} is not KEY=VALUE"
                env[key] = value
    return env


def workdir(path: Path) -> str:
    return [i.arguments for i in parse_dockerfile(path) if i.keyword == "WORKDIR"][-1]


def image_argv(path: Path, command: list[str] | None = None, entrypoint: list[str] | None = None) -> list[str]:
    """What a container of this image runs: ENTRYPOINT + CMD, either replaced as compose/k8s do."""
    instructions = parse_dockerfile(path)
    if entrypoint is None:
        found = [i for i in instructions if i.keyword == "ENTRYPOINT"]
        entrypoint = exec_form(found[-1].arguments) if found else []
        if command is None:
            command = exec_form([i for i in instructions if i.keyword == "CMD"][-1].arguments)
    return [*entrypoint, *(command or [])]


@dataclass(frozen=True)
class Command:
    """One command as deployment files run it: `where` names every file and service that runs it, `probes`
    their health checks (compose `healthcheck`, k8s exec probes)."""

    dockerfile: str
    argv: tuple[str, ...]
    where: tuple[str, ...]
    probes: tuple[tuple[str, ...], ...]


def _k8s_probes(container: dict) -> list[tuple[str, ...]]:
    probes = (container.get(kind, {}) for kind in ("startupProbe", "livenessProbe", "readinessProbe"))
    return [tuple(probe["exec"]["command"]) for probe in probes if "exec" in probe]


def _compose_probes(service: dict) -> list[tuple[str, ...]]:
    test = command_list(service.get("healthcheck", {}).get("test"))
    return [tuple(test[1:])] if test[:1] == ["CMD"] else []


def deployment_commands(skip_workloads: set[str] = frozenset()) -> list[Command]:
    """Every command an image runs: each Dockerfile's ENTRYPOINT + CMD, each compose service built here and
    each k8s container (but those of `skip_workloads`), the same argv on the same image counted once."""
    where: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    probes: dict[tuple[str, tuple[str, ...]], list[tuple[str, ...]]] = {}

    def add(dockerfile: Path, argv: list[str], place: str, checks: list[tuple[str, ...]]) -> None:
        key = (dockerfile.name, tuple(argv))
        where.setdefault(key, []).append(place)
        probes.setdefault(key, [])
        probes[key] += [check for check in checks if check not in probes[key]]

    for dockerfile in sorted(DOCKER_DIR.glob("*.Dockerfile")):
        add(dockerfile, image_argv(dockerfile), f"{dockerfile.name} CMD", [])
    for name, service in load_compose({})["services"].items():
        if "build" not in service:
            continue
        dockerfile = DOCKER_DIR / Path(service["build"]["dockerfile"]).name
        entrypoint = service.get("entrypoint")
        argv = image_argv(dockerfile, command_list(service.get("command")) or None,
                          command_list(entrypoint) if entrypoint is not None else None)  # fmt: skip
        add(dockerfile, argv, f"{COMPOSE_FILE.name} {name}", _compose_probes(service))
    for path, documents in load_k8s_documents().items():
        for workload, spec in pod_specs(documents):
            if workload in skip_workloads:
                continue
            for container in spec["containers"]:
                dockerfile = DOCKER_DIR / IMAGE_DOCKERFILES[container["image"].split(":")[0].rsplit("/", 1)[-1]]
                argv = image_argv(dockerfile, container.get("args"), container.get("command"))
                add(dockerfile, argv, f"k8s/{path.name} {container['name']}", _k8s_probes(container))
    return [Command(key[0], key[1], tuple(where[key]), tuple(probes[key])) for key in where]
