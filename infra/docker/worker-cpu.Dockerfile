# The edit worker on CPU (machines without a GPU: the `cpu` compose profile, the model download
# job). torch comes from the CPU-only wheel index (no CUDA libraries).
# Build from the repository root:  docker build -f infra/docker/worker-cpu.Dockerfile -t faceedit-worker-cpu .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# mediapipe pulls the non-headless OpenCV, which links libGL and glib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The code is imported from here by every process: Celery puts the working folder on sys.path only
# while it loads the app, so a later `import pipeline` (the worker's warm-up) would fail without it.
ENV PYTHONPATH=/app
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# torch's CPU build first, from the CPU index; then the rest, exact versions and hash-checked: lock-worker-cpu.txt
# holds no torch and none of the CUDA build's packages (requirements/README.md). Both --no-deps: torch's own
# dependencies are in the lock, and pip would otherwise resolve the installed torch's requirements again, which
# hash-checking mode refuses for anything not in the file. `pip check`: together they are a consistent environment.
COPY requirements/lock-worker-cpu.txt requirements/lock-worker-cpu.txt
RUN pip install --no-deps --index-url "${TORCH_INDEX_URL}" torch==2.14.1+cpu torchvision==0.29.1+cpu \
 && pip install --no-deps --require-hashes -r requirements/lock-worker-cpu.txt \
 && pip check

COPY alembic.ini ./
COPY common/ common/
COPY pipeline/ pipeline/
COPY worker/ worker/

RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent faceedit
USER 10001

# The model bundle is a volume (`make download-models` fills ./models), mounted read-only here.
ENV MODEL_DIR=/models DEVICE=cpu
VOLUME ["/models"]
CMD ["celery", "-A", "worker.app", "worker", "-Q", "edits", "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
