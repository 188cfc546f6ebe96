"""`EditSender` writes what Celery's `send_task` writes (the task message and its `task-sent` event), and kombu
reads it back as a Celery task message. (A worker running jobs sent this way: every test in tests/worker.)"""

from __future__ import annotations

import base64
import json
import time

import pytest
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError
from redis import Redis

from api.processes import free_port
from common.edit_sender import EditSender, UnsupportedSendSetting
from common.queue import enqueue_edit, make_celery
from common.topology import PROCESS_EDIT
from tests.services.settings import build_settings, drop_queues

pytestmark = pytest.mark.services


@pytest.fixture
def settings(redis_url, tmp_path):
    values = build_settings("sqlite://", redis_url, storage_dir=tmp_path, tag="sender")
    yield values
    drop_queues(values)


def _decoded(raw: bytes) -> dict:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def _sent(client: Redis, queue: str, channel: str, send) -> tuple[dict, dict]:
    """The message `send()` queued and the event it published on `channel`."""
    with client.pubsub() as events:
        events.subscribe(channel)
        assert events.get_message(timeout=2)["type"] == "subscribe"
        send()
        event = None
        deadline = time.monotonic() + 5
        while event is None and time.monotonic() < deadline:
            event = events.get_message(timeout=1)
    assert event is not None, "no task-sent event"
    return _decoded(client.rpop(queue)), _decoded(event["data"])


def _without(message: dict, *fields: str) -> dict:
    """`message` less per-send values: kombu's delivery tag, the event's clock and time."""
    out = {**message, "properties": {k: v for k, v in message["properties"].items() if k != "delivery_tag"}}
    if isinstance(out["body"], dict):
        out["body"] = {k: v for k, v in out["body"].items() if k not in fields}
    return out


def test_the_message_and_the_event_are_those_send_task_writes(settings):
    app = make_celery(settings, name="faceedit-api")
    sender = EditSender(app, settings)
    client = Redis.from_url(settings.redis_url)
    try:
        queue, channel = settings.edits_queue, sender.event_channel  # kombu's: /<db>.celeryev/task.sent
        by_celery = _sent(client, queue, channel, lambda: enqueue_edit(app, settings, "edt_same"))
        by_sender = _sent(client, queue, channel, lambda: sender.send("edt_same"))
    finally:
        sender.close()
        client.close()
    for celery_message, our_message in zip(by_celery, by_sender, strict=True):
        assert our_message["properties"]["delivery_tag"] != celery_message["properties"]["delivery_tag"]
        assert _without(our_message, "clock", "timestamp") == _without(celery_message, "clock", "timestamp")
    message, event = by_sender
    assert message["headers"]["task"] == PROCESS_EDIT.name and message["headers"]["id"] == "edt_same"
    assert message["body"][0] == ["edt_same"]
    assert event["body"]["type"] == "task-sent" and event["body"]["clock"] > by_celery[1]["body"]["clock"]


def test_kombu_reads_it_as_a_celery_task_message(settings):
    app = make_celery(settings, name="faceedit-api")
    sender = EditSender(app, settings)
    try:
        sender.send("edt_read")
    finally:
        sender.close()
    with app.connection_for_read() as connection, connection.SimpleQueue(settings.edits_queue) as queue:
        message = queue.get(timeout=5)
        assert message.headers["task"] == PROCESS_EDIT.name and message.headers["id"] == "edt_read"
        assert message.decode()[0] == ["edt_read"]
        assert message.delivery_info["routing_key"] == settings.edits_queue
        message.ack()


def test_an_unreachable_broker_is_kombus_operational_error(tmp_path):
    settings = build_settings("sqlite://", f"redis://127.0.0.1:{free_port()}/0", storage_dir=tmp_path)
    sender = EditSender(make_celery(settings), settings)
    with pytest.raises(OperationalError):  # the route answers 503 broker_unavailable to it
        sender.send("edt_nowhere")


@pytest.mark.parametrize(("setting", "value", "named"), [
    ("broker_transport_options", {"global_keyprefix": "faceedit:"}, "global_keyprefix"),
    ("broker_transport_options", {"fanout_prefix": False}, "fanout_prefix"),
    ("broker_transport_options", {"priority_steps": [0, 5]}, "priority_steps"),
    ("broker_transport_options", {"some_future_option": 1}, "some_future_option"),
    ("task_serializer", "pickle", "task_serializer='pickle'"),
    ("task_compression", "gzip", "task_compression='gzip'"),
    ("task_protocol", 1, "task_protocol=1"),
    ("task_default_priority", 5, "priorities"),
    ("task_queue_max_priority", 10, "priorities"),
    ("task_routes", {PROCESS_EDIT.name: {"queue": "edits", "priority": 3}}, "routing of worker.tasks.process_edit"),
    ("task_queues", [Queue("edits", Exchange("jobs", type="topic"), routing_key="edit.#")], "task_queues"),
    ("task_default_delivery_mode", "transient", "task_default_delivery_mode"),
    ("broker_url", "amqp://guest@localhost//", "the broker amqp://"),
])  # fmt: skip
def test_a_setting_it_does_not_reproduce_is_refused_at_construction(settings, setting, value, named):
    app = make_celery(settings)
    app.conf[setting] = value
    with pytest.raises(UnsupportedSendSetting) as refused:
        EditSender(app, settings)
    message = str(refused.value)
    assert named in message and "send_task" in message and "api/main.py" in message, message


def test_settings_of_consumption_and_connections_are_accepted(settings):
    app = make_celery(settings)
    app.conf.broker_transport_options = {"visibility_timeout": 7200, "socket_timeout": 5, "max_connections": 20}
    EditSender(app, settings).close()
