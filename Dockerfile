# DLRM MLPerf reference: `docker build -t dlrm-mlperf .` then
# `docker run --rm -v "$PWD/results:/workspace/results" dlrm-mlperf` runs the embedded default.
# Where torch==2.13.0 should come from a local wheel folder (the CPU build), pass
# --build-arg TORCH_FIND_LINKS=/wheels and mount that folder at /wheels during the build.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_FIND_LINKS=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DLRM_PYTHON=/usr/local/bin/python

WORKDIR /workspace
COPY requirements.txt .
RUN if [ -n "$TORCH_FIND_LINKS" ]; then export PIP_FIND_LINKS="$TORCH_FIND_LINKS"; fi \
    && python -m pip install -r requirements.txt

COPY reference/ reference/
COPY configs/ configs/
COPY scripts/ scripts/
COPY run_and_time.sh README.md ./
RUN useradd --create-home --uid 1000 dlrm && mkdir -p results .cache data \
    && chown -R dlrm:dlrm /workspace
USER dlrm
VOLUME ["/workspace/data", "/workspace/results"]
CMD ["./run_and_time.sh"]
