# The HTTP API: FastAPI + the Celery client. No torch, no model weights. The same image runs the
# light processes that never touch a model: the `io` worker, beat and Flower (worker.app imports the
# pipeline only when an edit runs).
# Build from the repository root:  docker build -f infra/docker/api.Dockerfile -t faceedit-api .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The code is imported from here by every process: Celery puts the working folder on sys.path only
# while it loads the app, so a later `import pipeline` (the worker's warm-up) would fail without it.
ENV PYTHONPATH=/app
# Requirements first: the dependency layer is rebuilt only when they change. Exact versions, hash-checked
# (requirements/README.md).
COPY requirements/lock-service.txt requirements/lock-service.txt
RUN pip install --require-hashes -r requirements/lock-service.txt

COPY alembic.ini ./
COPY common/ common/
COPY api/ api/
COPY worker/ worker/
COPY web/ web/

# Non-root; it owns nothing in /app, so the code is read-only to the process.
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent faceedit
USER 10001

ENV WEB_DIR=/app/web
EXPOSE 8000
# X-Forwarded-For is believed only from FORWARDED_ALLOW_IPS (default 127.0.0.1; uvicorn and the app read it).
CMD ["uvicorn", "--factory", "api.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
