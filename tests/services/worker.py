"""The one worker launcher of the tests: a real Celery worker process for a test deployment.

Two flavours, same options: the production `celery worker` (its pool from the settings, common/topology.py:
`solo` on a CPU unless EDIT_JOBS_PER_WORKER asks for more; the models load in the process that runs
jobs), and `preloaded=True`, `python -m tests.services.preloaded_worker`, a prefork worker whose parent loads
the models once so a SIGKILLed child is replaced in a moment (the fault tests kill it many times). Each
worker runs in a process group of its own, so stopping or killing it takes its embedded beat and pool
children along.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from api.processes import child_pids, die_with_parent, kill_group, kill_pids
from common import topology
from tests.services.settings import REPO_ROOT, settings_env


class WorkerProcess:
    """A worker consuming every queue of `settings` (with beat: the reaper, sweeps, retention), its
    output in `log_path`; with `role`, a worker of that role only, as deployed (its queues and pool). `start()`
    returns once it is ready (models loaded, for a model worker)."""

    def __init__(self, settings, log_path: Path, beat: bool = True, preloaded: bool = False,
                 role: topology.Role | None = None):  # fmt: skip
        self.settings, self.log_path, self.beat, self.preloaded = settings, Path(log_path), beat, preloaded
        self.role = role
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """A worker of common/topology.py: without `role`, a model worker that also consumes the io queues (one
        process for the whole test deployment); with beat inside it unless `beat=False`."""
        options = topology.worker_options(
            self.role or topology.Role.MODEL, self.settings,
            queue_names=None if self.role else topology.queues(self.settings),
            name=f"{'fault' if self.preloaded else 'test'}-{uuid.uuid4().hex[:6]}@%h",
            beat_schedule_file=self.log_path.with_suffix(".beat") if self.beat else None)  # fmt: skip
        if self.preloaded:
            return [sys.executable, "-m", "tests.services.preloaded_worker", *options]
        return [sys.executable, "-m", "celery", "-A", topology.CELERY_APP, "worker", *options]

    def _ready(self, text: str) -> bool:
        if self.preloaded or self.role is topology.Role.IO:  # models loaded before Celery starts, or never
            return " ready." in text
        return "models ready" in text or "models not loaded" in text

    def start(self, timeout: float = 300) -> WorkerProcess:
        env = settings_env(self.settings)
        if self.preloaded:
            env["OMP_NUM_THREADS"] = "1"  # a parent that never started an OpenMP pool forks safely
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            # a killed test process: warm shutdown, which stops beat too
                                            preexec_fn=die_with_parent(signal.SIGTERM))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if self._ready(text):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited ({self.process.returncode}):\n{text[-3000:]}")
            time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no ack; exactly what an OOM kill does (its beat and pool go too)."""
        if self.process is None:
            return
        children = child_pids(self.process.pid)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        kill_group(self.process.pid)
        kill_pids(children)  # a child that left the group

    def stop(self) -> None:
        """SIGTERM (warm shutdown) for up to 20 s, then SIGKILL; nothing of it is left running."""
        if self.process is None:
            return
        children = child_pids(self.process.pid)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        kill_pids(children)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
