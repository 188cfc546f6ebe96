"""SQLAlchemy models, every table in one metadata (so Alembic autogenerate sees them all): API keys, photos,
presigned uploads, edit jobs, idempotency keys and webhook bookkeeping.

The `edits` row is the single source of truth for a job; Celery only carries its id. State changes
go through `common.lifecycle` (one conditional UPDATE each).
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.edit_contract import EditSpec
from common.faces import FaceStatus

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """`prefix_` + 26 Crockford base32 chars: 48-bit millisecond time then 80 random bits (sortable)."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = [_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26))]
    return f"{prefix}_{''.join(chars)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use common.models.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class ApiKey(Base):
    """A bearer key; only its SHA-256 is stored. Everything a key creates belongs to its `owner`."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Image(Base):
    """An uploaded photo; its bytes live in storage at `originals/{id}`."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    format: Mapped[str] = mapped_column(String(10))
    width: Mapped[int] = mapped_column(Integer)  # after EXIF orientation
    height: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Faces found once per photo by a model worker (worker.detection): [{index, box: [l, t, r, b], score}],
    # largest first; `faces_status` pending → done | failed (`faces` stays null until done).
    faces: Mapped[list[Any] | None] = mapped_column(default=None)
    faces_status: Mapped[str] = mapped_column(String(10), default=FaceStatus.PENDING,
                                              server_default=FaceStatus.PENDING.value)
    # Each face's 68 landmarks ([68][2] photo pixels, the order of `faces`): what aligns it, so an edit on any
    # worker skips the search (worker.detection). Never served; null on rows from before they were kept.
    landmarks: Mapped[list[Any] | None] = mapped_column(default=None)

    __table_args__ = (Index("ix_images_owner_created", "owner", "created_at"),)


class Upload(Base):
    """A presigned upload slot: the client puts bytes at `uploads/{id}`, then claims them as an image."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    max_bytes: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    image_id: Mapped[str | None] = mapped_column(String(40), default=None)  # set once consumed


# The edit contract's fields with a column of their own; any other (a parameter added since) is kept in
# `Edit.options`, so a new edit parameter needs no migration.
_SPEC_COLUMNS = ("changes", "faces", "alphas", "beta", "mode", "output_format")


class Edit(Base):
    """One edit job: its parameters (`spec`, a `common.edit_contract.EditSpec`), state, lease, results and
    timings."""

    __tablename__ = "edits"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    # input: the normalized edit (`spec`); the one-change form is stored as one change of weight 1
    changes: Mapped[list[Any]]  # [{neutral, target, weight}]
    alphas: Mapped[list[Any]]
    faces: Mapped[Any] = mapped_column(JSON, nullable=False, default="largest")  # "largest" | "all" | [index, ...]
    beta: Mapped[float] = mapped_column(Float)
    mode: Mapped[str] = mapped_column(String(20))
    output_format: Mapped[str] = mapped_column(String(10))
    options: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # the contract's other fields
    webhook: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_events_filter: Mapped[list[Any] | None] = mapped_column(default=None)
    # state (see common.lifecycle); `status` is a common.lifecycle.EditStatus, always written explicitly
    status: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(50), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    progress: Mapped[float | None] = mapped_column(Float, default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)  # claim token of the holder
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    deadline_at: Mapped[datetime]
    cost_seconds: Mapped[float | None] = mapped_column(Float, default=None)  # common/edit_cost.py; None: before 0006
    # the trace its submit started (common/tracing.py): 32 hex digits; None when tracing is off, or before 0008
    trace_id: Mapped[str | None] = mapped_column(String(32), default=None)
    # results
    output_keys: Mapped[list[Any] | None] = mapped_column(default=None)  # per alpha: key | null (not done)
    likeness: Mapped[list[Any] | None] = mapped_column(default=None)  # per alpha: min over faces | null
    # the first strength's preview while its full-size output renders: {key, index, width, height} | null
    preview: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    model: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # timestamps
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        Index("ix_edits_owner_created", "owner", "created_at", "id"),
        Index("ix_edits_status_created", "status", "created_at"),
    )

    @property
    def spec(self) -> EditSpec:
        """The edit's parameters as the contract reads them (not validated again: see `EditSpec.stored`)."""
        return EditSpec.stored({**(self.options or {}), **{name: getattr(self, name) for name in _SPEC_COLUMNS}})

    @staticmethod
    def spec_columns(spec: EditSpec) -> dict[str, Any]:
        """The column values that store `spec` (keyword arguments of `Edit`)."""
        values = spec.model_dump(mode="json")
        return {**{name: values.pop(name) for name in _SPEC_COLUMNS}, "options": values}


class IdempotencyRecord(Base):
    """One key per caller: the request fingerprint and, once done, the response to replay."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(10))  # in_flight | done
    response_status: Mapped[int | None] = mapped_column(Integer, default=None)
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class WebhookSecret(Base):
    """An account's `whsec_` signing secret. After a rotation the previous one keeps signing (a second
    signature) until `previous_expires_at`, so receivers can switch without losing messages."""

    __tablename__ = "webhook_secrets"

    owner: Mapped[str] = mapped_column(String(100), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    previous_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_expires_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookDelivery(Base):
    """One event of one edit to one URL; its id is the `webhook-id` header (stable across retries).
    `status` is a `common.webhooks.outbox.DeliveryStatus`."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    edit_id: Mapped[str] = mapped_column(ForeignKey("edits.id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column(String(100), index=True)
    event: Mapped[str] = mapped_column(String(20))
    output_index: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # `output`: which one
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # the exact bytes every attempt signs and sends
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    log: Mapped[list[Any]] = mapped_column(default=list)  # [{attempt, at, status_code, error, duration_ms}]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        UniqueConstraint("edit_id", "event", "output_index", name="uq_webhook_deliveries_edit_event_index"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )
