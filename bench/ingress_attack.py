"""The H1 attack of issue #15, measured: parallel ~24.8 MiB `{"alphas":[1.5,...]}` bodies against a real
uvicorn API process, with junk bearer tokens and with a valid key; the API process's peak memory (VmHWM)
and CPU time (user + system) per scenario, each on a fresh process.

    .venv/bin/python -m bench.ingress_attack                      # this checkout
    .venv/bin/python -m bench.ingress_attack --tree /tmp/before   # another checkout (git worktree)

Needs PostgreSQL (TEST_DATABASE_URL, as the tests) and Redis (TEST_REDIS_URL). Not a test: a measurement
for docs/SECURITY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from api.processes import free_port

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://faceedit:faceedit@127.0.0.1:5432/faceedit_test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MIB = 1024 * 1024


def attack_body(size: int = int(24.8 * MIB)) -> bytes:
    items = (size - len('{"alphas":[]}')) // len("1.5,")
    return b'{"alphas":[' + b",".join([b"1.5"] * items) + b"]}"


def _in_tree(tree: Path, env: dict[str, str], code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


class Api:
    """`uvicorn --factory api.main:create_app` from `tree`, one process, its memory and CPU read by psutil."""

    def __init__(self, tree: Path, env: dict[str, str]):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="ingress-attack-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--port", str(self.port),
             "--log-level", "warning"], cwd=tree, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"the API did not start: {Path(self.log.name).read_text()[-2000:]}")
        self.ps = psutil.Process(self.process.pid)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _send(url: str, body: bytes, authorization: str, upload: bool) -> str:
    if upload:  # the same bytes as a photo upload with an Idempotency-Key (read whole by that layer before)
        path, headers = "/v1/images", {"Content-Type": "multipart/form-data; boundary=b",
                                       "Idempotency-Key": secrets.token_hex(8)}
    else:
        path, headers = "/v1/edits", {"Content-Type": "application/json"}
    try:
        response = httpx.post(f"{url}{path}", content=body, timeout=120,
                              headers={"Authorization": authorization, **headers})
        return str(response.status_code)
    except httpx.HTTPError as error:  # the server answered early and closed: the client could not finish sending
        return type(error).__name__


def scenario(tree: Path, env: dict[str, str], body: bytes, parallel: int, key: str | None,
             upload: bool = False) -> dict:
    api = Api(tree, env)
    try:
        idle_rss, cpu0 = api.peak_rss_mib(), api.cpu_seconds()
        started = time.monotonic()
        with ThreadPoolExecutor(parallel) as pool:
            auths = [f"Bearer {key}" if key else "Bearer fe_" + secrets.token_urlsafe(32) for _ in range(parallel)]
            answers = list(pool.map(lambda a: _send(api.url, body, a, upload), auths))
        wall = time.monotonic() - started
        time.sleep(0.5)
        return {"key": "valid" if key else "junk", "route": "POST /v1/images" if upload else "POST /v1/edits",
                "parallel": parallel, "answers": sorted(answers),
                "idle_rss_mib": round(idle_rss, 1), "peak_rss_mib": round(api.peak_rss_mib(), 1),
                "cpu_s": round(api.cpu_seconds() - cpu0, 2), "wall_s": round(wall, 2)}
    finally:
        api.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--parallel", type=int, default=6)
    args = parser.parse_args()
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"attack_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    storage = tempfile.mkdtemp(prefix="ingress-attack-")
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": REDIS_URL, "STORAGE_BACKEND": "local",
           "STORAGE_DIR": storage, "WEB_DIR": storage + "/no-web", "PYTHONPATH": str(args.tree),
           # per-key limits out of the way: the valid-key run must reach the body, as a paying client would
           "RATE_LIMIT_BURST": "100000", "RATE_LIMIT_PER_SECOND": "1000", "SUBMIT_RATE_BURST": "100000",
           "SUBMIT_RATE_PER_SECOND": "1000", "LOG_LEVEL": "WARNING"}
    try:
        _in_tree(args.tree, env, f"from common.db import upgrade; upgrade({url!r})")
        key = _in_tree(args.tree, env, "from api.keys import create_key\nfrom common.db import make_engine, "
                       "make_session_factory\nfrom common.settings import Settings\ns = Settings()\nwith "
                       "make_session_factory(make_engine(s.database_url))() as session:\n    print(create_key("
                       "session, 'attack')[1])").splitlines()[-1]
        body = attack_body()
        results = {"tree": str(args.tree), "commit": _in_tree(args.tree, env, "import subprocess; print(subprocess."
                                                              "check_output(['git', 'rev-parse', '--short', 'HEAD'"
                                                              "], text=True))"),
                   "body_mib": round(len(body) / MIB, 2), "scenarios": []}
        for which, upload in ((None, False), (key, False), (None, True)):
            results["scenarios"].append(scenario(args.tree, env, body, args.parallel, which, upload))
        print(json.dumps(results, indent=2))
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
