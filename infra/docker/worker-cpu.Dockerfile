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
COPY requirements/ requirements/
# torch first from the CPU index; the pinned `torch==2.14.1` in pipeline.txt is then already satisfied.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1 \
 && pip install -r requirements/pipeline.txt -r requirements/service.txt

COPY alembic.ini ./
COPY common/ common/
COPY pipeline/ pipeline/
COPY worker/ worker/

RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent faceedit
USER 10001

# The model bundle is a volume (`make download-models` fills ./models), mounted read-only here.
ENV MODEL_DIR=/models DEVICE=cpu
VOLUME ["/models"]
CMD ["celery", "-A", "worker.app", "worker", "-Q", "edits", "--pool", "solo", "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
