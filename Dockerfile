# DLRM MLPerf reference image: the same ./run_and_time.sh as outside, on CPU or NVIDIA GPUs.
#
#   CPU:  docker build -t dlrm-mlperf .
#   GPU:  docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04 -t dlrm-mlperf:cuda .
#
# torch==2.13.0 comes from the package index. To take it from a folder of wheels instead
# (e.g. the CPU build), make the folder visible during the build and name it:
#   podman build -v /opt/wheels:/wheels:ro --build-arg PIP_FIND_LINKS=/wheels -t dlrm-mlperf .
# or point pip at another index with --build-arg PIP_EXTRA_INDEX_URL=URL. Behind a proxy that
# intercepts TLS, mount its CA bundle and name it: -v /path/ca.crt:/run/pip-ca.crt:ro
# --build-arg PIP_CERT=/run/pip-ca.crt (podman; with docker, COPY it or use a secret mount).
# README.md ("Docker") has the run lines.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG PIP_FIND_LINKS=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_CERT=""
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DLRM_PYTHON=/opt/venv/bin/python

# Python 3.11 from the base's own packages: Debian bookworm's python3, Ubuntu 22.04's python3.11.
# gcc and libc6-dev: a run compiles the optimisers' row kernels for the CPU it starts on
# (reference/row_kernels.py; without a compiler it falls back to torch's slower sparse ops).
# Versions are not pinned because the two bases ship different ones; the Python packages are.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

WORKDIR /workspace
# The runtime requirements only: the test and lint tools (requirements-dev.txt) stay out of the image.
COPY requirements.txt ./
# An empty PIP_CERT would be read by pip as a certificate path: drop it when unset.
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
    && pip install --no-cache-dir -r requirements.txt

COPY reference/ reference/
COPY configs/ configs/
COPY scripts/ scripts/
COPY verification/ verification/
COPY logging/ logging/
COPY run_and_time.sh README.md ./

# A non-root user runs the job. The cache (synthetic data) and the mount points
# are writable by any uid, so `docker run --user "$(id -u):$(id -g)"` works too.
RUN useradd --create-home --uid 1000 dlrm \
    && mkdir -p /workspace/results /workspace/data /workspace/.cache \
    && chmod 1777 /workspace/results /workspace/data /workspace/.cache
USER 1000:1000
VOLUME ["/workspace/data", "/workspace/results"]
CMD ["./run_and_time.sh"]
