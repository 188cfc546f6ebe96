"""Request and response bodies of the HTTP API (shaped like hosted prediction APIs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.edit_contract import MAX_CHANGES, MAX_TEXT_CHARS, Change, EditSpec, Text, strip_text
from common.faces import FaceStatus
from common.image_formats import FORMATS
from common.lifecycle import EditStatus

# Every edit parameter and limit comes from the edit contract (common.edit_contract); the route applies the
# settings MAX_ALPHAS, MAX_FACES_PER_EDIT and MAX_CHANGES_PER_EDIT below its ceilings.
# Same event names as Replicate's `webhook_events_filter`; delivery lives in worker/ (webhooks).
WebhookEvent = Literal["start", "preview", "output", "logs", "completed"]


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
    format: str = Field(description=" | ".join(FORMATS))
    bytes: int
    created_at: datetime
    faces: list[FaceOut] | None = Field(
        description="faces found in the photo, largest first; null until detection is done")
    faces_status: FaceStatus = Field(
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


class EditCreate(EditSpec):
    """The edit contract's fields, plus the one-change form (`neutral`/`target`, normalized here to one change
    of weight 1) and what belongs to the request rather than the edit: the image and the webhook."""

    image: str = Field(min_length=1, max_length=64, description="an image id from `POST /v1/images`")
    neutral: Text | None = Field(None, description="text describing the photo as it is, e.g. `a face`; the edit "
                                 "moves the photo from `neutral` towards `target` (one change, weight 1); "
                                 f"1..{MAX_TEXT_CHARS} characters, not blank")
    target: Text | None = Field(None, description="text describing the wanted result, e.g. `a face with glasses` "
                                f"(1..{MAX_TEXT_CHARS} characters, not blank)")
    changes: list[Change] | None = Field(  # type: ignore[assignment]  # optional at the edge: see `neutral`
        None, min_length=1, max_length=MAX_CHANGES, description="instead of `neutral`/`target`: "
        + EditSpec.model_fields["changes"].description + ". Giving both forms is 422")
    webhook: str | None = Field(None, max_length=2048, description="https URL notified on events")
    webhook_events_filter: list[WebhookEvent] | None = Field(
        None, max_length=5, description="a subset of `start`, `preview`, `output`, `logs`, `completed` (default: "
        "`start`, `output`, `completed`; `preview`, the first strength's preview, only when listed; `logs` is "
        "accepted so that Replicate clients work unchanged, but an edit emits no log events: its `progress` is "
        "in `GET /v1/edits/{id}`)")

    _texts = field_validator("neutral", "target")(strip_text)

    @model_validator(mode="after")
    def _consistent(self) -> EditCreate:
        """One form or the other; the one-change form becomes `changes` here, so the rest sees one shape."""
        single = self.neutral is not None or self.target is not None
        if single and self.changes is not None:
            raise ValueError("give either `neutral` and `target` (one change) or `changes`, not both")
        if self.changes is None:
            if self.neutral is None or self.target is None:
                raise ValueError("`neutral` and `target` are required (or give `changes`)")
            self.changes = [Change.model_construct(neutral=self.neutral, target=self.target, weight=1.0)]
        self.check_consistent()
        return self

    @field_validator("webhook")
    @classmethod
    def _webhook_shape(cls, value: str | None) -> str | None:
        # Shape only; delivery re-checks the resolved address (SSRF guard) at send time.
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    def spec(self) -> EditSpec:
        """The normalized edit (validated already: the same fields and rules)."""
        return EditSpec.model_construct(**{name: getattr(self, name) for name in EditSpec.model_fields})


class EditInput(EditSpec):
    image: str
    neutral: str | None = Field(description="the one-change form's texts: those of an edit of one change of "
                                "weight 1, else null")
    target: str | None


class EditUrls(BaseModel):
    get: str
    cancel: str


class EditEstimate(BaseModel):
    cost_seconds: float | None = Field(
        description="the edit-worker seconds this edit is expected to take (faces x strengths x mode, from the "
        "deployment's measured stage times; what admission and the deadline use); null for an edit from before")
    queue_seconds: float | None = Field(
        description="while starting: the expected seconds of the edits ahead of it (the ones `queue_position` "
        "counts), for one edit worker")


class EditPreview(BaseModel):
    index: int = Field(description="the output (position in `alphas`) this previews: the first strength rendered")
    url: str = Field(description="the preview image (JPEG), the photo's aspect ratio at most 1024 pixels on its "
                     "longer side; presigned with S3 storage, else `/v1/edits/{id}/preview` (authenticated)")
    width: int
    height: int


class EditOut(BaseModel):
    id: str
    status: EditStatus
    input: EditInput
    output: list[str | None] | None = Field(
        description="one image URL per alpha, filling as each strength finishes (null: not done yet); kept "
        "when canceled between strengths; null before the first one and when failed")
    preview: EditPreview | None = Field(
        None, description="while processing, until `output[index]` lands: a preview of that strength (the "
        "generator's 256² output of the same render pasted into the photo, shown before the full-size one); "
        "null otherwise. Show it in the full photo's box (same aspect ratio) and replace it by `output[index]`")
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
    estimate: EditEstimate
    webhook: str | None
    webhook_events_filter: list[str] | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    urls: EditUrls
    trace_id: str | None = Field(
        description="the OpenTelemetry trace of this edit (32 hex digits), started by its `POST /v1/edits` and "
        "continued through the queue, the worker's stages and the webhook deliveries; give it to support to find "
        "the trace and the job's log lines. Null when the server records no traces")


class EditList(BaseModel):
    results: list[EditOut]
    next: str | None = Field(description="cursor for the next page, or null")


class Health(BaseModel):
    status: str
    checks: dict[str, str] | None = None


class AppConfig(BaseModel):
    api_base: str
    dev_api_key: str | None
    limits: dict[str, Any] = Field(
        description="what an edit may ask for here (`common.edit_contract.EditLimits.public`): max_alphas, "
        "max_changes, max_faces (this server's settings), max_text_chars, the weight and alpha ranges, "
        "beta_default, max_steps, modes, inversions, default_inversion (this server's DEFAULT_INVERSION), "
        "output_formats; the web app reads its limits from it")
    worker_inversions: list[str] | None = Field(
        None, description="the inversions every live edit worker offers now (their models: `sfe` only where all "
        "have StyleFeatureEditor; common/worker_offers.py), in `limits.inversions` order; null while no worker "
        "has said (starting): an edit may then ask for any of `limits.inversions`, and one the workers cannot run "
        "fails `model_missing`. With a list, asking for another inversion is 422 `inversion_unavailable`")
