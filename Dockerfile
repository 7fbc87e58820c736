# syntax=docker/dockerfile:1
# Two targets from one base: `web` (no TensorFlow) and `worker` (TensorFlow, ImageNet weights baked in
# at build time so containers start offline). Both install with the Makefile's own step, as `make run` does.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /data/uploads /data/models \
    && chown app:app /data/uploads /data/models
WORKDIR /srv
COPY pyproject.toml Makefile README.md ./
COPY app app
COPY migrations migrations

FROM base AS web
# It listens beyond loopback: it refuses to start with the published default secret or admin password.
ENV ENVIRONMENT=production \
    HOST=0.0.0.0
RUN make venv EXTRAS= VENV=/opt/venv
COPY templates templates
COPY static static
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2)"]
# The arguments of app/run.py's UVICORN_ARGS: the bounded HTTP protocol reads no head past 64 kB, idle
# connections are kept 65 s.
CMD ["uvicorn", "--factory", "app.web.app:app", "--http", "app.web.server:BoundedHttpTools", "--timeout-keep-alive", "65", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

FROM base AS worker
# Where OpenVINO's converted model and INFERENCE_BACKEND=auto's decision are kept (compose: a volume, so a
# restart neither converts nor probes again).
ENV MODEL_CACHE_DIR=/data/models
RUN make venv EXTRAS=worker VENV=/opt/venv
USER 10001:10001
# Fetch the ImageNet weights now (into ~/.keras/models), so a worker starts without a network.
RUN python -c "from app.worker.backends import load_classifier; load_classifier('imagenet')"
CMD ["python", "-m", "app.worker"]
