# syntax=docker/dockerfile:1
# One image, two entry points: `polca-operator` (Deployment) and `polca-node` (DaemonSet).
# Build: `make image` (Docker, or podman/buildah: tools/build-image.sh). The chart sets the command
# and the privileges: the image runs as an unprivileged user by default; only the node daemon's
# pod spec raises privileges, and only as far as NVML writes need (docs/install.md, "Privileges").
# BASE is any image with Python 3.11 as `python3` and its venv module: the official slim image
# by default, or the Debian-packages base that tools/build-image.sh makes without a registry.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# The runtime needs no extra. `sim` (numpy, rich, matplotlib) is for fake GPUs only (kind, the
# real-node tests): EXTRAS=sim, which the Makefile's image targets pass. Without it
# `polca-node --gpu-backend fake` says what is missing and exits.
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/polca
# Dependencies come from the project's own pyproject.toml, in a layer of their own: a change to
# the sources rebuilds only the small layer below (seconds, not a minute of downloads).
# The optional `ca-bundle` secret is the builder's CA bundle, for networks whose proxy re-signs
# TLS (tools/build-image.sh passes the host's); it is mounted for the pip steps only, never stored.
COPY pyproject.toml README.md ./
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/polca/bin/python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', \
       'rb'))['project']; extras = [e for e in os.environ['EXTRAS'].split(',') if e]; \
       print(*p['dependencies'], *(d for e in extras for d in p['optional-dependencies'][e]), \
       sep='\n')" > /tmp/requirements.txt \
    && /opt/polca/bin/pip install --no-compile -r /tmp/requirements.txt
# Sources follow the project's package layout.
COPY polca/ polca/
COPY operator/ operator/
COPY node-daemon/ node-daemon/
COPY testbed/ testbed/
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/polca/bin/pip install --no-compile --no-deps . \
    && /opt/polca/bin/pip check \
    && /opt/polca/bin/python -c "import polca, polca_operator, polca_node, kopf, pynvml" \
    && /opt/polca/bin/polca-node --version && /opt/polca/bin/polca-operator --version
# The test helpers (polca_testbed) share the distribution for `make test`; nothing in the image
# imports them, so the image drops them.
RUN rm -rf /opt/polca/lib/python3*/site-packages/polca_testbed
# Bytecode, compiled once here (pip ran with --no-compile): the runtime writes none
# (PYTHONDONTWRITEBYTECODE, an unprivileged user), so without it every start compiles every
# module and the node daemon's imports hold ~4 MB more RSS (README, "Benchmarks"). unchecked-hash:
# the bytecode stays valid whatever modification times the copy below gives the sources.
RUN /opt/polca/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/polca/lib

FROM ${BASE}
LABEL org.opencontainers.image.title="polca" \
      org.opencontainers.image.description="POLCA for Kubernetes: operator and node daemon" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/polca /opt/polca
ENV PATH=/opt/polca/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 65532: the conventional "nonroot" uid; the chart's securityContext uses the same numbers.
USER 65532:65532
WORKDIR /tmp
CMD ["polca-operator"]
