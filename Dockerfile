# syntax=docker/dockerfile:1
#
# gridfleet container image: one image for every process (`gridfleet ingress | coordinator |
# worker | flower | health ...`). Build and push (see docs/deploy.md):
#
#   docker build -t registry.example.com/gridfleet/gridfleet:0.1.0 .
#   docker push registry.example.com/gridfleet/gridfleet:0.1.0
#
# Stage 1 (builder) compiles wheels for gridfleet and every dependency and installs them into a
# virtualenv at /opt/gridfleet. Stage 2 (runtime) copies only that virtualenv onto the same slim
# base: no compiler, no headers, no pip cache, no wheels, no source tree, no secrets.
# Pin the base by digest in your own pipeline if you need bit-for-bit rebuilds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Build tools only for dependencies without a wheel for the target platform (most have one).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what the wheel needs (hatchling reads README.md as the long description) and the lock file
# (`make lock`): every dependency at the version and hash it pins. The .dockerignore is an
# allow-list, so nothing else from the checkout can reach the build.
COPY pyproject.toml README.md requirements.lock ./
COPY gridfleet ./gridfleet

# 1. wheels for every locked dependency (hashes checked on download), then gridfleet's own
#    (no dev extras; --no-deps: its dependencies are exactly the locked ones)
RUN python -m pip wheel --wheel-dir /wheels --require-hashes -r requirements.lock \
    && python -m pip wheel --wheel-dir /wheels --no-deps .
# 2. an isolated virtualenv installed from those wheels only (no index); pip is removed after.
#    Bytecode is compiled here because the runtime root filesystem is read-only (fast start-up,
#    which matters for the exec health probes).
RUN python -m venv /opt/gridfleet \
    && /opt/gridfleet/bin/pip install --no-index --find-links /wheels -r requirements.lock \
    && /opt/gridfleet/bin/pip install --no-index --find-links /wheels --no-deps gridfleet \
    && /opt/gridfleet/bin/pip check \
    && /opt/gridfleet/bin/pip uninstall -y pip \
    && /opt/gridfleet/bin/python -m compileall -q -j 0 /opt/gridfleet/lib \
    && /opt/gridfleet/bin/gridfleet --version

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG GRIDFLEET_UID=10001
ARG GRIDFLEET_GID=10001

LABEL org.opencontainers.image.title="gridfleet" \
      org.opencontainers.image.description="Fleets of energy-trading aggregators on the Grid Singularity Exchange" \
      org.opencontainers.image.licenses="Apache-2.0"

# tini as PID 1: forwards SIGTERM to gridfleet (Celery's warm/soft shutdown depends on receiving
# it) and reaps zombies. A runtime dependency, not a build tool.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid "${GRIDFLEET_GID}" gridfleet \
    && useradd --uid "${GRIDFLEET_UID}" --gid "${GRIDFLEET_GID}" --no-log-init \
       --no-create-home --home-dir /tmp --shell /usr/sbin/nologin gridfleet

COPY --from=builder /opt/gridfleet /opt/gridfleet

# The root filesystem is read-only in Kubernetes: everything that wants to write goes to /tmp
# (an emptyDir there). Logs are JSON on stdout, unbuffered.
ENV PATH=/opt/gridfleet/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    GRIDFLEET_LOG_FORMAT=json \
    GRIDFLEET_METRICS_PORT=9100

WORKDIR /tmp
# Numeric UID:GID so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

# 9100: Prometheus /metrics and /healthz (ingress, coordinator); 5555: Flower.
EXPOSE 9100 5555

ENTRYPOINT ["/usr/bin/tini", "--", "gridfleet"]
CMD ["--help"]
