# syntax=docker/dockerfile:1
#
# genforge's two images, from the repository root:
#
#   docker build --target operator -t genforge/operator:dev .
#   docker build --target trainer  -t genforge/trainer:dev .                              # CPU torch
#   docker build --target trainer  --build-arg TORCH_VARIANT=cu128 -t genforge/trainer:dev-cu128 .
#
# The operator image is slim (kopf, the Kubernetes client, no torch); the trainer image
# carries torch, diffusers and accelerate. TORCH_VARIANT picks the PyTorch wheel index:
# `cpu`, or a CUDA build that PyTorch publishes for TORCH_VERSION (cu126, cu128, …); the
# CUDA runtime comes inside the wheels, the driver from the node. Both images run as the
# non-root user 1000 and hold no compilers: everything is installed into a virtualenv in
# a build stage and only that virtualenv is copied into the final stage.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------- base
FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin genforge

# ---------------------------------------------------------------------------- build stages
# Only the package folders an image needs: the operator image gets operator/ alone (not
# local/, the local cluster, nor trainer/); setuptools skips the `where` folders that are absent.
FROM base AS source
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY operator/ operator/

FROM source AS build-operator
# DL3013: the package is this repository; its dependencies are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[operator]" \
    && python -c "import genforge_operator.run_operator, kopf, kubernetes"

FROM source AS build-trainer
COPY trainer/ trainer/
# The torch release pinned in pyproject.toml's `trainer` extra.
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
# hadolint ignore=DL3013
RUN case "${TORCH_VARIANT}" in \
        cpu|cu[0-9][0-9]*|rocm[0-9]*) ;; \
        *) echo "TORCH_VARIANT must be cpu, cuNNN or rocmN.N, not '${TORCH_VARIANT}'" >&2; exit 2 ;; \
    esac \
    && pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}" \
    && pip install ".[trainer,cloud]" \
    && python -c "import torch, diffusers, accelerate, genforge_trainer.cli"

# ---------------------------------------------------------------------------- operator
FROM base AS operator
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="genforge operator" \
      org.opencontainers.image.description="The genforge Kubernetes operator (kopf)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build-operator /opt/venv /opt/venv
# bundled.py looks for the CRDs (schema checks) and examples here.
COPY crds/ /opt/genforge/crds/
COPY examples/ /opt/genforge/examples/
# Two malloc arenas, not 8 per core: the operator's threads parse thousands of API objects,
# and freed memory kept in many arenas tripled its RSS at 1,000 runs (docs/benchmarks.md).
ENV MALLOC_ARENA_MAX=2
USER 1000:1000
WORKDIR /tmp
# 8080: /metrics; 8081: kopf's liveness endpoint (/healthz).
EXPOSE 8080 8081
ENTRYPOINT ["genforge"]
CMD ["operator", "--all-namespaces"]

# ---------------------------------------------------------------------------- trainer
FROM base AS trainer
ARG VERSION=0.1.0
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="genforge trainer" \
      org.opencontainers.image.description="genforge's trainer: torch, diffusers, accelerate" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.genforge.torch-variant="${TORCH_VARIANT}"
COPY --from=build-trainer /opt/venv /opt/venv
ENV HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 1000:1000
WORKDIR /tmp
# 9090: the trainer's /progress and /metrics.
EXPOSE 9090
# The operator's Jobs set the command (genforge-trainer … or torchrun … genforge-trainer …).
ENTRYPOINT ["genforge-trainer"]
CMD ["--help"]
