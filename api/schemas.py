"""Request and response bodies of the HTTP API (shaped like hosted prediction APIs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.lifecycle import EditStatus

# Same bounds as the pipeline (pipeline.directions), so a bad value is a 422 now, not a failed job later.
Alpha = Annotated[float, Field(ge=-10, le=10, allow_inf_nan=False)]
Prompt = Annotated[str, Field(min_length=1, max_length=300)]
EditMode = Literal["global", "optimize"]
OutputFormat = Literal["jpeg", "png", "webp"]
ChangeText = Annotated[str, Field(min_length=1, max_length=200)]
# Hard ceilings of the request shape (a long list stops at validation); the route applies the settings
# MAX_FACES_PER_EDIT and MAX_CHANGES_PER_EDIT, and the photo's detected faces, below them.
FaceIndex = Annotated[int, Field(ge=0, le=999)]
FaceChoice = Literal["largest", "all"] | Annotated[list[FaceIndex], Field(min_length=1, max_length=32)]
# Same event names as Replicate's `webhook_events_filter`; delivery lives in worker/ (webhooks).
WebhookEvent = Literal["start", "output", "logs", "completed"]


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. `no_face`, `validation_error`")
    message: str = Field(description="human-readable explanation")


class ImageUrls(BaseModel):
    get: str
    file: str = Field(description="the stored photo (presigned storage URL, or an authenticated API URL)")


class FaceOut(BaseModel):
    index: int = Field(description="position in the list: largest face first; what `faces` of an edit names")
    box: list[int] = Field(description="[left, top, right, bottom] in the upright photo's pixels")
    score: float = Field(description="detector confidence, 0..1")


class ImageOut(BaseModel):
    id: str
    width: int = Field(description="pixels, after applying the EXIF orientation")
    height: int
    format: str = Field(description="jpeg | png | webp | heif")
    bytes: int
    created_at: datetime
    faces: list[FaceOut] | None = Field(
        description="faces found in the photo, largest first; null until detection is done")
    faces_status: Literal["pending", "done", "failed"] = Field(
        description="face detection runs once per photo in a model worker, right after the upload "
        "(`Prefer: wait=N`, N ≤ 5, on the upload waits for it)")
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


class Change(BaseModel):
    """One text change of an edit; the edit moves along the weighted sum of its changes' directions."""

    model_config = ConfigDict(extra="forbid", strict=True)

    neutral: ChangeText = Field(description="text describing the photo as it is, e.g. `a face`")
    target: ChangeText = Field(description="text describing the wanted change, e.g. `a smiling face`")
    weight: float = Field(1.0, ge=-2, le=2, allow_inf_nan=False, description="in [-2, 2], not 0")

    @field_validator("neutral", "target")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("weight")
    @classmethod
    def _not_zero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("must not be 0 (leave the change out instead)")
        return value


class EditCreate(BaseModel):
    # strict: "0.1" or true for a number is a client bug to report, not to coerce silently.
    model_config = ConfigDict(extra="forbid", strict=True)

    image: str = Field(min_length=1, max_length=64, description="id of an image from `POST /v1/images`")
    neutral: Prompt | None = Field(None, description="text describing the photo as it is, e.g. `a face` "
                                   "(the one-change form; or give `changes`)")
    target: Prompt | None = Field(None, description="text describing the wanted result, e.g. `a face with glasses`")
    changes: list[Change] | None = Field(
        None, min_length=1, max_length=16,
        description="several text changes combined (weighted sum of their directions), instead of "
        "`neutral`/`target`; at most MAX_CHANGES_PER_EDIT")
    faces: FaceChoice = Field(
        "largest", description="`largest` (default), `all`, or a list of face indices of the image's `faces` "
        "(unique; at most MAX_FACES_PER_EDIT)")
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
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value.strip() if value is not None else None

    @field_validator("faces")
    @classmethod
    def _unique_faces(cls, value):
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("face indices must be unique")
        return value

    @field_validator("changes")
    @classmethod
    def _unique_changes(cls, value: list[Change] | None) -> list[Change] | None:
        if value is not None and len({(c.neutral, c.target) for c in value}) != len(value):
            raise ValueError("each (neutral, target) pair once: combine their weights instead")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> EditCreate:
        single = self.neutral is not None or self.target is not None
        if single and self.changes is not None:
            raise ValueError("give either `neutral` and `target` (one change) or `changes`, not both")
        if self.changes is None and (self.neutral is None or self.target is None):
            raise ValueError("`neutral` and `target` are required (or give `changes`)")
        if self.mode == "optimize" and self.changes is not None and len(self.changes) > 1:
            raise ValueError("`optimize` mode takes one change (it optimizes towards one target text)")
        return self

    def change_list(self) -> list[Change]:
        """The changes of either form (the one-change form is one change of weight 1)."""
        if self.changes is not None:
            return list(self.changes)
        return [Change(neutral=self.neutral, target=self.target, weight=1.0)]

    @field_validator("webhook")
    @classmethod
    def _webhook_shape(cls, value: str | None) -> str | None:
        # Shape only; delivery re-checks the resolved address (SSRF guard) at send time.
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


class ChangeOut(BaseModel):
    neutral: str
    target: str
    weight: float


class EditInput(BaseModel):
    image: str
    neutral: str | None = Field(description="the one-change form's texts; null for an edit given `changes`")
    target: str | None
    changes: list[ChangeOut] = Field(description="always the list form (one entry for `neutral`/`target`)")
    faces: Literal["largest", "all"] | list[int]
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
    output: list[str | None] | None = Field(
        description="one image URL per alpha, filling as each strength finishes (null: not done yet); kept "
        "when canceled between strengths; null before the first one and when failed")
    likeness: list[float | None] | None = Field(
        None, description="per alpha: cosine similarity of the edited face to the original (the minimum over "
        "the edited faces), null for a strength not done yet; absent when the bundle has no identity model")
    error: ErrorBody | None
    metrics: dict[str, float | int | bool | list[dict[str, float | int | bool]]] = Field(
        description="queue_seconds, align_seconds, invert_seconds, direction_seconds, synthesize_seconds, "
        "paste_seconds, total_seconds, first_output_seconds, inversion_cached, attempt, and faces: "
        "[{index, inversion_cached, align_seconds, invert_seconds}] per edited face"
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
