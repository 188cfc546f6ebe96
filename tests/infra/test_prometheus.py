"""infra/monitoring with Debian's Prometheus: the alert rules pass `promtool check` and their unit tests
(tests/infra/alerts_test.yaml, one per alert at least), and a real Prometheus, configured from
infra/monitoring/prometheus.yml, scrapes a running stack (the API under uvicorn, an edit worker, an io
worker) while an edit with a webhook goes through it. Every series the dashboard and the alerts read must
then be known to that Prometheus, and every panel's query must run: a renamed metric fails here.

Prometheus comes from Debian's `prometheus` package (installed once where we are root, else the tests
fail naming the command: tests/services/debian.py)."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from api.processes import die_with_parent, stop_process
from common import topology
from tests.conftest import face_jpeg, free_port, service_settings
from tests.services.api import wait_for_edit
from tests.services.debian import PROMETHEUS, PROMTOOL, require
from tests.services.settings import REPO_ROOT, settings_env
from tests.services.webhook_receiver import Receiver
from tests.services.worker import WorkerProcess

MONITORING = REPO_ROOT / "infra" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yaml")
SCRAPE_S = 1  # scrape and rule evaluation interval of the test's Prometheus
METRIC = re.compile(r"\b(faceedit_[a-z0-9_]+|up)\b")
# Histogram and counter samples belong to the metric family Prometheus keeps metadata for.
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def _exprs() -> list[str]:
    return [rule["expr"] for rule in _alert_rules()] + _dashboard_exprs()


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(require(PROMTOOL)), *args], capture_output=True, text=True, timeout=120)


# --- the rules on their own ------------------------------------------------------------------------


def test_rules_and_config_pass_promtool_check() -> None:
    rules = _promtool("check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = _promtool("check", "config", "--syntax-only", str(MONITORING / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_has_unit_tests_and_they_pass() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"] if not case.get("exp_alerts")}
    alerts = {rule["alert"] for rule in _alert_rules()}
    assert alerts - firing == set(), "alerts with no test that fires them"
    assert alerts - quiet == set(), "alerts with no test where they stay quiet"
    result = _promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    """The unit tests are not vacuous: the rules with one threshold moved fail them."""
    broken = tmp_path / "infra" / "monitoring"
    broken.mkdir(parents=True)
    text = ALERTS.read_text()
    assert "> 300" in text
    (broken / "alerts.yaml").write_text(text.replace("> 300", "> 3000"))
    tests = tmp_path / "tests" / "infra"
    tests.mkdir(parents=True)
    (tests / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text())
    result = _promtool("test", "rules", str(tests / ALERT_TESTS.name))
    assert result.returncode != 0 and "FaceEditQueueWaiting" in result.stdout + result.stderr


def test_dashboard_is_grafana_json_over_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "faceedit" and dashboard["panels"]
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and "datasource" in variables, panel["title"]
        assert panel["targets"] and all(target["expr"].strip() for target in panel["targets"]), panel["title"]


# --- a real Prometheus over a running stack -----------------------------------------------------------


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path, ready_url: str, timeout: float = 120) -> Iterator[None]:
    """Run `argv` until the test is done; ready once `ready_url` answers 200."""
    with log.open("ab") as out:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=die_with_parent(signal.SIGTERM))  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"{argv[0]} exited ({process.returncode}):\n{log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"{ready_url} not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield
    finally:
        stop_process(process)


def _prometheus_config(targets: dict[str, str], path: Path) -> Path:
    """infra/monitoring/prometheus.yml with its jobs (names kept) pointed at the local processes."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
    config["rule_files"] = [str(ALERTS)]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == set(targets), f"prometheus.yml scrapes {jobs}, the test runs {set(targets)}"
    for job in config["scrape_configs"]:
        for discovery in [key for key in job if key.endswith("_sd_configs")]:
            del job[discovery]
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    path.write_text(yaml.safe_dump(config))
    return path


