"""The job topology: every Celery task by name, the queue it travels on, its beat schedule, and which kind
of worker consumes it. Routes, the beat schedule, the workers' command lines (`make run`, the test harness)
and every sender derive from this table; tests/infra holds compose, the k8s manifests and the Dockerfiles to it.

    task                                   queue     beat (every … seconds)           worker
    worker.tasks.process_edit              edits     -                                model
    worker.tasks.detect_faces              edits     -                                model
    worker.webhooks.deliver                webhooks  -                                io
    worker.reaper.reap                     io        REAPER_INTERVAL_SECONDS          io
    worker.webhooks.sweep                  io        WEBHOOK_SWEEP_SECONDS            io
    worker.retention.expire_old_data       io        RETENTION_INTERVAL_SECONDS       io
    worker.retention.sweep_orphan_objects  io        ORPHAN_SWEEP_INTERVAL_SECONDS    io

A queue belongs to one role, so a task's role follows from its queue. A *model* worker loads the models once,
in one process per accelerator, and runs `edit_jobs_at_once` jobs at a time: one on a CPU (`solo`), several on
a GPU (threads, whose renders meet in one batch: pipeline/render/batching.py); its pool comes from the settings
(DEVICE, EDIT_JOBS_PER_WORKER) through Celery's configuration, so one command line serves the CPU and the GPU
image. An *io* worker loads no models and waits on the network and the database on threads. Queue names are settings (`EDITS_QUEUE`...); the
deployment files spell the defaults. Task names are wire names: a queued message finds its task by name, so
renaming one strands the messages an older release queued. Not in the table: `worker.liveness.ping`, which a
worker sends to a queue of its own (worker/liveness.py).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.settings import Settings

CELERY_APP = "worker.app"  # the module every worker, beat and Flower load (`celery -A worker.app`)


class Role(enum.StrEnum):
    MODEL = "model"
    IO = "io"


@dataclass(frozen=True)
class Pool:
    """How a role's worker runs jobs: Celery's pool, and its concurrency (None: the pool's own, one for solo)."""

    name: str
    concurrency: int | None = None


# io: threads, no models, and the jobs mostly wait. model: from the settings (`pool`); the models load in the
# process that runs the jobs (worker/app.py warms them: on worker_process_init for solo, worker_init for threads).
IO_POOL = Pool("threads", 8)
# Edit jobs a GPU worker runs at once unless EDIT_JOBS_PER_WORKER says: enough to fill batches of a few
# strengths each while the others paste, encode and store (docs/BENCHMARKS.md: to be measured on a GPU).
GPU_EDIT_JOBS = 8


def edit_jobs_at_once(settings: Settings) -> int:
    """How many edit jobs a model worker runs at once: EDIT_JOBS_PER_WORKER, else 1 on a CPU (the CPU renderer
    renders one image at a time on every core: a batch costs the sum of its images) and GPU_EDIT_JOBS on a GPU."""
    if settings.edit_jobs_per_worker is not None:
        return settings.edit_jobs_per_worker
    return GPU_EDIT_JOBS if settings.device.startswith("cuda") else 1


def pool(role: Role, settings: Settings) -> Pool:
    """The pool a worker of `role` runs: the io workers' threads; a model worker's `solo` for one job at a time,
    else threads, one per job."""
    if role is Role.IO:
        return IO_POOL
    jobs = edit_jobs_at_once(settings)
    return Pool("solo") if jobs == 1 else Pool("threads", jobs)


def model_worker_config(settings: Settings) -> dict[str, Any]:
    """Celery's `worker_pool` and `worker_concurrency` of a model worker (its command line names no pool; an io
    worker's does, which overrides these)."""
    chosen = pool(Role.MODEL, settings)
    return {"worker_pool": chosen.name, "worker_concurrency": chosen.concurrency or 1}

# The settings that name a queue, and the role that consumes each.
QUEUE_ROLES = {"edits_queue": Role.MODEL, "io_queue": Role.IO, "webhooks_queue": Role.IO}


@dataclass(frozen=True)
class Beat:
    """A periodic send by Celery beat: its entry in the schedule, and the setting with its interval (seconds)."""

    entry: str
    every: str


@dataclass(frozen=True)
class Task:
    name: str
    queue_setting: str  # a key of QUEUE_ROLES
    beat: Beat | None = None  # None: sent on demand

    @property
    def role(self) -> Role:
        return QUEUE_ROLES[self.queue_setting]

    def queue(self, settings: Settings) -> str:
        return getattr(settings, self.queue_setting)


PROCESS_EDIT = Task("worker.tasks.process_edit", "edits_queue")  # the edit id, sent with task_id = edit id
DETECT_FACES = Task("worker.tasks.detect_faces", "edits_queue")  # the image id; detection needs the models
# Deliveries wait on other people's servers: their own queue, so a slow receiver never holds up the
# periodic tasks (each attempt is bounded by WEBHOOK_TIMEOUT_SECONDS anyway).
DELIVER_WEBHOOK = Task("worker.webhooks.deliver", "webhooks_queue")
REAP = Task("worker.reaper.reap", "io_queue", Beat("reap", "reaper_interval_seconds"))
SWEEP_WEBHOOKS = Task("worker.webhooks.sweep", "io_queue", Beat("webhooks", "webhook_sweep_seconds"))
EXPIRE_OLD_DATA = Task("worker.retention.expire_old_data", "io_queue", Beat("retention", "retention_interval_seconds"))
SWEEP_ORPHANS = Task("worker.retention.sweep_orphan_objects", "io_queue",
                     Beat("orphans", "orphan_sweep_interval_seconds"))  # fmt: skip

TASKS = (PROCESS_EDIT, DETECT_FACES, DELIVER_WEBHOOK, REAP, SWEEP_WEBHOOKS, EXPIRE_OLD_DATA, SWEEP_ORPHANS)
TIMED_TASKS = tuple(task.name for task in TASKS if task.beat is not None)  # sent by beat, not by a request


def task_routes(settings: Settings) -> dict[str, dict[str, str]]:
    """Celery's `task_routes`: every task to its queue."""
    return {task.name: {"queue": task.queue(settings)} for task in TASKS}


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule`. `expires`: a send that waited longer than one interval is dropped, not piled up."""
    schedule = {}
    for task in TASKS:
        if task.beat is not None:
            every = getattr(settings, task.beat.every)
            schedule[task.beat.entry] = {"task": task.name, "schedule": every,
                                         "options": {"queue": task.queue(settings), "expires": every}}  # fmt: skip
    return schedule


def queues(settings: Settings, roles: Sequence[Role] = tuple(Role)) -> list[str]:
    """The queues the workers of `roles` consume, in table order, without repeats (two settings may name one)."""
    names = [getattr(settings, field) for field, role in QUEUE_ROLES.items() if role in roles]
    return list(dict.fromkeys(names))


def worker_options(role: Role, settings: Settings, *, queue_names: Sequence[str] | None = None,
                   name: str | None = None, beat_schedule_file: Path | str | None = None) -> list[str]:  # fmt: skip
    """`celery worker`'s options for a worker of `role`: its queues (or `queue_names`), and for an io worker its
    pool and concurrency (a model worker's come from the settings: `model_worker_config`).
    `name`: the node name (`-n`); `beat_schedule_file`: run beat inside the worker (`-B`, tests only: exactly
    one beat may run per deployment)."""
    argv = ["-Q", ",".join(queue_names or queues(settings, [role]))]
    if role is Role.IO:
        argv += ["--pool", IO_POOL.name, "--concurrency", str(IO_POOL.concurrency)]
    if name is not None:
        argv += ["-n", name]
    # Task events are on by configuration (common/queue.py), so no `--events`. Gossip and mingle only
    # chatter between workers, which share nothing.
    argv += ["--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    if beat_schedule_file is not None:
        argv += ["-B", "--schedule", str(beat_schedule_file)]
    return argv


def worker_argv(role: Role, settings: Settings, program: Sequence[str] = ("celery",), **options: Any) -> list[str]:
    """The whole command line of a worker of `role` (`program`: how to run celery, e.g. `python -m celery`)."""
    return [*program, "-A", CELERY_APP, "worker", *worker_options(role, settings, **options)]


def beat_argv(schedule_file: Path | str, program: Sequence[str] = ("celery",)) -> list[str]:
    """The command line of the deployment's one beat; `schedule_file`: where beat keeps the last run times."""
    return [*program, "-A", CELERY_APP, "beat", "--schedule", str(schedule_file), "--loglevel", "INFO"]
