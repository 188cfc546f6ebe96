"""Child processes that cannot outlive whoever started them: the dev server's (api/supervisor.py) and the
test session's (services, workers, Flower). Start them with `die_with_parent`, in a process group of their
own, and stop what is left of them with `kill_group`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `sig` when this process dies, however it dies (Linux
    `PR_SET_PDEATHSIG`; None elsewhere). The kernel sends it when the *thread* that forked the child ends:
    start such children from a thread that lives as long as they should (the main one, or a supervisor's)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), sig)

    return arm


def kill_group(pgid: int) -> None:
    """SIGKILL a process group (a child started with `process_group=0` or `start_new_session=True`), whatever
    of it is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (empty when it is gone)."""
    pids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = task / "children"
        if children.is_file():
            with contextlib.suppress(OSError):
                pids += [int(p) for p in children.read_text().split()]
    return pids


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_process(process: subprocess.Popen, timeout: float = 20) -> str:
    """SIGTERM, then SIGKILL after `timeout` seconds; returns what the process printed (for failure messages)."""
    process.terminate()
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_sockets(pids: list[int]) -> list[tuple[str, int, int]]:
    """The TCP sockets that processes `pids` listen on, as (address, port, pid): /proc/<pid>/net/tcp{,6}
    rows in state LISTEN whose inode one of the process's descriptors holds."""
    found = []
    for pid in pids:
        inodes = set()
        with contextlib.suppress(OSError):  # the process (or one descriptor) gone meanwhile
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:["):-1])
        for table in ("tcp", "tcp6"):
            try:
                rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                fields = row.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                    address, port = local.split(":")
                    found.append((_proc_address(address), int(port, 16), pid))
    return found


def _proc_address(hex_address: str) -> str:
    """/proc/net/tcp's address (little-endian 32-bit words) as text: `0100007F` is 127.0.0.1."""
    import ipaddress

    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))
