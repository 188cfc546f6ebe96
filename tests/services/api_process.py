"""The API as a real uvicorn process for `settings`: what a test needs when the TestClient hides the
behaviour (it waits for the whole app call before returning, it re-encodes header bytes), or when several
replicas or the process's own memory are the point."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from api.processes import die_with_parent, free_port
from tests.services.settings import REPO_ROOT, settings_env


class ApiProcess:
    """`uvicorn --factory api.main:create_app` on 127.0.0.1, one worker process; `with ApiProcess(...) as api`."""

    def __init__(self, settings, log_path: Path, **env: str):
        self.settings, self.log_path = settings, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**settings_env(settings), "LOG_LEVEL": "WARNING", **env}
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ApiProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning"],
                cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"the API did not start: {self.log()[-3000:]}")

    def __exit__(self, *_exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_mib(self, field: str = "VmRSS") -> float:
        """The process's resident memory now (`VmRSS`) or at its peak (`VmHWM`), in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} for pid {self.process.pid}")
