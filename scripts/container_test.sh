#!/usr/bin/env bash
# Build the image from the repo's Dockerfile with podman and check that it reproduces a run:
#   1. the embedded default (./run_and_time.sh, the image's default command) as the non-root
#      user, its MLPerf log written to a mounted results folder and checked with the official
#      compliance checker;
#   2. the environment variables of run_and_time.sh reach the run inside (SEED);
#   3. 2-rank training under mpirun inside the container (mpi backend through mpi4py).
# The run must have compiled the native row kernels (the image has gcc).
# Prints the image size, build time, run time and the log check; exit 0 when all pass.
# Where podman is missing it prints "SKIP: <reason>" and exits 0.
#
# Base image: there may be no registry to pull from, so unless the image
# docker.io/library/debian:bookworm-slim already exists locally it is made with debootstrap.
# Wheels: if PIP_FIND_LINKS names a folder (e.g. one with the torch CPU wheel), it is
# mounted into the build and passed to pip; likewise a CA bundle named by PIP_CERT.
#   IMAGE=localhost/dlrm-mlperf:test scripts/container_test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-localhost/dlrm-mlperf:test}"
BASE="docker.io/library/debian:bookworm-slim"

if ! command -v podman >/dev/null 2>&1; then
  echo "SKIP: podman not found (apt-get install podman runc debootstrap)"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The default runtime (crun) fails on this kernel's hybrid cgroups, and higher ulimits are refused.
cat > "$work/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
export CONTAINERS_CONF="$work/containers.conf"

if ! podman image exists "$BASE"; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "SKIP: no local $BASE image and no debootstrap to make one (apt-get install debootstrap)"
    exit 0
  fi
  echo "== making $BASE with debootstrap"
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian > "$work/debootstrap.log"
  tar -C "$work/rootfs" -c . | podman import - "$BASE" > /dev/null
fi

build=(podman build --pull=never --network host --isolation chroot -t "$IMAGE")
if [ -n "${PIP_CERT:-}" ] && [ -f "${PIP_CERT}" ]; then
  # A proxy that intercepts TLS: pip inside the build needs the same CA bundle as pip here.
  build+=(-v "$PIP_CERT:/run/pip-ca.crt:ro" --build-arg PIP_CERT=/run/pip-ca.crt)
fi
if [ -n "${PIP_FIND_LINKS:-}" ] && [ -d "${PIP_FIND_LINKS}" ]; then
  build+=(-v "$PIP_FIND_LINKS:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
fi
echo "== building $IMAGE"
t0=$(date +%s)
"${build[@]}" . > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; echo "FAIL: build"; exit 1; }
build_s=$(( $(date +%s) - t0 ))
podman image prune -f > /dev/null  # earlier builds of this tag, now dangling
size_mb=$(( $(podman image inspect "$IMAGE" --format '{{.Size}}') / 1000000 ))

fail() { echo "FAIL: $*"; exit 1; }

uid=$(podman run --rm "$IMAGE" id -u)
[ "$uid" != "0" ] || fail "the container runs as root"

echo "== running the embedded default (./run_and_time.sh) as uid $uid"
results="$work/results"
mkdir -p "$results" && chmod 777 "$results"
t0=$(date +%s)
podman run --rm -v "$results:/workspace/results" "$IMAGE" > "$work/run.out" 2> "$work/run.err" \
  || { tail -20 "$work/run.err"; fail "run_and_time.sh exited non-zero"; }
run_s=$(( $(date +%s) - t0 ))
grep -E "^RESULT: " "$work/run.out" || fail "no RESULT line"
grep -q "^RESULT: status=success converged=True" "$work/run.out" || fail "the run did not converge"
grep "^sparse updates: " "$work/run.err" || fail "no sparse updates line"
grep -q "^sparse updates: native" "$work/run.err" || fail "the image did not build the native row kernels"
log=$(ls "$results"/*.log 2>/dev/null | head -1)
[ -n "$log" ] || fail "no MLPerf log in the mounted results folder"
podman run --rm -v "$results:/workspace/results" -w /workspace/results "$IMAGE" \
  python -m mlperf_logging.compliance_checker --usage training --ruleset 2.1.0 --werror \
  "/workspace/results/$(basename "$log")" > "$work/check.out" 2>&1 || { cat "$work/check.out"; fail "compliance check"; }
check=$(grep -o "SUCCESS" "$work/check.out" | head -1)

echo "== environment variables reach the run (SEED=5, one step)"
status=0
podman run --rm -e SEED=5 -v "$results:/workspace/results" "$IMAGE" ./run_and_time.sh max_steps=1 \
  > "$work/seed.out" 2>&1 || status=$?
[ "$status" = "1" ] || { tail -5 "$work/seed.out"; fail "expected exit 1 (not converged after one step), got $status"; }
grep -q '"key": "seed", "value": 5' "$results"/synthetic-seed5-*.log || fail "seed 5 not in the log"

echo "== 2 ranks inside the container: mpirun, mpi backend (mpi4py)"
podman run --rm "$IMAGE" bash -c "
python -m reference.synthetic --out /tmp/d --train-samples 65536 --eval-samples 16384 > /dev/null &&
mpirun -np 2 --oversubscribe python -m reference.train --config configs/synthetic.yaml --data-dir /tmp/d \
  --results-dir /tmp/r --dist-backend mpi max_steps=8 progress=false train_file=synthetic_train.bin \
  eval_file=synthetic_test.bin counts_file=synthetic_fea_count.npz" > "$work/mpi.out" 2>&1 || status=$?
grep -q "ranks=2" "$work/mpi.out" || { cat "$work/mpi.out"; fail "2-rank training under mpirun"; }
grep "RESULT" "$work/mpi.out"

echo "image: $IMAGE, ${size_mb} MB; build ${build_s} s; embedded default run ${run_s} s (wall, data generation included); compliance check: ${check}"
echo "container test: PASS"
