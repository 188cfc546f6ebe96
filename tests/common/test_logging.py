"""JSON log lines carry the bound edit id and never a secret or an image's bytes."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from common.logging import JsonFormatter, TextFormatter, current_context, log_context, redact


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.common.logging")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_edit_id_bound_by_context_and_released(captured) -> None:
    logger, stream = captured
    with log_context(edit_id="ed_1", image_id="img_1"):
        logger.info("claimed")
        with log_context(stage="invert"):
            logger.info("stage %s", "started")
    logger.info("outside")
    inner, nested, outside = _lines(stream)
    assert inner["edit_id"] == "ed_1" and inner["image_id"] == "img_1" and inner["message"] == "claimed"
    assert nested["edit_id"] == "ed_1" and nested["stage"] == "invert" and nested["message"] == "stage started"
    assert "edit_id" not in outside
    assert inner["level"] == "INFO" and inner["logger"] == "test.common.logging" and inner["time"].endswith("+00:00")


def test_context_is_per_task_not_global() -> None:
    async def job(edit_id: str) -> str:
        with log_context(edit_id=edit_id):
            await asyncio.sleep(0.01)
            return current_context()["edit_id"]

    async def both() -> list[str]:
        return await asyncio.gather(job("a"), job("b"))

    assert asyncio.run(both()) == ["a", "b"]


def test_secrets_and_bytes_are_redacted(captured) -> None:
    logger, stream = captured
    logger.info(
        "auth Bearer sk_live_abcdef123 to redis://user:hunter2@redis:6379/0 sig whsec_c2VjcmV0 "
        "url https://s3/x?X-Amz-Signature=deadbeef&a=1",
        extra={"api_key": "sk_live_zzz", "photo": b"\xff\xd8" * 5000, "headers": {"Authorization": "Basic xx"},
               "s3_secret_access_key": "minio-secret", "count": 3},
    )
    (line,) = _lines(stream)
    text = json.dumps(line)
    for secret in ("sk_live_abcdef123", "hunter2", "c2VjcmV0", "deadbeef", "sk_live_zzz", "minio-secret", "Basic xx"):
        assert secret not in text, secret
    assert line["photo"] == "<10000 bytes>"
    assert line["count"] == 3
    assert "redis://user:[redacted]@redis:6379/0" in line["message"]


def test_exception_is_logged_as_one_json_field(captured) -> None:
    logger, stream = captured
    try:
        raise ValueError("token=abc123 leaked?")
    except ValueError:
        logger.exception("failed")
    (line,) = _lines(stream)
    assert "ValueError" in line["exception"] and "abc123" not in line["exception"]


def test_text_format_also_redacts() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key Bearer abc.def", (), None)
    with log_context(edit_id="ed_9"):
        line = TextFormatter().format(record)
    assert "abc.def" not in line and "edit_id=ed_9" in line


def test_redact_keeps_long_text_bounded() -> None:
    assert len(redact("x" * 100_000)) < 2100


def test_redaction_is_linear_on_hostile_text() -> None:
    import time

    started = time.perf_counter()
    redact_text_input = ("a" * 1999 + " ") * 1  # one long word: the shape that made a scheme regex backtrack
    redact(redact_text_input)
    redact("x://" + "y" * 1990 + ":")
    assert time.perf_counter() - started < 0.5


def test_configure_logging_is_idempotent_and_keeps_foreign_handlers() -> None:
    import logging as stdlib_logging

    from common.logging import configure_logging

    root = stdlib_logging.getLogger()
    foreign = stdlib_logging.NullHandler()
    root.addHandler(foreign)
    saved_level = root.level
    try:
        configure_logging("INFO", "json")
        configure_logging("WARNING", "json")
        ours = [h for h in root.handlers if h.get_name() == "faceedit"]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        assert foreign in root.handlers and root.level == stdlib_logging.WARNING
    finally:
        for handler in [h for h in root.handlers if h.get_name() == "faceedit"] + [foreign]:
            root.removeHandler(handler)
        root.setLevel(saved_level)


def test_timed_tasks_routine_lines_are_left_out_but_their_failures_and_edits_stay() -> None:
    """make run's log showed beat's sweep every 5 s as three INFO lines each; only those go, and only at INFO."""
    from common.logging import QuietRoutineTasks
    from common.topology import PROCESS_EDIT, SWEEP_WEBHOOKS, TIMED_TASKS

    quiet = QuietRoutineTasks(TIMED_TASKS)

    def record(logger: str, level: int, message: str, *args) -> logging.LogRecord:
        return logging.LogRecord(logger, level, __file__, 1, message, args, None)

    sweep, edit = SWEEP_WEBHOOKS.name, PROCESS_EDIT.name
    assert not quiet.filter(record("celery.beat", logging.INFO, "Scheduler: Sending due task %s (%s)", "webhooks", sweep))
    assert not quiet.filter(record("celery.app.trace", logging.INFO, "Task %s[%s] succeeded in 0.01s: None", sweep, "1"))
    assert quiet.filter(record("celery.app.trace", logging.ERROR, "Task %s[%s] raised", sweep, "1"))
    assert quiet.filter(record("celery.worker.strategy", logging.INFO, "Task %s[%s] received", edit, "edt_1"))
    assert quiet.filter(record("worker", logging.INFO, "swept %s", sweep))  # our own lines about them stay


def test_configure_logging_quiets_timed_tasks_except_at_debug() -> None:
    from common.logging import QuietRoutineTasks, configure_logging

    root, saved_level = logging.getLogger(), logging.getLogger().level
    try:
        for level, quieted in (("INFO", True), ("DEBUG", False)):
            configure_logging(level, "text", quiet_tasks=("worker.webhooks.sweep",))
            (ours,) = [h for h in root.handlers if h.get_name() == "faceedit"]
            assert any(isinstance(f, QuietRoutineTasks) for f in ours.filters) is quieted
    finally:
        for handler in [h for h in root.handlers if h.get_name() == "faceedit"]:
            root.removeHandler(handler)
        root.setLevel(saved_level)
