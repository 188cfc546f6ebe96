"""Worker liveness that catches "connected but no longer consuming" (celery#8030, #8082, #10205...).

A PID check or `celery inspect ping` passes for a worker whose broker consumer silently died, and
with one job per GPU a busy worker answers no ping at all. So liveness is proven by consumption:

* the worker's main process publishes a tiny `ping` task to a queue only it consumes
  (`liveness.<hostname>`), every PING seconds while no job is running;
* every task the worker starts (a ping or a real edit) writes a heartbeat record for its process:
  `started_at`, and `finished_at` when it ends;
* `python -m worker.liveness check` (the container's liveness probe) reads the records, without
  touching the broker, and passes when a task started or finished within STALE seconds, or a task
  is still running and started less than MAX_BUSY seconds ago.

A worker whose consumer is dead stops running pings, its records age, and the probe fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue
from kombu.exceptions import KombuError
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

PING_TASK = "worker.liveness.ping"


@dataclass(frozen=True)
class LivenessConfig:
    """Where heartbeat records live and how old they may get (seconds)."""

    directory: Path
    ping_seconds: float = 15.0
    stale_seconds: float = 60.0
    max_busy_seconds: float = 1860.0


LIVENESS_EXCHANGE = Exchange("faceedit.liveness", type="direct")


def liveness_queue(hostname: str) -> Queue:
    """The queue only worker `hostname` consumes, bound by its own name to one shared exchange."""
    name = f"liveness.{hostname}"
    return Queue(name, LIVENESS_EXCHANGE, routing_key=name)


# --- heartbeat records: one small JSON file per worker process ------------------------------------


def _record_path(directory: Path, pid: int) -> Path:
    return directory / f"{pid}.json"


def write_record(directory: Path, **fields: Any) -> None:
    """Atomically update this process's record (readers never see a half-written file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = _record_path(directory, os.getpid())
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    record.update(fields, pid=os.getpid())
    tmp = path.with_suffix(f".tmp{threading.get_ident()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def read_records(directory: Path) -> list[dict[str, Any]]:
    """Every process's record; unreadable files (a crash mid-rename) are skipped."""
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return records


def is_busy(directory: Path) -> bool:
    """True while some process of this worker runs a task (no ping needed to prove liveness then)."""
    return any(r.get("started_at", 0) > r.get("finished_at", 0) for r in read_records(directory))


def evaluate(records: list[dict[str, Any]], config: LivenessConfig, now: float) -> tuple[bool, str]:
    """(alive, reason) from heartbeat records; pure so the rule is testable on its own."""
    if not records:
        return False, f"no heartbeat in {config.directory}: the worker has not consumed any message yet"
    latest_activity = 0.0
    for record in records:
        started = float(record.get("started_at", 0))
        finished = float(record.get("finished_at", 0))
        if started > finished and now - started < config.max_busy_seconds:
            return True, f"running a task for {now - started:.0f}s (pid {record.get('pid')})"
        latest_activity = max(latest_activity, started, finished)
    age = now - latest_activity
    if age < config.stale_seconds:
        return True, f"consumed a message {age:.0f}s ago"
    return False, (
        f"no message consumed for {age:.0f}s (limit {config.stale_seconds:.0f}s): "
        "connected but not consuming, or a task stuck past its limit"
    )


class HeartbeatCollector(Collector):
    """What the probe sees, for Prometheus: `faceedit_worker_alive` (1 when `evaluate` passes) and the time of
    the latest heartbeat, read from the records at each scrape of the worker's exporter."""

    def __init__(self, config: LivenessConfig) -> None:
        self.config = config

    def collect(self) -> Iterator[GaugeMetricFamily]:
        records = read_records(self.config.directory)
        alive, _ = evaluate(records, self.config, time.time())
        yield GaugeMetricFamily(
            "faceedit_worker_alive",
            "1 when this worker passes its liveness check (it consumes messages), else 0.",
            value=1 if alive else 0,
        )
        latest = max(
            (float(r.get(key, 0)) for r in records for key in ("started_at", "finished_at")), default=0
        )
        yield GaugeMetricFamily(
            "faceedit_worker_last_heartbeat_timestamp_seconds",
            "Unix time a task (a liveness ping or a job) last started or finished in this worker; 0 before any.",
            value=latest,
        )


# --- wiring into a Celery worker -------------------------------------------------------------------


class _Pinger(threading.Thread):
    """Publishes a ping to the worker's own queue every `ping_seconds` while the worker is idle."""

    def __init__(self, app: Celery, hostname: str, config: LivenessConfig) -> None:
        super().__init__(name="liveness-pinger", daemon=True)
        self.app, self.queue, self.config = app, liveness_queue(hostname), config
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.config.ping_seconds):
            if is_busy(self.config.directory):
                continue
            try:
                self.app.send_task(
                    PING_TASK,
                    exchange=self.queue.exchange,
                    routing_key=self.queue.routing_key,
                    declare=[self.queue],
                    expires=self.config.stale_seconds,
                    ignore_result=True,
                )
            except (OSError, KombuError):  # a broker outage must not kill the pinger; the probe reports it
                logger.warning("liveness ping could not be published", exc_info=True)


