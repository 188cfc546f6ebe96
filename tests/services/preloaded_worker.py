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
    # The model worker's pool is configured (common/topology.model_worker_config: solo on a CPU), and Celery takes
    # `--pool prefork` on a command line for its default and runs the configured pool instead: a SIGKILL aimed
    # at the job's child then killed the whole worker. So the configuration says prefork too.
    app.conf.worker_pool, app.conf.worker_concurrency = "prefork", 1
    app.worker_main(["worker", *sys.argv[1:], "--pool", "prefork", "--concurrency", "1"])


if __name__ == "__main__":
    main()
