"""A real webhook receiver on loopback for tests: records every request, answers scripted statuses,
and can answer slowly (a byte at a time) the way a stalled or hostile receiver does."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request was read


class Receiver:
    """`ThreadingHTTPServer` on 127.0.0.1:`port` (0: a free one). `statuses` is consumed one per
    request (then 200); `redirect_to` makes every answer a 302 to that location; `headers` are added to
    every answer. `trickle_s`: the status line and headers go out one byte every `trickle_s` seconds;
    `body_trickle_s`: the headers at once, then a large body one byte at a time (until the client hangs up
    or the receiver stops)."""

    def __init__(self, statuses: list[int] | None = None, redirect_to: str | None = None, port: int = 0,
                 headers: dict[str, str] | None = None, trickle_s: float | None = None,
                 body_trickle_s: float | None = None):
        self.requests: list[Received] = []
        self.statuses: deque[int] = deque(statuses or [])
        self.redirect_to = redirect_to
        self.headers = dict(headers or {})
        self.trickle_s, self.body_trickle_s = trickle_s, body_trickle_s
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver._lock:
                    receiver.requests.append(Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
                    status = receiver.statuses.popleft() if receiver.statuses else 200
                if receiver.redirect_to:
                    status, extra = 302, {"Location": receiver.redirect_to}
                else:
                    extra = {}
                slow_body = receiver.body_trickle_s is not None
                lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
                lines += [f"{k}: {v}" for k, v in {**receiver.headers, **extra}.items()]
                lines += [f"Content-Length: {1_000_000 if slow_body else 2}", "Connection: close", "", ""]
                head = "\r\n".join(lines).encode("latin-1")
                try:
                    if receiver.trickle_s is not None:
                        self._trickle(head + b"ok", receiver.trickle_s)
                    elif slow_body:
                        self.wfile.write(head)
                        self.wfile.flush()
                        self._trickle(b"x" * 1_000_000, receiver.body_trickle_s)
                    else:
                        self.wfile.write(head + b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up: what a deadline does

            def _trickle(self, data: bytes, every_s: float) -> None:
                for i in range(len(data)):
                    if receiver.stopped.is_set():
                        return
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(every_s)

            do_POST = _answer
            do_GET = _answer

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for_request(self, timeout_s: float = 30) -> Received:
        """The first request, once one came (an AssertionError after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while not self.requests:
            assert time.monotonic() < deadline, f"no request reached the receiver in {timeout_s} s"
            time.sleep(0.2)
        return self.requests[0]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
