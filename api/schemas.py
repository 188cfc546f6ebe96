"""Request and response bodies of the HTTP API (shaped like hosted prediction APIs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.lifecycle import EditStatus

# Same bounds as the pipeline (pipeline.directions), so a bad value is a 422 now, not a failed job later.
Alpha = Annotated[float, Field(ge=-10, le=10, allow_inf_nan=False)]
Prompt = Annotated[str, Field(min_length=1, max_length=300)]
EditMode = Literal["global", "optimize"]
OutputFormat = Literal["jpeg", "png", "webp"]
# Same event names as Replicate's `webhook_events_filter`; delivery lives in worker/ (webhooks).
WebhookEvent = Literal["start", "output", "logs", "completed"]


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. `no_face`, `validation_error`")
    message: str = Field(description="human-readable explanation")


class ImageUrls(BaseModel):
    get: str
    file: str = Field(description="the stored photo (presigned storage URL, or an authenticated API URL)")


class ImageOut(BaseModel):
    id: str
    width: int = Field(description="pixels, after applying the EXIF orientation")
    height: int
    format: str = Field(description="jpeg | png | webp | heif")
    bytes: int
    created_at: datetime
    urls: ImageUrls


class ImageFromUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upload_id: str = Field(min_length=1, max_length=64)


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UploadOut(BaseModel):
    upload_id: str
    method: Literal["POST", "PUT"]
    url: str
    fields: dict[str, str] | None = Field(None, description="form fields to send before `file` (POST)")
    headers: dict[str, str] | None = Field(None, description="headers to send with the body (PUT)")
    expires_at: datetime
    max_bytes: int


class EditCreate(BaseModel):
    # strict: "0.1" or true for a number is a client bug to report, not to coerce silently.
    model_config = ConfigDict(extra="forbid", strict=True)

    image: str = Field(min_length=1, max_length=64, description="id of an image from `POST /v1/images`")
    neutral: Prompt = Field(description="text describing the photo as it is, e.g. `a face`")
    target: Prompt = Field(description="text describing the wanted result, e.g. `a face with glasses`")
    # max_length: the pipeline's own ceiling (MAX_ALPHAS, at most 16, is checked by the route); a cap here
    # stops a long list at validation, before it becomes thousands of objects.
    alphas: list[Alpha] = Field(min_length=1, max_length=16, description="edit strengths; one output image per alpha")
    beta: float = Field(0.15, gt=0, lt=1, allow_inf_nan=False,
                        description="disentanglement threshold (~0.1-0.2; StyleCLIP's 0.15 when left out)")
    mode: EditMode = "global"
    output_format: OutputFormat = "jpeg"
    webhook: str | None = Field(None, max_length=2048, description="https URL notified on events")
    webhook_events_filter: list[WebhookEvent] | None = Field(
        None, max_length=4, description="events to notify (default all); `logs` is accepted for Replicate "
                                        "compatibility but never sent: progress is in the edit resource")

    @field_validator("neutral", "target")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("webhook")
    @classmethod
    def _webhook_shape(cls, value: str | None) -> str | None:
        # Shape only; delivery re-checks the resolved address (SSRF guard) at send time.
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


class EditInput(BaseModel):
    image: str
    neutral: str
    target: str
    alphas: list[float]
    beta: float
    mode: str
    output_format: str


class EditUrls(BaseModel):
    get: str
    cancel: str


class EditOut(BaseModel):
    id: str
    status: EditStatus
    input: EditInput
    output: list[str] | None = Field(description="one image URL per alpha, once succeeded")
    error: ErrorBody | None
    metrics: dict[str, float | int | bool] = Field(
        description="queue_seconds, align_seconds, invert_seconds, direction_seconds, synthesize_seconds, "
        "paste_seconds, total_seconds, inversion_cached, attempt"
    )
    model: dict[str, str | bool] | None = Field(
        description="versions of the models that made the output (generator, encoder, clip, relevance: the "
        "first 12 hex digits of each file's sha256), dev_bundle, and encoder_run (only for a fine-tuned encoder "
        "promoted with `python -m pipeline runs promote`: the run it came from)"
    )
    progress: float | None = Field(description="0..1 while processing")
    queue_position: int | None = Field(description="edits ahead of this one while starting")
    webhook: str | None
    webhook_events_filter: list[str] | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    urls: EditUrls


class EditList(BaseModel):
    results: list[EditOut]
    next: str | None = Field(description="cursor for the next page, or null")


class Health(BaseModel):
    status: str
    checks: dict[str, str] | None = None


class AppConfig(BaseModel):
    api_base: str
    dev_api_key: str | None
