"""The test harness shared by every suite: what a test needs to run the service for real.

- `provision`: where PostgreSQL, Redis and S3 come from (given, found at the default address, or
  started by the session itself), and `require(name)`, which fails a test without them.
- `postgres`, `redis`, `browser`: the embedded servers, private databases, Chromium.
- `settings`: the one settings builder (`build_settings`, `local_settings`, `fault_settings`) and the
  child-process environment.
- `worker`: the one worker launcher (`WorkerProcess`); `preloaded_worker`, the prefork worker it can start.
- `api`: the one client: the API in process (`make_api`, `Api`; `Service`, three accounts, for the attack
  tests), and `asgi_request` below it; `api_process`: the API as a uvicorn process.
- `deployment`: API + preloaded worker + storage, for the fault tests.
- `webhook_receiver`, `upload_files`: a real webhook receiver on loopback; hostile and valid uploads.
- `attack_counts`: the closing counts of the attack suite (marker `trust`), printed at the end of a run.

The fixtures on top of them live in tests/conftest.py (pg_url, fresh_pg_url, redis_url, s3_endpoint,
settings, worker, api, ...); tests/web adds its own views of the same pieces.
"""
