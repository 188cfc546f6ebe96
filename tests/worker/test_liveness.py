"""The liveness probe passes for a consuming worker and fails once it stops consuming while connected."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery

from api.processes import stop_process
from worker.liveness import LivenessConfig, evaluate, read_records

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def test_evaluate_rules(tmp_path: Path) -> None:
    config = LivenessConfig(directory=tmp_path, stale_seconds=60, max_busy_seconds=600)
    now = 10_000.0
    assert evaluate([], config, now)[0] is False
    assert evaluate([{"started_at": now - 5, "finished_at": now - 4}], config, now)[0] is True
    assert evaluate([{"started_at": now - 100, "finished_at": now - 99}], config, now)[0] is False
    # A job in progress keeps the worker alive until it overruns max_busy_seconds.
    assert evaluate([{"started_at": now - 500, "finished_at": now - 900}], config, now)[0] is True
    alive, reason = evaluate([{"started_at": now - 700, "finished_at": now - 900}], config, now)
    assert not alive and "not consuming" in reason
    # Several processes (prefork): one recent record is enough.
    assert evaluate([{"started_at": 1, "finished_at": 2}, {"started_at": now - 1}], config, now)[0] is True


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _start_worker(tmp_path: Path, heartbeats: Path, queue: str, hostname: str) -> subprocess.Popen:
    (tmp_path / "probe_app.py").write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        from celery import Celery
        from worker.liveness import LivenessConfig, install

        app = Celery("probe_app", broker={REDIS_URL!r})
        app.conf.update(task_default_queue={queue!r}, worker_prefetch_multiplier=1, broker_heartbeat=0)
        install(app, LivenessConfig(directory=Path({str(heartbeats)!r}), ping_seconds=0.5,
                                    stale_seconds=4, max_busy_seconds=30))

        @app.task(name="probe_app.sleep")
        def sleep(seconds):
            time.sleep(seconds)
    """))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "probe_app", "worker", "-P", "solo", "-n", hostname,
         "-Q", queue, "--without-gossip", "--without-mingle", "-l", "INFO"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.services
def test_probe_fails_when_connected_worker_stops_consuming(tmp_path: Path) -> None:
    heartbeats = tmp_path / "heartbeat"
    queue = f"liveness-test-{uuid.uuid4().hex[:8]}"
    hostname = f"probe-{uuid.uuid4().hex[:8]}@test"
    worker = _start_worker(tmp_path, heartbeats, queue, hostname)
    config = LivenessConfig(directory=heartbeats, stale_seconds=4, max_busy_seconds=30)
    client = Celery("probe_client", broker=REDIS_URL)
    try:
        _wait_for(lambda: evaluate(read_records(heartbeats), config, time.time())[0], 60, "first heartbeat")

        # A job longer than the stale limit: pings are not run meanwhile, the busy record keeps it alive.
        client.send_task("probe_app.sleep", args=[6], queue=queue)
        _wait_for(lambda: any(r.get("started_at", 0) > r.get("finished_at", 0)
                              for r in read_records(heartbeats)), 20, "the job to start")
        time.sleep(5)
        assert evaluate(read_records(heartbeats), config, time.time())[0]

        # Still connected, no longer consuming anything: the failure mode of celery#8030.
        _wait_for(lambda: not any(r.get("started_at", 0) > r.get("finished_at", 0)
                                  for r in read_records(heartbeats)), 20, "the job to finish")
        replies = client.control.cancel_consumer(queue, destination=[hostname], reply=True, timeout=5)
        replies += client.control.cancel_consumer(
            f"liveness.{hostname}", destination=[hostname], reply=True, timeout=5)
        assert len(replies) == 2, replies
        assert worker.poll() is None
        _wait_for(lambda: not evaluate(read_records(heartbeats), config, time.time())[0], 15, "probe failure")
        alive, reason = evaluate(read_records(heartbeats), config, time.time())
        assert "not consuming" in reason
        assert client.control.ping(destination=[hostname], timeout=3), "the worker itself still answers"
    finally:
        output = stop_process(worker)
        client.close()
        from redis import Redis

        Redis.from_url(REDIS_URL).delete(f"liveness.{hostname}", queue)  # left by the dead consumer
    assert "Traceback" not in output, output


@pytest.mark.services
def test_ping_queue_is_removed_at_shutdown(tmp_path: Path) -> None:
    """Each pod has its own hostname: a queue left per pod would pile up under autoscaling."""
    from redis import Redis

    heartbeats, hostname = tmp_path / "heartbeat", f"probe-{uuid.uuid4().hex[:8]}@test"
    config = LivenessConfig(directory=heartbeats, stale_seconds=4)
    worker = _start_worker(tmp_path, heartbeats, f"liveness-test-{uuid.uuid4().hex[:8]}", hostname)
    try:
        _wait_for(lambda: evaluate(read_records(heartbeats), config, time.time())[0], 60, "first heartbeat")
    finally:
        output = stop_process(worker)
    redis = Redis.from_url(REDIS_URL)
    assert not redis.keys(f"*liveness.{hostname}*"), output[-2000:]