def install(app: Celery, config: LivenessConfig) -> None:
    """Register the ping task and the signal handlers that keep heartbeat records for `app`'s worker."""
    pinger: dict[str, _Pinger] = {}

    @app.task(name=PING_TASK, ignore_result=True, acks_late=False)
    def ping() -> None:
        """Does nothing: being run is the proof (the heartbeat is written by task_prerun)."""

    @signals.worker_init.connect(weak=False)
    def _clear_old_records(**_: Any) -> None:
        config.directory.mkdir(parents=True, exist_ok=True)
        for path in config.directory.glob("*.json"):
            path.unlink(missing_ok=True)

    @signals.worker_ready.connect(weak=False)
    def _start_pinging(sender: Any, **_: Any) -> None:
        if sender.app is not app:
            return
        queue = liveness_queue(sender.hostname)
        sender.add_task_queue(
            queue.name, exchange=LIVENESS_EXCHANGE.name, exchange_type="direct", routing_key=queue.routing_key
        )
        pinger["thread"] = _Pinger(app, sender.hostname, config)
        pinger["thread"].start()

    @signals.worker_shutting_down.connect(weak=False)
    def _stop_pinging(**_: Any) -> None:
        if "thread" not in pinger:
            return
        pinger["thread"].stopped.set()
        pinger["thread"].join(timeout=10)  # a ping published after the delete would recreate the queue
        # Each pod has its own hostname: without this, every pod that ever ran leaves a queue behind.
        try:
            with app.connection_for_write() as connection:
                pinger["thread"].queue.bind(connection).delete()
        except (OSError, KombuError):
            logger.warning("liveness queue %s not deleted", pinger["thread"].queue.name, exc_info=True)

    @signals.task_prerun.connect(weak=False)
    def _started(sender: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is app:
            write_record(config.directory, started_at=time.time())

    @signals.task_postrun.connect(weak=False)
    def _finished(sender: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is app:
            write_record(config.directory, finished_at=time.time())


def config_from_settings() -> LivenessConfig:
    """The probe's and the worker's configuration, from the service settings."""
    from common.settings import get_settings

    settings = get_settings()
    return LivenessConfig(
        directory=Path(settings.liveness_dir),
        ping_seconds=settings.liveness_ping_seconds,
        stale_seconds=settings.liveness_stale_seconds,
        # A job may legitimately run until its deadline; a minute more before calling it stuck.
        max_busy_seconds=settings.job_deadline_seconds + 60,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.liveness check`: exit 0 when alive, 1 (with the reason) when not."""
    parser = argparse.ArgumentParser(prog="python -m worker.liveness", description=main.__doc__)
    parser.add_argument("command", choices=["check"])
    parser.parse_args(argv)
    config = config_from_settings()
    alive, reason = evaluate(read_records(config.directory), config, time.time())
    print(("alive: " if alive else "NOT alive: ") + reason, file=sys.stdout if alive else sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
