"""The one settings builder of the tests: a deployment of its own on shared servers (private queue
names, a private bucket or folder), generous limits unless a test asks for tight ones, and named
timing presets for tests that wait on leases, cancels and the reaper."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from common import topology

REPO_ROOT = Path(__file__).resolve().parents[2]

# The service tests drive one key hard; rate limits and queue caps have their own tests (marker `trust`).
GENEROUS_LIMITS = dict(
    rate_limit_per_second=1000.0,
    rate_limit_burst=10000,
    submit_rate_per_second=1000.0,
    submit_rate_burst=10000,
    max_queued_per_owner=10000,
    max_queued_total=100000,
    max_queued_cost_seconds_per_owner=1e7,
)
# Leases, cancels and the reaper act within a test's patience.
FAST_TIMINGS = dict(
    lease_seconds=4.0,
    heartbeat_seconds=1.0,
    reaper_interval_seconds=1.0,
    cancel_check_seconds=0.1,
    progress_write_seconds=0.1,
    wait_poll_seconds=0.05,
    job_deadline_seconds=600,
)
# Kills and restarts recovered within seconds; webhooks retried quickly to a loopback receiver.
FAULT_TIMINGS = dict(
    lease_seconds=2.0,
    heartbeat_seconds=0.5,
    reaper_interval_seconds=0.5,
    cancel_check_seconds=0.2,
    progress_write_seconds=0.2,
    job_deadline_seconds=600,
    max_attempts=6,
    webhook_allow_networks="127.0.0.0/8",
    webhook_allow_ports="1024-65535",  # the loopback receivers listen on free ports
    webhook_sweep_seconds=0.5,
    webhook_retry_base_seconds=0.3,
    webhook_retry_max_seconds=2.0,
    webhook_timeout_seconds=2.0,
    webhook_max_attempts=30,
    max_queued_per_owner=1000,
    max_queued_total=10000,
)


def build_settings(database_url: str, redis_url: str, *, s3_endpoint: str | None = None,
                   storage_dir: Path | None = None, model_dir: Path | None = None, tag: str = "", **overrides):
    """Settings for one test deployment: S3 at `s3_endpoint` (a private bucket) or local storage in
    `storage_dir` (no web app served from it), private queues (every queue setting of common/topology.py) named
    `edits-<tag><hex>`, `io-<tag><hex>`..."""
    from common.settings import Settings

    suffix = f"{tag}{uuid.uuid4().hex[:8]}"
    values: dict = {
        "database_url": database_url,
        "redis_url": redis_url,
        "model_dir": model_dir,
        **{field: f"{field.removesuffix('_queue')}-{suffix}" for field in topology.QUEUE_ROLES},
        **GENEROUS_LIMITS,
        # an edit naming no inversion runs e4e (`auto` would pick the dev bundle's SFE): the fault and end-to-end
        # tests' timings are e4e's; SFE has its own tests (tests/worker/test_group_edit.py)
        "default_inversion": "e4e",
        # no inversion prepared at upload: the tests that follow a new photo's first edit (its align and invert
        # stages, a cache miss) would race it; tests/worker/test_prepared_inversion.py turns it on
        "prepare_inversions": 0,
    }
    if s3_endpoint is not None:
        values.update(storage_backend="s3", s3_endpoint_url=s3_endpoint, s3_bucket=f"faceedit-{suffix}",
                      s3_access_key_id="testing", s3_secret_access_key="testing", s3_create_bucket=True)
    elif storage_dir is not None:
        values.update(storage_backend="local", storage_dir=storage_dir, web_dir=storage_dir / "no-web")
    values.update(overrides)
    return Settings(**values)


def local_settings(database_url: str, storage_dir: Path, **overrides):
    """A deployment on local storage in `storage_dir` and the session's Redis (unless `redis_url`), generous
    limits unless a test asks for tight ones: what the attack tests (marker `trust`) run against."""
    from tests.services.provision import require

    redis_url = overrides.pop("redis_url", None) or require("redis")
    return build_settings(database_url, redis_url, storage_dir=storage_dir, tag="trust-", **overrides)


def fault_settings(database_url: str, redis_url: str, storage_dir: Path, model_dir: Path, **overrides):
    """FAULT_TIMINGS on local storage: short leases and a fast beat, so kills and restarts are recovered
    within seconds."""
    return build_settings(database_url, redis_url, storage_dir=storage_dir, model_dir=model_dir, tag="f",
                          **{**FAULT_TIMINGS, **overrides})


def settings_env(settings) -> dict[str, str]:
    """The environment that reproduces `settings` in a child process."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[name.upper()] = str(value)
    return env


def drop_queues(settings) -> None:
    """Remove a test's private queues (and kombu's bindings of them) from the shared Redis."""
    from redis import Redis

    client = Redis.from_url(settings.redis_url)
    try:
        for queue in topology.queues(settings):
            client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    finally:
        client.close()
