# The engine's image: the worker, the HTTP API, the codec server and the migration job all run from it.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, at the versions of the lock file, so a code change rebuilds only the layers below.
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY . .
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin engine

# Code stays root-owned and read-only to the process; settings come from the environment.
USER engine

EXPOSE 8000 8081
CMD ["python", "worker.py"]
