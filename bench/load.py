"""A closed-loop HTTP load generator: N users on keep-alive connections, each sending its next request as soon
as the last one is answered, for a bounded time. Raw asyncio sockets (HTTP/1.1, `Content-Length` bodies),
loopback only, so the generator's own CPU cost per request stays far below the server's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.timing import Timing

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    def encode(self, host: str) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(self.body)}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def json_request(method: str, path: str, key: str, body: object | None = None) -> Request:
    headers = {"Authorization": f"Bearer {key}"}
    if body is None:
        return Request(method, path, headers)
    return Request(method, path, {**headers, "Content-Type": "application/json"}, json.dumps(body).encode())


@dataclass(frozen=True)
class LoadResult:
    """What the users saw: request latencies (seconds), status counts, and the measured window."""

    latencies: tuple[float, ...]
    statuses: dict[int, int]
    seconds: float
    completed: int = 0  # every answered request, the warm-up's too

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, object]:
        timing = Timing(self.latencies, None)
        return {"per_s": round(self.per_second, 1), "p50_ms": round(timing.percentile(50) * 1e3, 1),
                "p99_ms": round(timing.percentile(99) * 1e3, 1), "n": len(self.latencies),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}}


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            raise ConnectionError("chunked responses are not supported by this load generator")
    return status, await reader.readexactly(length) if length else b""


async def _user(host: str, port: int, make: Callable[[int], Request], warmup_until: float, stop_at: float,
                latencies: list[float], statuses: dict[int, int], completed: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        i = 0
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            writer.write(make(i).encode(f"{host}:{port}"))
            status, _ = await _read_response(reader)
            ended = time.perf_counter()
            i += 1
            completed[0] += 1
            if started >= warmup_until:  # requests started in the warm-up are not counted
                latencies.append(ended - started)
                statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def run_load(host: str, port: int, users: list[Callable[[int], Request]], seconds: float,
             warmup_s: float = 1.0) -> LoadResult:
    """Each callable in `users` is one user on its own connection making request `i` = 0, 1, ...; requests
    started during `warmup_s` are not counted, then `seconds` are (a request in flight at the end finishes)."""
    if host not in LOOPBACK:
        raise ValueError(f"the load generator only targets loopback, not {host!r}")
    if not 0 < seconds <= 120:
        raise ValueError("seconds must be in (0, 120]")

    async def main() -> LoadResult:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        completed = [0]
        start = time.perf_counter()
        warm, stop = start + warmup_s, start + warmup_s + seconds
        await asyncio.wait_for(asyncio.gather(*(_user(host, port, make, warm, stop, latencies, statuses, completed)
                                                for make in users)), timeout=warmup_s + seconds + 60)
        # throughput over the counted window: from the end of the warm-up to the last answer
        return LoadResult(tuple(latencies), statuses, time.perf_counter() - warm, completed[0])

    return asyncio.run(main())
