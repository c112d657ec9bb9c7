# syntax=docker/dockerfile:1
#
# Shoal's two images, one build target each:
#   worker    `shoal worker`, `shoal migrate`, `shoal enqueue`: `pip install shoal`, no operator stack.
#             docker build --target worker -t shoal-worker:dev .
#             Extend it with your tasks: FROM shoal-worker:dev, then COPY your task modules into /app
#             (on PYTHONPATH; see README).
#   operator  the same plus kopf, the kubernetes client and the console's server
#             (`shoal[operator,console]`): `shoal operator`, `shoal console`. The default target, and the
#             image the Helm chart deploys (operator, migrations, console).
#             docker build -t shoal:dev .
# Sizes of the two venvs: `python bench/image_size.py` (docs/kubernetes.md).
#
# The runtime stage runs as the numeric user 10001 and never writes outside /tmp, so it
# works with `readOnlyRootFilesystem: true` (the Helm chart mounts an emptyDir at /tmp).

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------
# Builder: build the project's wheel and install it, with its runtime dependencies only
# (no extras), into a self-contained virtualenv at /opt/shoal: the worker's venv.
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# PYTHONSAFEPATH: keep /src (the component folders) off sys.path; the package is built, not run, here.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1

WORKDIR /src

# Only what the package build needs: metadata (README.md is pyproject's `readme`; the
# wildcard keeps the build working while it is absent), then the component folders that
# pyproject.toml maps onto the `shoal` import root.
COPY pyproject.toml README.md* LICENSE ./
COPY core/ core/
COPY worker/ worker/
COPY operator/ operator/
COPY scaler/ scaler/
COPY cli/ cli/
COPY console/ console/
COPY sql/ sql/
COPY testing/ testing/

# Non-editable install of the built wheel; pip compiles the bytecode here, at build
# time, so the read-only runtime never needs to write .pyc files.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/shoal \
 && /opt/shoal/bin/pip install --no-cache-dir /wheels/shoal-*.whl \
 && /opt/shoal/bin/shoal --help > /dev/null

# The operator's venv: the worker's plus the `operator` and `console` extras.
FROM builder AS builder-operator
RUN /opt/shoal/bin/pip install --no-cache-dir "$(echo /wheels/shoal-*.whl)[operator,console]" \
 && /opt/shoal/bin/shoal operator --help > /dev/null

# ---------------------------------------------------------------------------------------
# Runtime: the slim base plus a virtualenv, nothing else (no compiler, no pip cache).
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="shoal" \
      org.opencontainers.image.description="A PostgreSQL-backed job queue for Kubernetes whose workers scale themselves" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 shoal \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /tmp --shell /usr/sbin/nologin shoal

# PYTHONPATH=/app: user images COPY their task modules into /app, and `shoal worker
# --tasks mypkg.tasks` imports them from there.
ENV PATH="/opt/shoal/bin:${PATH}" \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    TMPDIR=/tmp

WORKDIR /app

# 8080: operator liveness (/healthz); 9090: Prometheus /metrics (operator and workers;
# workers also serve /healthz and /readyz there); 8090: `shoal console`.
EXPOSE 8080 8090 9090

# Numeric, so Kubernetes' runAsNonRoot can verify it without resolving a name.
USER 10001:10001

ENTRYPOINT ["shoal"]
CMD ["--help"]

# The worker image: the runtime plus the worker's venv.
FROM runtime AS worker
COPY --from=builder /opt/shoal /opt/shoal

# The operator image (the default target): the runtime plus the operator's venv.
FROM runtime AS operator
COPY --from=builder-operator /opt/shoal /opt/shoal
