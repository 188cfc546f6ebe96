"""api.supervisor with tiny shell children: restarts with backoff, giving up, stopping, readiness order."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from api.supervisor import ChildSpec, RestartPolicy, Supervisor

FAST = RestartPolicy(first_delay=0.05, max_delay=0.2, quick_seconds=5, max_quick_crashes=3, stop_timeout=2)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_crashing_child_is_restarted_with_backoff_then_given_up():
    lines: list[str] = []
    gave_up = threading.Event()
    supervisor = Supervisor([ChildSpec("crasher", ["sh", "-c", "kill -9 $$"])], FAST,
                            on_give_up=lambda _: gave_up.set(), log=lines.append)  # fmt: skip
    supervisor.start()
    try:
        assert gave_up.wait(10), lines
    finally:
        supervisor.stop()
    assert lines[:3] == [
        "crasher exited with code -9; restarting in 0.05 s (restart 1)",
        "crasher exited with code -9; restarting in 0.1 s (restart 2)",
        "crasher exited with code -9; restarting in 0.2 s (restart 3)",
    ]
    assert lines[3].startswith("crasher exited with code -9: 4 crashes in a row") and "giving up" in lines[3]
    assert supervisor.gave_up and len(lines) == 4


def test_a_child_that_ran_long_enough_starts_a_new_count(tmp_path):
    """Crashes far apart are restarted forever: only quick crashes in a row count toward giving up."""
    lines: list[str] = []
    policy = RestartPolicy(first_delay=0.05, quick_seconds=0.3, max_quick_crashes=1, stop_timeout=2)
    supervisor = Supervisor([ChildSpec("slow", ["sh", "-c", "sleep 0.5; exit 3"])], policy, log=lines.append)
    supervisor.start()
    try:
        deadline = time.monotonic() + 10
        while len(lines) < 3:
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
    finally:
        supervisor.stop()
    assert lines[:3] == [f"slow exited with code 3; restarting in 0.05 s (restart {n})" for n in (1, 2, 3)]
    assert not supervisor.gave_up


def test_stop_terminates_children_and_kills_the_stubborn(tmp_path):
    lines: list[str] = []
    deaf = tmp_path / "deaf"  # written once SIGTERM is ignored
    specs = [
        ChildSpec("broker", ["sleep", "60"], stop_last=True),
        ChildSpec("stubborn", ["sh", "-c", f"trap '' TERM; touch {deaf}; sleep 60"], ready=deaf.exists),
    ]
    supervisor = Supervisor(specs, FAST, log=lines.append)
    supervisor.start()
    pids = supervisor.pids()
    assert set(pids) == {"broker", "stubborn"}
    started = time.monotonic()
    supervisor.stop()
    assert time.monotonic() - started < 10
    assert not any(_alive(pid) for pid in pids.values())
    assert lines == ["stubborn did not stop within 2 s; killing it"]


def test_children_start_in_order_once_the_previous_is_ready(tmp_path):
    flag = tmp_path / "ready"
    second_saw_flag = tmp_path / "second"
    specs = [
        ChildSpec("first", ["sh", "-c", f"sleep 0.3; touch {flag}; sleep 60"], ready=flag.exists),
        ChildSpec("second", ["sh", "-c", f"test -e {flag} && touch {second_saw_flag}; sleep 60"]),
    ]
    supervisor = Supervisor(specs, FAST)
    supervisor.start()
    try:
        deadline = time.monotonic() + 5
        while not second_saw_flag.exists():
            assert time.monotonic() < deadline, "the second child started before the first was ready"
            time.sleep(0.05)
    finally:
        supervisor.stop()


def test_a_child_that_dies_while_starting_fails_the_start():
    supervisor = Supervisor([ChildSpec("broken", ["sh", "-c", "exit 7"], ready=lambda: False)], FAST)
    with pytest.raises(OSError, match="broken exited with code 7 while starting"):
        supervisor.start()
    assert supervisor.pids() == {}


def test_children_get_the_parent_death_signal(tmp_path):
    """A child of a process that dies without cleanup (SIGKILL) is killed by the kernel."""
    import subprocess
    import sys

    script = (
        "import time\n"
        "from api.supervisor import ChildSpec, Supervisor\n"
        "s = Supervisor([ChildSpec('sleeper', ['sleep', '60'])])\n"
        "s.start()\n"
        "print(s.pids()['sleeper'], flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "the child outlived its SIGKILLed parent"
        time.sleep(0.05)
