#!/usr/bin/env bash
# The GPU path on one GPU machine (sized for one H200, at most 8 minutes), in one go:
# the CUDA tests; a 1-rank NCCL run with a table split into two shards against the
# CPU run (rtol 1e-4); the audit of host syncs in training steps; steps/s at batch
# 2048 and 32768 in fp32, TF32 and bf16 (GPU time from CUDA events); the exact AUC
# of 89,137,319 scores on the GPU against the host's; the embedded default to its
# target on the GPU. Ends with one summary table. Without a GPU it runs what the CPU
# can check (the tests, the split-shard run over gloo) and skips the rest, saying why.
#
#   scripts/gpu_check.sh                  # DLRM_PYTHON=... to use a given interpreter
# Exit status: 0 when nothing failed, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure_venv.sh
export DLRM_PYTHON="$PYTHON"   # the embedded default's run_and_time.sh uses the same interpreter
exec "$PYTHON" scripts/gpu_check.py --python "$PYTHON" "$@"
