"""common/topology.py is the whole job topology: the worker app registers exactly its tasks, Celery's routes and
beat schedule come from it, and the command lines it writes start workers of the right role."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from common import topology
from common.queue import celery_config
from common.settings import REPO_ROOT, Settings

SETTINGS = Settings(edits_queue="e", io_queue="i", webhooks_queue="w", redis_url="redis://x",
                    reaper_interval_seconds=7, orphan_sweep_interval_seconds=123)  # fmt: skip


def test_every_queue_setting_has_a_role() -> None:
    assert set(topology.QUEUE_ROLES) == {name for name in Settings.model_fields if name.endswith("_queue")}
    assert set(topology.QUEUE_ROLES.values()) == set(topology.Role)


def test_the_worker_app_registers_exactly_the_tables_tasks() -> None:
    script = ("import json; from worker.app import app; app.loader.import_default_modules(); "
              "print(json.dumps(sorted(name for name in app.tasks if not name.startswith('celery.'))))")
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:9/0"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    registered = set(json.loads(done.stdout.strip().splitlines()[-1])) - {"worker.liveness.ping"}
    assert registered == {task.name for task in topology.TASKS}


def test_routes_and_beat_come_from_the_table() -> None:
    config = celery_config(SETTINGS)
    assert config["task_routes"] == {
        "worker.tasks.process_edit": {"queue": "e"},
        "worker.tasks.detect_faces": {"queue": "e"},
        "worker.webhooks.deliver": {"queue": "w"},
        "worker.reaper.reap": {"queue": "i"},
        "worker.webhooks.sweep": {"queue": "i"},
        "worker.retention.expire_old_data": {"queue": "i"},
        "worker.retention.sweep_orphan_objects": {"queue": "i"},
    }
    beat = config["beat_schedule"]
    assert set(beat) == {"reap", "webhooks", "retention", "orphans"}
    assert beat["reap"] == {"task": "worker.reaper.reap", "schedule": 7, "options": {"queue": "i", "expires": 7}}
    assert beat["orphans"]["schedule"] == 123 and beat["orphans"]["options"]["queue"] == "i"
    assert all(task.role is topology.Role.IO for task in topology.TASKS if task.beat)  # never wait on a model


def test_worker_command_lines() -> None:
    assert topology.worker_argv(topology.Role.MODEL, SETTINGS) == [
        "celery", "-A", "worker.app", "worker", "-Q", "e",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO"]  # fmt: skip  (the pool: from the settings)
    io = topology.worker_argv(topology.Role.IO, SETTINGS, ["python", "-m", "celery"], name="io@%h")
    assert io[:5] == ["python", "-m", "celery", "-A", "worker.app"]
    assert io[io.index("-Q") + 1] == "i,w" and io[io.index("--pool") + 1] == "threads" and "io@%h" in io
    # Two settings naming one queue: consumed once.
    same = Settings(io_queue="light", webhooks_queue="light", redis_url="redis://x")
    assert topology.queues(same, [topology.Role.IO]) == ["light"]
    everything = topology.worker_options(topology.Role.MODEL, SETTINGS, queue_names=topology.queues(SETTINGS),
                                         beat_schedule_file="/tmp/beat")  # fmt: skip
    assert everything[1] == "e,i,w" and everything[-3:] == ["-B", "--schedule", "/tmp/beat"]
    assert topology.beat_argv("s") == ["celery", "-A", "worker.app", "beat", "--schedule", "s", "--loglevel", "INFO"]


def test_a_model_worker_runs_one_job_on_a_cpu_and_several_on_a_gpu() -> None:
    """The pool comes from DEVICE and EDIT_JOBS_PER_WORKER through Celery's configuration (one command line for
    both images); the render batches only when several jobs run at once."""
    from worker.runtime import render_config

    cpu, gpu = Settings(redis_url="redis://x"), Settings(redis_url="redis://x", device="cuda:1")
    assert topology.pool(topology.Role.MODEL, cpu) == topology.Pool("solo")
    assert topology.pool(topology.Role.MODEL, gpu) == topology.Pool("threads", topology.GPU_EDIT_JOBS) != \
        topology.pool(topology.Role.MODEL, cpu)
    assert {k: celery_config(cpu)[k] for k in ("worker_pool", "worker_concurrency")} == \
        {"worker_pool": "solo", "worker_concurrency": 1}
    assert {k: celery_config(gpu)[k] for k in ("worker_pool", "worker_concurrency")} == \
        {"worker_pool": "threads", "worker_concurrency": topology.GPU_EDIT_JOBS}
    two = Settings(redis_url="redis://x", edit_jobs_per_worker=2, edit_batch_max=4, edit_batch_wait_ms=1.5)
    one_gpu = Settings(redis_url="redis://x", device="cuda", edit_jobs_per_worker=1)
    assert topology.pool(topology.Role.MODEL, two) == topology.Pool("threads", 2)
    assert topology.pool(topology.Role.MODEL, one_gpu) == topology.Pool("solo")
    assert topology.pool(topology.Role.IO, gpu) == topology.IO_POOL  # io workers are never batched
    assert (render_config(cpu).batch_max, render_config(gpu).batch_max, render_config(one_gpu).batch_max) == (1, 16, 1)
    assert (render_config(two).batch_max, render_config(two).batch_wait_ms) == (4, 1.5)
    # an io worker's command line names its pool, which overrides the configuration
    io = topology.worker_argv(topology.Role.IO, gpu)
    assert io[io.index("--pool") + 1] == "threads" and "--pool" not in topology.worker_argv(topology.Role.MODEL, gpu)
