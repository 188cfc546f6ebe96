# The GPU edit worker. PyPI's Linux torch wheels are the CUDA build and bring the CUDA runtime
# libraries as pip packages; the host's NVIDIA driver comes in through the container toolkit.
# Build from the repository root:  docker build -f infra/docker/worker-cuda.Dockerfile -t faceedit-worker-cuda .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# mediapipe pulls the non-headless OpenCV, which links libGL and glib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The code is imported from here by every process: Celery puts the working folder on sys.path only
# while it loads the app, so a later `import pipeline` (the worker's warm-up) would fail without it.
ENV PYTHONPATH=/app
# Exact versions, hash-checked (requirements/README.md); the lock's torch is PyPI's CUDA build.
COPY requirements/lock-worker.txt requirements/lock-worker.txt
RUN pip install --require-hashes -r requirements/lock-worker.txt

COPY alembic.ini ./
COPY common/ common/
COPY pipeline/ pipeline/
COPY worker/ worker/

RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent faceedit
USER 10001

# The model bundle is a volume (`make download-models` fills ./models), mounted read-only here.
ENV MODEL_DIR=/models DEVICE=cuda
VOLUME ["/models"]
# One process per GPU, the models loaded once in it; it runs EDIT_JOBS_PER_WORKER jobs at once (default 8 on a
# GPU: Celery's threads pool, chosen from the settings by common/topology.py), their renders batched, and takes a
# message only when a job slot is free (worker_disable_prefetch in common/queue.py).
CMD ["celery", "-A", "worker.app", "worker", "-Q", "edits", "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
