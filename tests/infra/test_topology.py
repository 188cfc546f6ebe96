"""The deployment files run the workers and beat of common/topology.py, as written there: every `celery ...
worker` and `celery ... beat` of compose, the k8s manifests and the Dockerfiles is the table's command line
for one role (with the default queue names), on an image that can run that role."""

from __future__ import annotations

from common import topology
from common.settings import Settings
from tests.infra.specs import DOCKER_DIR, copies, deployment_commands

COMMANDS = deployment_commands()
CELERY = ["celery", "-A", topology.CELERY_APP]


def _runs(subcommand: str) -> list:
    return [c for c in COMMANDS if list(c.argv[:4]) == [*CELERY, subcommand]]


def _ships_the_pipeline(dockerfile: str) -> bool:
    return any(source.startswith("pipeline") for source, _ in copies(DOCKER_DIR / dockerfile))


def test_every_worker_is_one_role_of_the_table_on_an_image_that_can_run_it() -> None:
    defaults = Settings()
    by_argv = {tuple(topology.worker_argv(role, defaults)): role for role in topology.Role}
    roles_in: dict[str, set[topology.Role]] = {}
    workers = _runs("worker")
    for command in workers:
        role = by_argv.get(command.argv)
        assert role, f"{command.where}: {list(command.argv)} is none of common/topology.py's workers: {by_argv}"
        # A model worker needs the pipeline in its image; an io worker needs no more than the API image.
        assert _ships_the_pipeline(command.dockerfile) == (role is topology.Role.MODEL), (command.where, role)
        for place in command.where:
            roles_in.setdefault(place.split()[0].split("/")[0], set()).add(role)
    assert roles_in["docker-compose.yml"] == roles_in["k8s"] == set(topology.Role), roles_in
    model_images = {c.dockerfile for c in workers if by_argv[c.argv] is topology.Role.MODEL}
    assert model_images == {"worker-cpu.Dockerfile", "worker-cuda.Dockerfile"}


def test_beat_is_the_tables_one_beat() -> None:
    beats = _runs("beat")
    assert beats and all(c.argv == tuple(topology.beat_argv("/tmp/celerybeat-schedule")) for c in beats), beats
    places = [place for command in beats for place in command.where]
    assert sorted(p.split()[0].split("/")[0] for p in places) == ["docker-compose.yml", "k8s"], places


def test_nothing_else_runs_celery_but_flower() -> None:
    for command in COMMANDS:
        if command.argv[:1] == ("celery",):
            assert list(command.argv[:3]) == CELERY, command.where
            assert command.argv[3] in ("worker", "beat", "flower"), command.where
