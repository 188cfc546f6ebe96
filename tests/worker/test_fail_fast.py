"""A bug fails fast: a programming error after the claim ends the edit at once as `internal_error` (logged with
the edit id and its traceback), on attempt 1; only an unreachable database, broker or storage is left to the
lease, and the job runs again once it is back."""

from __future__ import annotations

import shutil
import time

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from common.models import Edit
from common.queue import enqueue_edit, make_celery
from common.storage import StorageUnavailable
from tests.conftest import face_jpeg, fresh_database
from tests.services.rows import starting_edit, stored_image
from tests.services.settings import FAST_TIMINGS, build_settings
from tests.services.worker import WorkerProcess
from worker.edit_job import is_infrastructure_error, run_edit
from worker.runtime import Runtime


def _s3_error(status: int) -> ClientError:
    return ClientError({"Error": {"Code": "SlowDown" if status >= 500 else "AccessDenied"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")  # fmt: skip


def _caused_by(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("wrapped") from cause
    except RuntimeError as error:
        return error


@pytest.mark.parametrize("error", [
    OperationalError("SELECT 1", {}, Exception("server closed the connection")), BrokerError("broker down"),
    RedisConnectionError("refused"), EndpointConnectionError(endpoint_url="http://s3.invalid"), _s3_error(503),
    StorageUnavailable("volume gone"), _caused_by(RedisConnectionError("refused")),
])  # fmt: skip
def test_unreachable_services_are_infrastructure_errors(error):
    assert is_infrastructure_error(error)


@pytest.mark.parametrize("error", [
    TypeError("bug"), KeyError("bug"), ZeroDivisionError(), FileNotFoundError("a model file"), _s3_error(403),
    ValueError("bad"), _caused_by(ValueError("bad")),
])  # fmt: skip
def test_everything_else_is_a_bug(error):
    assert not is_infrastructure_error(error)


def _edit_row(factory, storage, owner: str = "alice") -> str:
    return starting_edit(factory, stored_image(factory, storage, face_jpeg(), owner), owner)


class BuggyWorker(WorkerProcess):
    """A real worker process (`-P solo`, no beat) on the app with the planted bug."""

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("worker.app")] = "tests.worker.buggy_app"
        return command


@pytest.mark.services
def test_a_bug_after_the_claim_fails_the_edit_at_once(redis_url, dev_bundle, tmp_path):
    with fresh_database() as database:  # its own: no other worker's reaper may take the row
        settings = build_settings(database, redis_url, storage_dir=tmp_path / "store", model_dir=dev_bundle,
                                  cache_dir=tmp_path / "cache", **FAST_TIMINGS)  # fmt: skip
        runtime = Runtime(settings)
        worker = BuggyWorker(settings, tmp_path / "worker.log", beat=False).start()
        try:
            edit_id = _edit_row(runtime.session_factory, runtime.storage)
            sent = time.monotonic()
            enqueue_edit(make_celery(settings), settings, edit_id)
            while time.monotonic() - sent < 60:
                with runtime.session_factory() as session:
                    edit = session.get(Edit, edit_id)
                if edit.status not in ("starting", "processing"):
                    break
                time.sleep(0.2)
            assert (edit.status, edit.error_code, edit.attempt) == ("failed", "internal_error", 1), (
                edit.status, edit.error_code, worker.log()[-3000:])
            assert time.monotonic() - sent < 30  # seconds, not lease × attempts
            log = worker.log()
            assert f"edit {edit_id} crashed" in log and "planted bug" in log and "Traceback" in log
        finally:
            worker.stop()


@pytest.mark.services
def test_unreachable_storage_is_left_to_the_lease_then_retried(redis_url, dev_bundle, tmp_path):
    with fresh_database() as database:  # its own: the session worker's reaper would re-send the expired row
        _left_to_the_lease_then_retried(database, redis_url, dev_bundle, tmp_path)


def _left_to_the_lease_then_retried(pg_url, redis_url, dev_bundle, tmp_path):
    store = tmp_path / "store"
    settings = build_settings(pg_url, redis_url, storage_dir=store, model_dir=dev_bundle, cache_dir=tmp_path / "cache",
                              lease_seconds=1.0, heartbeat_seconds=0.5)  # fmt: skip
    runtime = Runtime(settings)
    edit_id = _edit_row(runtime.session_factory, runtime.storage)
    store.rename(tmp_path / "away")
    store.write_bytes(b"")  # the volume is gone: the folder's path leads nowhere readable
    with pytest.raises(StorageUnavailable):
        run_edit(runtime, edit_id)
    with runtime.session_factory() as session:
        edit = session.get(Edit, edit_id)
    assert (edit.status, edit.error_code, edit.attempt) == ("processing", None, 1)  # not failed: retried later

    store.unlink()
    shutil.move(tmp_path / "away", store)  # the volume is back
    # the lease runs out (the reaper would re-send the job now); a heartbeat may renew it once while the job
    # stops, so wait a lease past that renewal, with margin for a loaded machine
    time.sleep(settings.lease_seconds + settings.heartbeat_seconds + 0.5)
    assert run_edit(runtime, edit_id) == "succeeded"
    with runtime.session_factory() as session:
        assert session.get(Edit, edit_id).attempt == 2
