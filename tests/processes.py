"""Helpers for tests that run real subprocesses (workers, Flower)."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen) -> str:
    """SIGTERM, then SIGKILL after 20 s; returns what the process printed (for failure messages)."""
    process.terminate()
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output
