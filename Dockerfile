# syntax=docker/dockerfile:1
# One image, two entry points: `polca-operator` (Deployment) and `polca-node` (DaemonSet).
# Build: `make image` (needs a Docker engine). The chart sets the command and the privileges:
# the image runs as an unprivileged user by default; only the node daemon's pod spec raises
# privileges, and only as far as NVML writes need (docs/install.md, "Privileges").
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The runtime needs no extra. `sim` (numpy, rich, matplotlib) only for fake GPUs (kind, demo):
# `make image IMAGE_EXTRAS=sim`. Without it `polca-node --gpu-backend fake` says so and exits.
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/polca
# Dependencies come from the project's own pyproject.toml; sources follow its package layout.
COPY pyproject.toml README.md ./
COPY polca/ polca/
COPY operator/ operator/
COPY node-daemon/ node-daemon/
COPY testbed/ testbed/
# The test helpers (polca_testbed) are in the same distribution for `make test`; the runtime
# never imports them, so the image drops them.
RUN /opt/polca/bin/pip install --no-compile ".${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /opt/polca/lib/python3*/site-packages/polca_testbed \
    && /opt/polca/bin/python -c "import polca, polca_operator, polca_node, kopf, pynvml" \
    && /opt/polca/bin/polca-node --version && /opt/polca/bin/polca-operator --version

FROM ${PYTHON_IMAGE}
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
