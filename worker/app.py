"""The Celery app of the workers. Which tasks, queues, schedules and worker command lines: common/topology.py
(a model worker: `celery -A worker.app worker -Q edits ...`, its pool from the settings; an io worker:
`-Q io,webhooks --pool threads ...`).

One process per accelerator: `solo` (one job at a time) on a CPU, threads on a GPU (several jobs at once, their
renders batched: `common.topology.edit_jobs_at_once`); a message only when a job slot is free, late
acknowledgement: see `common.queue` for the settings and `common.lifecycle` for why a redelivered job is
harmless. The models load before the first job is consumed: in the main process for solo and threads, in each
child for prefork (CUDA cannot cross a fork).
"""

from __future__ import annotations

import logging
import time

from celery import signals

from common import tracing
from common.logging import configure_logging
from common.metrics import start_exporter
from common.queue import make_celery
from common.redis_client import redis_client
from common.settings import get_settings
from common.topology import TIMED_TASKS
from common.worker_offers import OffersPublisher
from worker import liveness

log = logging.getLogger("worker")

app = make_celery(get_settings(), name="faceedit-worker")
app.conf.include = ["worker.tasks", "worker.reaper", "worker.deliveries", "worker.retention"]
# Heartbeats for `python -m worker.liveness check`, the probe that notices a worker that stopped consuming.
_liveness = liveness.config_from_settings()
liveness.install(app, _liveness)


@signals.setup_logging.connect
def _logging(**_) -> None:
    # Connected, so Celery leaves logging to us: LOG_FORMAT/LOG_LEVEL, the edit id on every line, and the timed
    # tasks' and liveness pings' routine lines left out (every few seconds each; kept at LOG_LEVEL=DEBUG).
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, quiet_tasks=(*TIMED_TASKS, liveness.PING_TASK))


@signals.worker_init.connect
def _metrics_exporter(**_) -> None:
    settings = get_settings()
    try:
        start_exporter(settings.metrics_port, settings.metrics_host,
                       collectors=[liveness.HeartbeatCollector(_liveness)])
    except OSError as error:  # the port is taken (a second worker on this host): work on without metrics
        log.warning("metrics exporter not started on %s:%s: %s", settings.metrics_host, settings.metrics_port, error)


@signals.worker_process_init.connect
def _warm(**_) -> None:
    tracing.configure_tracing("faceedit-worker")  # off unless OTEL_TRACES_EXPORTER asks (common/tracing.py)
    # Sent by the solo pool in the main process and by prefork in each child, before consuming.
    from worker.runtime import get_runtime

    runtime = get_runtime()
    runtime.warm()
    _publish_offers(runtime)


_publisher: list[OffersPublisher] = []


def _publish_offers(runtime) -> None:
    """This model worker's offer (the inversions of its loaded bundle) in Redis while it lives and consumes
    (common/worker_offers.py): the API reads it to know whether SFE can be asked for."""
    settings = runtime.settings
    if settings.redis_url is None or _publisher:
        return

    def alive() -> bool:  # consuming, or just started (its first ping is not due yet: no record)
        records = liveness.read_records(_liveness.directory)
        return not records or liveness.evaluate(records, _liveness, time.time())[0]

    publisher = OffersPublisher(redis_client(settings.redis_url), settings.edits_queue, runtime.loaded_inversions,
                                alive, every=_liveness.ping_seconds, ttl=_liveness.stale_seconds)
    publisher.start()
    _publisher.append(publisher)


@signals.worker_shutting_down.connect
def _withdraw_offers(**_) -> None:
    while _publisher:
        _publisher.pop().stop()


@signals.celeryd_after_setup.connect
def _warm_threads(instance=None, **_) -> None:
    """The threads pool sends no worker_process_init: a model worker on threads (a GPU running several jobs at
    once) warms its models here, once logging is set up and before it consumes; an io worker (threads too)
    consumes no model queue."""
    pool_cls = getattr(instance, "pool_cls", None)
    if pool_cls is None or "thread" not in str(getattr(pool_cls, "__module__", pool_cls)):
        return
    if get_settings().edits_queue not in (instance.app.amqp.queues.consume_from or {}):
        return
    _warm()
