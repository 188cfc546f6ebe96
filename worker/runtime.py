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
from common.settings import Settings, get_settings
from common.storage import Storage, make_storage

if TYPE_CHECKING:
    from pipeline import Editor

log = logging.getLogger("worker")


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.session_factory: sessionmaker[Session] = make_session_factory(make_engine(settings.database_url))
        self.storage: Storage = make_storage(settings)
        self._editor: Editor | None = None
        self._lock = threading.Lock()

    @property
    def model_dir(self) -> Path:
        return self.settings.model_dir or Path("models")

    def editor(self) -> Editor:
        """The process's Editor (models load once); raises PipelineError(`model_missing`, ...)."""
        if self._editor is None:
            with self._lock:
                if self._editor is None:
                    from pipeline import Bundle, Editor

                    self._editor = Editor(Bundle.load(self.model_dir), device=self.settings.device)
        return self._editor

    def warm(self) -> None:
        """Load the models before the first job; a missing bundle is logged and every job then fails
        with its code (`model_missing`), so the cause is visible through the API too."""
        from pipeline import PipelineError

        try:
            editor = self.editor()
            editor.models  # noqa: B018 - touching the property loads the weights
            log.info("models ready: %s (dev bundle: %s)", editor.versions, editor.is_dev)
        except PipelineError as error:
            log.error("models not loaded from %s: %s", self.model_dir, error)


@cache
def get_runtime() -> Runtime:
    return Runtime(get_settings())
