"""A prefork Celery worker whose parent loads the models once, before forking its child.

The fault tests SIGKILL the child that runs a job many times; Celery forks a replacement, which
inherits the loaded models and is ready in a moment instead of re-importing torch and reloading
weights (~30 s on a busy CI machine). The job-level guarantees under test (claim, lease, reaper,
redelivery) are the same as with the production `-P solo` worker.

    python -m tests.services.preloaded_worker <celery worker options>
"""

from __future__ import annotations

import os
import sys

# One OpenMP thread: a parent that never started an OpenMP pool can fork safely.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from worker.app import app
    from worker.runtime import get_runtime

    get_runtime().warm()  # children inherit the loaded Editor through the cached runtime
    # After the harness's options (tests/services/worker.py): of a repeated option Celery takes the last.
    app.worker_main(["worker", *sys.argv[1:], "--pool", "prefork", "--concurrency", "1"])


if __name__ == "__main__":
    main()
