"""The development server's child processes: started in order, restarted after a crash, never left behind.

Three guarantees, one per way the dev server can end:
* a requested stop (Ctrl-C, SIGTERM) stops the children itself, the broker last;
* a child that crashes is restarted with a growing delay, and after `max_quick_crashes` crashes in a
  row, each soon after its start, the supervisor gives up and says so (`on_give_up`);
* a dev server that dies without cleaning up (SIGKILL, OOM) takes its children along: each child asks
  the kernel for a signal when its parent dies (api/processes.py `die_with_parent`). The kernel sends it
  when the *thread* that forked the child ends, so one long-lived thread, the supervisor's, starts every
  child and stops them all before it ends.

Each child runs in its own process group: Ctrl-C in the terminal reaches only the dev server, which
then stops the children in order, and a child's own children are stopped with it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from api.processes import die_with_parent, kill_group


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process. `ready`: polled after the start (until true) before the next child starts."""

    name: str
    argv: Sequence[str]
    env: dict[str, str] | None = None
    ready: Callable[[], bool] | None = None
    death_signal: signal.Signals = signal.SIGKILL  # what the kernel sends when the dev server dies
    stop_last: bool = False  # stopped after the others (the broker they use)


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 2.0  # seconds before the first restart; doubled for each quick crash in a row
    max_delay: float = 30.0
    quick_seconds: float = 60.0  # a child that ran shorter than this before crashing crashed "quickly"
    max_quick_crashes: int = 5  # quick crashes in a row before giving up
    stop_timeout: float = 15.0  # seconds a child gets to stop before SIGKILL
    ready_timeout: float = 60.0


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # a restart is scheduled
    restarts: int = 0
    quick_crashes: int = 0
    given_up: bool = False


class Supervisor:
    """Runs `specs` from one thread: `start()` (blocks until each `ready` holds), `stop()` (idempotent)."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        policy: RestartPolicy = RestartPolicy(),
        on_give_up: Callable[[str], None] = lambda message: None,
        log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
    ):
        self._children = [_Child(spec) for spec in specs]
        self._policy, self._on_give_up, self._log = policy, on_give_up, log
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._started, self._stopping = threading.Event(), threading.Event()
        self._start_error: BaseException | None = None
        self.gave_up = False

    def pids(self) -> dict[str, int]:
        """The running children's pids, by name."""
        return {c.spec.name: c.process.pid for c in self._children if c.process and c.process.poll() is None}

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self.stop()
            raise self._start_error

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    # --- the supervisor's thread: every fork and every wait happens here ---------------------------

    def _run(self) -> None:
        try:
            for child in self._children:
                if self._stopping.is_set():
                    break
                self._spawn(child)
                self._await_ready(child)
        except (OSError, TimeoutError) as error:
            self._start_error = error
        finally:
            self._started.set()
        while not self._stopping.wait(0.2):
            for child in self._children:
                self._check(child)
        self._stop_all()

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        child.process = subprocess.Popen(
            list(spec.argv),
            env=spec.env,
            process_group=0,
            preexec_fn=die_with_parent(spec.death_signal),
        )
        child.started_at, child.restart_at = time.monotonic(), None

    def _await_ready(self, child: _Child) -> None:
        if child.spec.ready is None:
            return
        deadline = time.monotonic() + self._policy.ready_timeout
        while not child.spec.ready():
            if child.process.poll() is not None:
                raise OSError(f"{child.spec.name} exited with code {child.process.returncode} while starting")
            if time.monotonic() > deadline or self._stopping.wait(0.1):
                raise TimeoutError(f"{child.spec.name} not ready after {self._policy.ready_timeout:g} s")

    def _check(self, child: _Child) -> None:
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at:
                self._spawn(child)
            return
        if child.given_up or child.process is None or child.process.poll() is None:
            return
        kill_group(child.process.pid)  # whatever the crashed child left behind
        policy, code = self._policy, child.process.returncode
        child.quick_crashes = child.quick_crashes + 1 if now - child.started_at < policy.quick_seconds else 1
        if child.quick_crashes > policy.max_quick_crashes:
            child.given_up = self.gave_up = True
            message = (f"{child.spec.name} exited with code {code}: {child.quick_crashes} crashes in a row, each "
                       f"within {policy.quick_seconds:g} s of its start; giving up (its log is above)")  # fmt: skip
            self._log(message)
            self._on_give_up(message)
            return
        delay = min(policy.first_delay * 2 ** (child.quick_crashes - 1), policy.max_delay)
        child.restarts += 1
        child.restart_at = now + delay
        self._log(
            f"{child.spec.name} exited with code {code}; restarting in {delay:g} s (restart {child.restarts})"
        )

    def _stop_all(self) -> None:
        """SIGTERM to every child (the broker's users first), SIGKILL to what outlives the timeout."""
        for last in (False, True):
            group = [
                c
                for c in self._children
                if c.spec.stop_last == last and c.process and c.process.poll() is None
            ]
            for child in group:
                child.process.terminate()
            deadline = time.monotonic() + self._policy.stop_timeout
            for child in group:
                try:
                    child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._log(
                        f"{child.spec.name} did not stop within {self._policy.stop_timeout:g} s; killing it"
                    )
                    child.process.kill()
                    child.process.wait()
            for child in group:
                kill_group(child.process.pid)
