#!/usr/bin/env bash
# Run DLRM end to end and report the time to train as MLPerf measures it
# (run_stop minus run_start in the MLPerf log).
#
#   ./run_and_time.sh                      # embedded default: synthetic Criteo-format raw day
#                                          # files, preprocessed to binary on first use, then
#                                          # configs/synthetic.yaml
#   ./run_and_time.sh --config configs/synthetic_dcnv2.yaml   # the dlrm_dcnv2 embedded default:
#                                          # synthetic multi-hot files, generated on first use
#   ./run_and_time.sh --config configs/mlperf_closed.yaml --data-dir /data/criteo [key=value ...]
#   ./run_and_time.sh data_mode=random bag_size=10   # random batches drawn in memory, no data files
#                                          # (default config then configs/random.yaml)
#
# Options (each also read from the environment variable in brackets):
#   --config FILE      [CONFIG]       training config (default configs/synthetic.yaml, or
#                                     configs/random.yaml with data_mode=random)
#   --data-dir DIR     [DATA_DIR]     folder with the binary files and the counts file
#                                     (default for synthetic.yaml / synthetic_dcnv2.yaml:
#                                     .cache/synthetic / .cache/synthetic_dcnv2, generated if missing)
#   --results-dir DIR  [RESULTS_DIR]  where the MLPerf log and the run summary go (default results/)
#   --seed N           [SEED]         run seed (default: the config's)
#   --nproc N          [NPROC]        ranks on this machine, started with torchrun after the data
#                                     is ready (default 1; for several machines see README)
#   key=value                         any configuration key (python -m reference.train --help)
# DLRM_CLEAR_CACHES=1 drops the page cache first (as MLPerf runs must; needs root) and
# the log's cache_clear records whether that happened.
# Exit status: 0 when the run reached its target, 1 when it did not, 2 on bad input.
set -euo pipefail
cd "$(dirname "$0")"

CONFIG="${CONFIG:-}"
DATA_DIR="${DATA_DIR:-}"
RESULTS_DIR="${RESULTS_DIR:-results}"
SEED="${SEED:-}"
NPROC="${NPROC:-1}"
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG="$2"; shift 2 ;;
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --results-dir) RESULTS_DIR="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --nproc) NPROC="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "run_and_time.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

case "$NPROC" in
  ''|*[!0-9]*|0) echo "run_and_time.sh: NPROC (--nproc) must be a whole number >= 1, got '$NPROC'" >&2; exit 2 ;;
esac

# The data mode: the last data_mode= override, else the config file's data_mode line.
MODE=""
for o in ${overrides[@]+"${overrides[@]}"}; do
  case "$o" in data_mode=*) MODE="${o#data_mode=}" ;; esac
done
if [ -z "$CONFIG" ]; then
  if [ "$MODE" = "random" ]; then CONFIG=configs/random.yaml; else CONFIG=configs/synthetic.yaml; fi
fi
if [ -z "$MODE" ] && [ -f "$CONFIG" ]; then
  MODE="$(sed -n 's/^data_mode:[[:space:]]*\([a-z]*\).*/\1/p' "$CONFIG")"
fi

source scripts/ensure_venv.sh

args=(--config "$CONFIG" --results-dir "$RESULTS_DIR")
if [ "$MODE" != "random" ]; then  # random batches are drawn in memory: no files to make or find
  if [ -z "$DATA_DIR" ]; then
    case "$(basename "$CONFIG")" in
      synthetic.yaml)
        DATA_DIR="${DLRM_CACHE_DIR:-.cache}/synthetic"
        "$PYTHON" -m reference.synthetic --out "$DATA_DIR" --raw ;;
      synthetic_dcnv2.yaml)  # multi-hot bags, written directly
        DATA_DIR="${DLRM_CACHE_DIR:-.cache}/synthetic_dcnv2"
        "$PYTHON" -m reference.synthetic --out "$DATA_DIR" --multihot ;;
    esac
  fi
  if [ -z "$DATA_DIR" ]; then
    echo "run_and_time.sh: --data-dir (or DATA_DIR) is required with --config $CONFIG" >&2
    exit 2
  fi
fi
[ -n "$DATA_DIR" ] && args+=(--data-dir "$DATA_DIR")
if [ "${DLRM_CLEAR_CACHES:-0}" = "1" ]; then
  if sync && { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
    overrides+=("cache_cleared=true")
  else
    echo "run_and_time.sh: could not drop the page cache (needs root and a writable /proc/sys); cache_clear is logged as false" >&2
  fi
fi
[ -n "$SEED" ] && args+=(--seed "$SEED")
launch=("$PYTHON")
if [ "$NPROC" -gt 1 ]; then
  # torchrun from this venv; a free port, so two jobs on one machine do not collide
  port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
  launch=("$PYTHON" -m torch.distributed.run --nproc-per-node "$NPROC" --master-port "$port")
fi
echo "running: ${launch[*]} -m reference.train ${args[*]} ${overrides[*]:-}" >&2
status=0
"${launch[@]}" -m reference.train "${args[@]}" "${overrides[@]}" || status=$?
exit "$status"
