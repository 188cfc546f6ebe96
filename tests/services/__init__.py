"""The test harness shared by every suite: what a test needs to run the service for real.

- `provision`: where PostgreSQL, Redis and S3 come from (given, found at the default address, or
  started by the session itself), and `require(name)`, which fails a test without them.
- `postgres`, `redis`, `browser`: the embedded servers, private databases, Chromium.
- `settings`: the one settings builder (`build_settings`) and the child-process environment.
- `worker`: the one worker launcher (`WorkerProcess`).
- `api`: the API in process (`make_api`, `Api`).

The fixtures on top of them live in tests/conftest.py (pg_url, redis_url, s3_endpoint, settings,
worker, api, ...); tests/trust and tests/web add their own views of the same pieces.
"""
