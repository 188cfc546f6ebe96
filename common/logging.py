"""Structured logs: one JSON object per line, carrying the edit id of whatever is being worked on.

`log_context(edit_id=...)` binds fields through contextvars, so every line logged inside it (the API
request, the Celery task, the pipeline's progress callbacks) carries them without passing a logger
around. Redaction is applied to every record: secrets (keys, passwords, tokens, credentials in URLs)
and raw bytes (photos) never reach the log stream.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import traceback
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from common.tracing import trace_id  # the trace a line was logged in, so a line leads to its trace

# Immutable default (a tuple of pairs): a dict default would be shared and mutated across contexts.
_context: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar(
    "faceedit_log_context", default=()
)

REDACTED = "[redacted]"
_MAX_STRING = 2000
_HANDLER_NAME = "faceedit"
# Field names whose values are secrets whatever they look like.
_SECRET_NAME = re.compile(r"(pass(word)?|secret|token|api[_-]?key|authorization|cookie|credential|private)", re.I)
# Secrets inside free text: bearer tokens, `whsec_` signing secrets, user:password@ in URLs, key=value.
_TEXT_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), REDACTED),
    # Bounded repetitions: an unbounded scheme pattern backtracks quadratically on long words.
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]{0,15}://[^:/@\s]{0,256}:)[^@\s]{1,256}@"), r"\1" + REDACTED + "@"),
    (
        re.compile(r"(?i)\b((?:api[_-]?key|password|secret|token|x-amz-signature|signature)=)[^&\s\"']+"),
        r"\1" + REDACTED,
    ),
)
# Attributes every LogRecord has; anything else was passed through `extra=` and is logged as a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def redact_text(text: str, limit: int = _MAX_STRING) -> str:
    """`text` with its length capped and embedded secrets replaced."""
    if len(text) > limit:
        text = text[:limit] + f"...[{len(text) - limit} more chars]"
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(value: Any, name: str = "") -> Any:
    """A JSON-safe copy of `value` with secrets and binary payloads removed, recursively."""
    if name and _SECRET_NAME.search(name) and value is not None:
        return REDACTED
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return redact_text(str(value))


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind `fields` (e.g. `edit_id`, `image_id`) to every log line emitted inside the block."""
    merged = {**dict(_context.get()), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(tuple(merged.items()))
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """The fields bound by the enclosing `log_context` blocks."""
    return dict(_context.get())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, bound context, `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, value in _context.get():
            entry[key] = redact(value, key)
        if current_trace := trace_id():
            entry["trace_id"] = current_trace
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = redact(value, key)
        if record.exc_info:
            entry["exception"] = redact_text(
                "".join(traceback.format_exception(*record.exc_info)), limit=4 * _MAX_STRING
            )
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with the same context and the same redaction."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = redact_text(super().format(record))
        fields = [f"{k}={redact(v, k)}" for k, v in _context.get()]
        if current_trace := trace_id():
            fields.append(f"trace_id={current_trace}")
        context = " ".join(fields)
        return f"{line} [{context}]" if context else line


class QuietRoutineTasks(logging.Filter):
    """Drops Celery's INFO lines (beat's "Sending due task", the worker's "received" and "succeeded") about
    tasks that run on a timer: beat sends the webhook sweep every few seconds, and their three lines each
    would bury the lines about edits. Their warnings and errors, and everything at LOG_LEVEL=DEBUG, still show."""

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__()
        self.task_names = tuple(task_names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not record.name.startswith("celery"):
            return True
        message = record.getMessage()
        return not any(name in message for name in self.task_names)


def configure_logging(level: str = "INFO", fmt: Literal["json", "text"] = "json",
                      quiet_tasks: Iterable[str] = ()) -> None:  # fmt: skip
    """Send every log record to stderr in the chosen format; idempotent (apps and tests call it often).

    Only the handler installed here is replaced: other handlers on the root logger (pytest's capture)
    stay. uvicorn's and Celery's own handlers are dropped so their records come through this one.
    `quiet_tasks`: routine task names whose Celery INFO lines are dropped at INFO (`QuietRoutineTasks`).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name(_HANDLER_NAME)
    if quiet_tasks and level.upper() != "DEBUG":
        handler.addFilter(QuietRoutineTasks(quiet_tasks))
    root = logging.getLogger()
    for existing in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