class _Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def families(self) -> set[str]:
        """Every metric family a target exposed (HELP/TYPE lines), with or without samples yet."""
        answer = httpx.get(f"{self.url}/api/v1/targets/metadata", timeout=10).json()
        return {entry["metric"] for entry in answer["data"]}

    def wait_for(self, expr: str, check, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if check(result):
                return result
            assert time.monotonic() < deadline, f"{expr} never passed its check; last: {result}"
            time.sleep(SCRAPE_S)


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


@pytest.mark.services
def test_prometheus_scrapes_the_stack_and_knows_every_series_used(fresh_pg_url, redis_url, s3_endpoint, dev_bundle,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    # A database of its own: edits other tests left queued in the session's would count in edits_waiting.
    pg_url = fresh_pg_url
    prometheus_binary = require(PROMETHEUS)
    ports = {name: free_port() for name in ("api", "worker", "io", "prometheus")}
    settings = service_settings(
        pg_url, redis_url, s3_endpoint, model_dir=dev_bundle,
        liveness_ping_seconds=0.5, liveness_stale_seconds=30,
        webhook_allow_networks="127.0.0.0/8", webhook_allow_ports="1024-65535",
        webhook_retry_base_seconds=0.2, webhook_retry_max_seconds=1.0, webhook_timeout_seconds=5.0,
    )  # fmt: skip
    # One worker of each role, as the deployment files run them (common/topology.py).
    edit_worker = WorkerProcess(
        settings.model_copy(update={"metrics_port": ports["worker"], "liveness_dir": tmp_path / "live-worker"}),
        tmp_path / "worker.log", beat=False, role=topology.Role.MODEL)  # fmt: skip
    io_worker = WorkerProcess(
        settings.model_copy(update={"metrics_port": ports["io"], "liveness_dir": tmp_path / "live-io"}),
        tmp_path / "io.log", beat=False, role=topology.Role.IO)  # fmt: skip
    targets = {"faceedit-api": f"127.0.0.1:{ports['api']}", "faceedit-worker": f"127.0.0.1:{ports['worker']}",
               "faceedit-worker-io": f"127.0.0.1:{ports['io']}"}  # fmt: skip
    config = _prometheus_config(targets, tmp_path / "prometheus.yml")
    api_url, prometheus_url = f"http://127.0.0.1:{ports['api']}", f"http://127.0.0.1:{ports['prometheus']}"
    uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
               "--port", str(ports["api"])]  # fmt: skip
    prometheus = [str(prometheus_binary), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                  f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--log.level=warn"]  # fmt: skip

    with contextlib.ExitStack() as stack:
        stack.callback(edit_worker.stop)
        edit_worker.start()
        stack.callback(io_worker.stop)
        io_worker.start()
        stack.enter_context(_process(uvicorn, settings_env(settings), tmp_path / "api.log", f"{api_url}/healthz"))
        stack.enter_context(_process(prometheus, {}, tmp_path / "prometheus.log", f"{prometheus_url}/-/ready"))
        receiver = stack.enter_context(Receiver(statuses=[500]))  # the first delivery fails, its retry lands
        prom = _Prometheus(prometheus_url)

        from api.keys import create_key
        from common.db import make_engine, make_session_factory

        with make_session_factory(make_engine(settings.database_url))() as session:
            _, key = create_key(session, "prometheus")
        client = stack.enter_context(httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"},
                                                  timeout=30))  # fmt: skip
        image = client.post("/v1/images", files={"file": ("face.jpg", face_jpeg(), "image/jpeg")})
        assert image.status_code == 201, image.text
        created = client.post("/v1/edits", json={
            "image": image.json()["id"], "neutral": "a face", "target": "a smiling face", "alphas": [0, 2],
            "beta": 0.1, "webhook": receiver.url, "webhook_events_filter": ["completed"],
        })  # fmt: skip
        assert created.status_code == 201, created.text
        edit = wait_for_edit(client, created.json()["id"])
        assert edit["status"] == "succeeded", edit

        # What the edit and its webhook did, seen through Prometheus.
        prom.wait_for('faceedit_jobs_total{job="faceedit-worker", outcome="succeeded"}',
                      lambda r: r and float(r[0]["value"][1]) == 1)  # fmt: skip
        prom.wait_for('faceedit_webhook_attempts_total{job="faceedit-worker-io", outcome="delivered"}',
                      lambda r: r and float(r[0]["value"][1]) >= 1)  # fmt: skip
        assert prom.value('faceedit_webhook_attempts_total{outcome="retrying"}') == 1
        stages = {r["metric"]["stage"] for r in prom.query('faceedit_job_stage_seconds_count{job="faceedit-worker"}')}
        assert {"align", "invert", "direction", "synthesize", "paste", "store", "total"} <= stages
        alive = prom.wait_for("faceedit_worker_alive", lambda r: len(r) == 2 and all(x["value"][1] == "1" for x in r))
        assert {r["metric"]["job"] for r in alive} == {"faceedit-worker", "faceedit-worker-io"}
        up = prom.wait_for('up{job=~"faceedit-.*"}', lambda r: len(r) == 3 and all(x["value"][1] == "1" for x in r))
        assert {r["metric"]["job"] for r in up} == set(targets)
        dependencies = prom.query("faceedit_dependency_up")
        assert {r["metric"]["dependency"]: r["value"][1] for r in dependencies} == {
            "database": "1", "broker": "1", "storage": "1"}  # fmt: skip
        assert prom.value("faceedit_edits_waiting") == 0
        assert prom.value('sum(faceedit_http_requests_total{route="/v1/edits", status="201"})') == 1

        # Every series the dashboard and the rules read is one the stack exports (or declares, for those
        # only a failure or a GPU would give samples), and every query runs as written.
        families = prom.families() | {"up"}
        used = {name for expr in _exprs() for name in METRIC.findall(expr)}
        unknown = sorted(name for name in used if _family(name) not in families)
        assert not unknown, f"the dashboard or the alerts read series no target exports: {unknown}"
        for expr in _dashboard_exprs():
            prom.query(expr.replace("$__rate_interval", "1m"))

        # The rules loaded and evaluate cleanly, and a healthy stack raises no alert.
        rules = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = {rule["name"]: rule for group in rules for rule in group["rules"]}
        assert set(loaded) == {rule["alert"] for rule in _alert_rules()}
        assert all(rule["health"] == "ok" for rule in loaded.values()), loaded
        active = httpx.get(f"{prometheus_url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        assert not active, active
        assert len(receiver.requests) >= 2
