"""What a worker process holds for its lifetime: settings, a DB engine, storage, and one `Editor`.

Built lazily once per process (after any fork), so importing this module loads nothing.
"""

from __future__ import annotations

import logging
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from common.db import make_engine, make_session_factory
from common.redis_client import redis_client
from common.settings import Settings, get_settings
from common.storage import Storage, make_storage
from common.worker_offers import FleetOffers, OffersReader

if TYPE_CHECKING:
    from celery import Celery
    from redis import Redis

    from pipeline import Editor
    from pipeline.render.config import RenderConfig

log = logging.getLogger("worker")


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.session_factory: sessionmaker[Session] = make_session_factory(make_engine(settings.database_url))
        self.storage: Storage = make_storage(settings)
        self._editor: Editor | None = None
        self._celery: Celery | None = None
        self._stamp: tuple[int, int] | None = None  # the loaded manifest's (mtime_ns, size)
        self._lock = threading.Lock()
        self._offers: OffersReader | None = None
        self._redis: Redis | None = None
        self._celery_lock = threading.Lock()

    @property
    def celery(self) -> Celery:
        """A Celery app on this runtime's broker, for the messages a job sends itself (webhook deliveries)."""
        if self._celery is None:
            from common.queue import make_celery

            with self._celery_lock:  # jobs on threads (a GPU worker) may ask at once
                if self._celery is None:
                    self._celery = make_celery(self.settings, name="faceedit-worker")
        return self._celery

    def loaded_inversions(self) -> tuple[str, ...] | None:
        """The inversions the loaded bundle offers (what this worker publishes: `common.worker_offers`), or None
        while no bundle is loaded (never loads one)."""
        editor = self._editor
        return editor.inversions if editor is not None else None

    def redis(self) -> Redis | None:
        """A redis-py client on the broker (None without REDIS_URL), for what workers tell each other."""
        if self.settings.redis_url is None:
            return None
        if self._redis is None:
            self._redis = redis_client(self.settings.redis_url)
        return self._redis

    def fleet_offers(self) -> FleetOffers | None:
        """What every live edit worker offers (`common.worker_offers`), or None while unknown."""
        if self.settings.redis_url is None:
            return None
        if self._offers is None:
            self._offers = OffersReader(self.redis(), self.settings.edits_queue)
        return self._offers.get()

    @property
    def model_dir(self) -> Path:
        return self.settings.model_dir or Path("models")

    @property
    def directions_dir(self) -> Path:
        """Where the Editor caches text directions (CACHE_DIR, writable, unlike a mounted bundle)."""
        return self.settings.cache_dir / "directions"

    def editor(self) -> Editor:
        """The process's Editor (models load once); raises PipelineError(`model_missing`, ...).

        One stat of the bundle's manifest per call: ``python -m pipeline runs promote`` replaces it atomically,
        and the next job then runs on a new Editor (the new encoder, hence a new inversion cache key) without
        restarting the worker. A job already running keeps the Editor it started with."""
        editor = self._editor
        if editor is not None and _manifest_stamp(editor.bundle.dir) == self._stamp:
            return editor
        with self._lock:
            if self._editor is None or _manifest_stamp(self._editor.bundle.dir) != self._stamp:
                previous = self._editor
                self._editor, self._stamp = self._build()
                if previous is not None:
                    log.info("model bundle changed; now %s", self._editor.versions)
            return self._editor

    def _build(self) -> tuple[Editor, tuple[int, int] | None]:
        """The bundle by the pipeline's one rule (`pipeline.weights.choice`, as the CLI and `make run`): MODEL_DIR as
        it is (incomplete: every job fails `model_missing`, visibly), else a complete models/official, else
        the development bundle (announced)."""
        from common.metrics import observe_render_batch
        from pipeline import Editor
        from pipeline.weights.choice import choose_bundle, open_bundle

        choice = choose_bundle(self.settings.model_dir)
        stamp = _manifest_stamp(choice.dir)  # before reading it: a change while loading shows up next time
        bundle = open_bundle(choice)
        stamp = stamp or _manifest_stamp(bundle.dir)  # a development bundle built just now
        # Caches go to CACHE_DIR, never into the bundle: it may be mounted read-only.
        return Editor(bundle, device=self.settings.device, directions_dir=self.directions_dir,
                      render=render_config(self.settings), on_render_batch=observe_render_batch), stamp

    def warm(self) -> None:
        """Load the models before the first job; a missing bundle is logged and every job then fails
        with its code (`model_missing`), so the cause is visible through the API too."""
        from pipeline import PipelineError

        try:
            editor = self.editor()
            seconds = editor.warm_up()  # loads the weights and renders once (one-time costs off the first job)
            log.info("models ready from %s in %.1fs: %s (dev bundle: %s)", editor.bundle.dir, seconds, editor.versions,
                     editor.is_dev)
        except PipelineError as error:
            log.error("models not loaded from %s: %s", self.model_dir, error)


def _manifest_stamp(directory: Path) -> tuple[int, int] | None:
    # only called where the pipeline is installed (model workers)
    from pipeline.weights.bundle import MANIFEST

    try:
        stat = (Path(directory) / MANIFEST).stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def encoder_run(editor: Editor) -> str | None:
    """The fine-tuning run a promoted encoder came from (`runs promote` records it in the manifest)."""
    source = editor.bundle.manifest.extra.get("encoder_source")
    return str(source["run"]) if isinstance(source, dict) and source.get("run") else None


@cache
def get_runtime() -> Runtime:
    return Runtime(get_settings())


def render_config(settings: Settings) -> RenderConfig:
    """The render layer's options from the settings (``RENDER_*``; ``EDIT_BATCH_*`` when the worker runs several
    jobs at once: their renders then share batches, else each renders alone)."""
    from common.topology import edit_jobs_at_once
    from pipeline.render.config import RenderConfig

    batch_max = settings.edit_batch_max if edit_jobs_at_once(settings) > 1 else 1
    return RenderConfig(nnpack=settings.render_nnpack, cuda_precision=settings.render_cuda_precision,
                        cuda_graphs=settings.render_cuda_graphs, batch_max=batch_max,
                        batch_wait_ms=settings.edit_batch_wait_ms)
