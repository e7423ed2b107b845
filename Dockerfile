# syntax=docker/dockerfile:1
# Flowpoint image: the sidecar (default command) and the demo worker (`flowpoint demo`).
#   docker build -t flowpoint .                     # sidecar / worker image
#   docker build --target load -t flowpoint-load .  # + Locust and load/ (docker-compose "locust")
#
# The sidecar listens on 0.0.0.0 inside the container on purpose: a container's (or pod's)
# network namespace is the boundary, and the worker beside it, the kubelet's /readyz probe
# and Prometheus all reach it through that namespace. Publish the port on 127.0.0.1 only
# (docker run -p 127.0.0.1:4318:4318, see docker-compose.yml) or guard it with a
# NetworkPolicy (deploy/k8s/); outside a container `flowpoint serve` binds 127.0.0.1.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the distribution and its dependencies into a virtualenv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/flowpoint
WORKDIR /src
COPY pyproject.toml README.md ./
COPY checkpoint ./checkpoint
COPY flows ./flows
COPY instrumentation ./instrumentation
COPY sidecar ./sidecar
COPY flowpoint_cli ./flowpoint_cli
RUN /opt/flowpoint/bin/pip install .

# ---- base: the runtime, no build context, unprivileged user
FROM ${PYTHON_IMAGE} AS base
ENV PATH=/opt/flowpoint/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLOWPOINT_DATA_DIR=/var/lib/flowpoint/data \
    FLOWPOINT_SPOOL_DIR=/var/lib/flowpoint/spool \
    FLOWPOINT_PORT=4318
RUN groupadd --system --gid 10001 flowpoint \
    && useradd --system --uid 10001 --gid flowpoint --home-dir /home/flowpoint --create-home \
        --shell /usr/sbin/nologin flowpoint \
    && mkdir -p /var/lib/flowpoint/data /var/lib/flowpoint/spool \
    && chown -R flowpoint:flowpoint /var/lib/flowpoint
COPY --from=build /opt/flowpoint /opt/flowpoint
WORKDIR /home/flowpoint

# ---- load: Locust with the project's load profiles (load/locustfile.py)
FROM base AS load
RUN pip install --no-cache-dir "locust==2.47.*"
COPY --chown=10001:10001 load ./load
USER 10001:10001
EXPOSE 8089
ENTRYPOINT ["locust"]
CMD ["-f", "load/locustfile.py"]

# ---- runtime (default target): the sidecar
FROM base AS runtime
# The spool holds acknowledged checkpoints while PostgreSQL is unreachable: mount a volume.
VOLUME ["/var/lib/flowpoint"]
USER 10001:10001
EXPOSE 4318
# slim has no curl: probe /healthz with the interpreter that is already there.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FLOWPOINT_PORT', '4318') + '/healthz', timeout=2)"]
CMD ["flowpoint", "serve", "--host", "0.0.0.0"]
