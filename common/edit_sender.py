"""How the API sends an edit job: the message Celery's `send_task` would put on kombu's Redis transport, and
the `task-sent` event Flower shows, written in one Redis round trip.

Why not `send_task` itself: kombu opens a Redis client object per command, declares the queue, runs its
retry machinery and publishes the event as a second command: 0.75 ms of the API's CPU per send against 0.26 ms
here, paired over 30 rounds (docs/BENCHMARKS.md, "Sending an edit job"), about an eighth of a submit's CPU.
The task message itself is still Celery's (`app.amqp.as_task_v2` builds its headers, body and event fields);
only the envelope, kombu's Redis format (a JSON object with a base64 body, LPUSHed onto the queue's list), is
written here. tests/common/test_edit_sender.py holds it to what `send_task` writes, field by field, under the
locked kombu (requirements/lock.txt), and the workers in tests/worker consume it like any other. A setting
that would make `send_task` write something else (a key prefix, priorities, another serializer...) is refused
when the sender is built, so the API does not start rather than queue jobs no worker sees.

The reaper and other senders keep `common.queue.enqueue_edit` (rare sends, from inside the worker).
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from typing import Any

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from celery.utils.time import utcoffset
from kombu.exceptions import OperationalError
from redis import Redis

from common import tracing
from common.queue import broker_url
from common.redis_client import redis_client
from common.settings import Settings
from common.topology import PROCESS_EDIT

EVENTS_EXCHANGE = "celeryev"  # celery.events.dispatcher's exchange
SENT_ROUTING_KEY = "task.sent"
REDIS_SCHEMES = ("redis", "rediss", "redis+socket")
# kombu Redis transport options that change how workers consume or how connections behave, not what a send
# writes. Any other (global_keyprefix, fanout_prefix/fanout_patterns, priority_steps, sep, body_encoding, or an
# option of a newer kombu) is refused.
REPRODUCED_TRANSPORT_OPTIONS = frozenset({
    "visibility_timeout", "polling_interval", "queue_order_strategy", "ack_emulation", "unacked_key",
    "unacked_index_key", "unacked_mutex_key", "unacked_mutex_expire", "unacked_restore_limit",
    "unacked_restore_interval", "unacked_restore_throttle", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive", "socket_keepalive_options", "max_connections", "health_check_interval",
    "retry_on_timeout", "client_name",
})  # fmt: skip


class UnsupportedSendSetting(ValueError):
    """The Celery configuration asks for something EditSender does not write; the message names the fix."""

    def __init__(self, setting: str):
        super().__init__(
            f"EditSender writes kombu's Redis message by hand and does not reproduce {setting}: with it, "
            f"jobs would be queued where no worker reads them. Remove the setting, or send edit jobs with Celery's "
            f"send_task: build the API without EditSender (api/main.py: common.queue.enqueue_edit).")


def unsupported_settings(app: Celery) -> list[str]:
    """What in `app`'s configuration would make `send_task` write a message other than EditSender's."""
    conf, found = app.conf, []
    scheme = str(conf.broker_url or "").partition("://")[0]
    if scheme not in REDIS_SCHEMES:
        found.append(f"the broker {scheme or '(none)'}:// (only Redis: {', '.join(REDIS_SCHEMES)})")
    options = sorted(set(conf.broker_transport_options or {}) - REPRODUCED_TRANSPORT_OPTIONS)
    found += [f"broker_transport_options[{name!r}]" for name in options]
    if conf.task_serializer != "json":
        found.append(f"task_serializer={conf.task_serializer!r} (only json)")
    if conf.task_compression:
        found.append(f"task_compression={conf.task_compression!r}")
    if conf.task_protocol != 2:
        found.append(f"task_protocol={conf.task_protocol!r} (only 2)")
    if conf.task_default_priority is not None or conf.task_queue_max_priority is not None:
        found.append("message priorities (task_default_priority, task_queue_max_priority)")
    if conf.task_queues:
        found.append("task_queues (declared queues may bind other exchanges and routing keys)")
    if conf.task_default_delivery_mode not in ("persistent", 2):
        found.append(f"task_default_delivery_mode={conf.task_default_delivery_mode!r}")
    # send_task publishes straight onto the queue's list only for a direct exchange whose routing key is the
    # queue's name (Celery's default for a queue it creates); anything else goes through kombu's bindings.
    route = app.amqp.router.route({}, PROCESS_EDIT.name)
    queue = route.get("queue")
    if set(route) != {"queue"} or queue.exchange.type != "direct" or queue.routing_key != queue.name:
        found.append(f"the routing of {PROCESS_EDIT.name} other than straight onto its queue ({route})")
    return found


class EditSender:
    """Sends `worker.tasks.process_edit(edit_id)` with `task_id = edit_id` onto the edits queue (thread-safe:
    redis-py's connection pool is)."""

    def __init__(self, app: Celery, settings: Settings, client: Redis | None = None):
        """Raises UnsupportedSendSetting for a configuration whose messages it would not write as kombu does."""
        refused = unsupported_settings(app)
        if refused:
            raise UnsupportedSendSetting("; ".join(refused))
        self.app = app
        self.queue = PROCESS_EDIT.queue(settings)
        self.redis = client if client is not None else redis_client(broker_url(settings))
        self.sent_events = bool(app.conf.task_send_sent_event)
        self.hostname = anon_nodename()  # what Celery's producer and event dispatcher call this process
        self.pid = os.getpid()
        db = self.redis.connection_pool.connection_kwargs.get("db", 0)
        # kombu's fanout channel with fanout_prefix and fanout_patterns (both on by default)
        self.event_channel = f"/{db}.{EVENTS_EXCHANGE}/{SENT_ROUTING_KEY}"

    def send(self, edit_id: str) -> None:
        """Queue the edit's job (and its `task-sent` event); kombu's OperationalError when Redis is unreachable,
        as from `send_task`."""
        headers, properties, body, event = self.app.amqp.as_task_v2(
            edit_id, PROCESS_EDIT.name, args=[edit_id], reply_to=self.app.thread_oid, origin=self.hostname,
            create_sent_event=self.sent_events, ignore_result=None)  # None: what send_task leaves it
        with tracing.publishing(PROCESS_EDIT.name, edit_id, headers):
            message = _envelope(body, headers, {**properties, "delivery_mode": 2}, exchange="",
                                routing_key=self.queue)
            pipeline = self.redis.pipeline(transaction=False)
            pipeline.lpush(self.queue, json.dumps(message))
            if event is not None:
                pipeline.publish(self.event_channel, json.dumps(self._sent_event(event)))
            try:
                pipeline.execute()
            except redis.RedisError as error:
                raise OperationalError(f"the broker is unreachable: {type(error).__name__}: {error}") from error

    def _sent_event(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The `task-sent` event as celery.events.EventDispatcher.publish wraps it (a transient message)."""
        event = {"hostname": self.hostname, "utcoffset": utcoffset(), "pid": self.pid, "clock": self.app.clock.forward(),
                 **fields, "queue": self.queue, "exchange": "", "routing_key": self.queue}
        event.update(timestamp=time.time(), type="task-sent")
        return _envelope(event, {"hostname": self.hostname}, {"delivery_mode": 1}, exchange=EVENTS_EXCHANGE,
                         routing_key=SENT_ROUTING_KEY)

    def close(self) -> None:
        self.redis.close()


def _envelope(body: Any, headers: dict[str, Any], properties: dict[str, Any], exchange: str,
              routing_key: str) -> dict[str, Any]:
    """kombu's Redis transport format of a JSON message (virtual Channel.prepare_message + basic_publish)."""
    encoded = base64.b64encode(json.dumps(body).encode()).decode()
    return {
        "body": encoded,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {**properties, "delivery_info": {"exchange": exchange, "routing_key": routing_key},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    }
