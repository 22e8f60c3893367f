"""The one-shot check of the GPU path on one GPU machine (scripts/gpu_check.sh).

Each check prints a line as it ends and a row of the summary table: PASS,
FAIL, or SKIP with the reason (on a machine without a GPU only the parts
the CPU can check run). Exit status 1 when any check failed.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from reference.config import Config  # noqa: E402
from reference.data.loader import Batch  # noqa: E402
from reference.distributed import runtime  # noqa: E402
from reference.metrics import roc_auc, roc_auc_tensor  # noqa: E402
from reference.model import DLRM  # noqa: E402
from reference.optim import build_optimizer  # noqa: E402
from reference.trainer import Trainer  # noqa: E402

CUDA = torch.cuda.is_available()
NO_GPU = "no CUDA device: torch sees no GPU here"
CRITEO_TEST_SAMPLES = 89_137_319
SMALL = [5000, 3, 25, 7, 60, 3, 12, 5, 9, 50, 30, 20, 4, 11, 18, 6, 4, 8, 5, 45, 35, 40, 15, 10, 6, 5]
rows: list[tuple[str, str, str]] = []


def report(name: str, status: str, detail: str) -> None:
    rows.append((name, status, detail))
    print(f"[{status}] {name}: {detail}", flush=True)


def check(name: str):
    """Run a check; an exception is its FAIL, not the end of the script."""
    def wrap(fn):
        def run(*args):
            started = time.time()
            try:
                status, detail = fn(*args)
            except Exception as e:  # noqa: BLE001 -- every failure is a row of the table
                status, detail = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            report(name, status, f"{detail} ({time.time() - started:.0f} s)")
        return run
    return wrap


def config(**values) -> Config:
    cfg = Config()
    cfg.name = "gpu_check"
    cfg.update(dict(progress=False, submission_division="open", **values), origin="gpu_check")
    return cfg.validate()


def random_batches(sizes: list[int], batch: int, count: int, device, seed: int = 0) -> list[Batch]:
    """Uniform ids, normal dense features, labels from a planted rule (no data files)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        dense = torch.randn(batch, 13, generator=g).abs().log1p()
        ids = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in sizes], dim=1)
        labels = ((dense[:, 0] + (ids[:, 0] % 7 == 0).float() + 0.3 * torch.randn(batch, generator=g)) > 1.0).float()
        out.append(Batch(dense.to(device), ids.to(device), labels.to(device)))
    return out


# --- checks --------------------------------------------------------------------------


@check("CUDA tests")
def cuda_tests(python: str):
    tests = ["tests/test_gpu_path.py", "tests/test_metrics.py", "tests/test_checkpoint.py", "tests/test_optim.py"]
    # not slow: the slow test of this file runs this script
    done = subprocess.run([python, "-m", "pytest", "-c", "tests/pytest.ini", "--rootdir=.", "-q", "-rs",
                           "-m", "not slow", "-p", "no:cacheprovider", *tests], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    tail = [line for line in done.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    summary = tail[-1].strip("= ") if tail else done.stdout[-300:]
    if done.returncode != 0:
        failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return "FAIL", f"{summary}; {'; '.join(failed[:3])}"
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    if skipped and not CUDA:
        return "PASS", f"{summary} (the CUDA tests skip: {NO_GPU})"
    return "PASS", summary


@check("1-rank run, table split in two shards, vs CPU")
def split_shard_run():
    """DLRM on sharded embeddings, one rank holding table 0 as two row ranges (the exchange sums them),
    on the GPU through NCCL, against DLRM on the host: 20 SGD steps, losses within rtol 1e-4."""
    import torch.distributed as dist

    from reference.distributed.communicator import build_communicator
    from reference.distributed.launch import LaunchInfo
    from reference.distributed.planner import Plan, Shard, state_bytes_per_row
    from reference.distributed.sharded import ShardedEmbeddings

    device = torch.device("cuda", 0) if CUDA else torch.device("cpu")
    backend = "nccl" if CUDA else "gloo"
    dim = 8
    cfg = config(embedding_dim=dim, bottom_mlp=[13, 16, dim], top_mlp=[16, 1], table_sizes=SMALL,
                 learning_rate=0.1, seed=3)
    half = SMALL[0] // 2
    shards = [Shard(0, 0, half, 0), Shard(0, half, SMALL[0], 0)] + [Shard(t, 0, n, 0)
                                                                     for t, n in enumerate(SMALL) if t]
    plan = Plan(SMALL, 1, dim, dim * 4 + state_bytes_per_row("sgd", dim), 1 << 40, shards)
    plan.check()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, 1, is_master=True)
    info = LaunchInfo("gpu_check", 0, 1, 0, 1, "127.0.0.1", port)
    if CUDA:
        torch.cuda.set_device(device)
    comm = build_communicator(backend, info, store, 60.0, device, None)
    try:
        sharded = DLRM.from_config(cfg, SMALL, "aten", embeddings=ShardedEmbeddings(plan, comm, cfg.seed))
        sharded = sharded.to(device)
        host = DLRM.from_config(cfg, SMALL, "aten")
        if not torch.equal(sharded.embeddings.weight[:SMALL[0]].cpu(), host.embeddings.weight[:SMALL[0]]):
            return "FAIL", "the split table's initial rows differ from the host's"
        opts = [build_optimizer("sgd", m, 0.1) for m in (sharded, host)]
        losses = [[], []]
        syncs = []
        for step, (gpu_batch, cpu_batch) in enumerate(zip(random_batches(SMALL, 512, 20, device),
                                                          random_batches(SMALL, 512, 20, "cpu"), strict=True)):
            for k, (model, batch) in enumerate(((sharded, gpu_batch), (host, cpu_batch))):
                opts[k].zero_grad(set_to_none=True)
                audit = CUDA and k == 0 and step >= 3
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    if audit:
                        torch.cuda.set_sync_debug_mode("warn")
                    try:
                        loss = F.binary_cross_entropy_with_logits(model(batch.dense, batch.ids), batch.labels)
                        loss.backward()
                        opts[k].step()
                    finally:
                        if audit:
                            torch.cuda.set_sync_debug_mode("default")
                syncs += [str(w.message) for w in caught if "synchroniz" in str(w.message)]
                losses[k].append(loss.detach())
        ours, theirs = (np.array([float(v) for v in run]) for run in losses)
        worst = float(np.max(np.abs(ours - theirs) / np.abs(theirs)))
        weights = torch.allclose(sharded.embeddings.weight[:SMALL[0]].cpu(), host.embeddings.weight[:SMALL[0]],
                                 rtol=1e-4, atol=1e-6)
        detail = (f"{backend} on {device}: 20 steps, worst loss rel. diff {worst:.1e} (rtol 1e-4), "
                  f"split table's weights {'equal' if weights else 'DIFFER'} within 1e-4")
        if CUDA:
            detail += f"; host syncs in steps 4-20: {len(syncs)}" + (f" (first: {syncs[0][:120]})" if syncs else "")
        ok = worst <= 1e-4 and weights and not syncs
        return ("PASS" if ok else "FAIL"), detail
    finally:
        comm.close()


@check("sync audit (single process, sgd and rowwise_adagrad)")
def sync_audit():
    if not CUDA:
        return "SKIP", NO_GPU
    found = {}
    for optimizer in ("sgd", "rowwise_adagrad"):
        cfg = config(device="cuda", optimizer=optimizer, embedding_dim=16, bottom_mlp=[13, 32, 16],
                     top_mlp=[32, 1], table_sizes=SMALL, learning_rate=0.1)
        parallel = runtime.SingleProcess(cfg)
        model = parallel.build_model(cfg, SMALL)
        trainer = Trainer(cfg, model, None, None, None, parallel=parallel)
        caught_all = []
        for step, batch in enumerate(random_batches(SMALL, 1024, 12, parallel.device)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if step >= 3:
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    trainer.train_step(batch)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            caught_all += [str(w.message) for w in caught if step >= 3 and "synchroniz" in str(w.message)]
        found[optimizer] = caught_all
    detail = ", ".join(f"{k}: {len(v)} host syncs in steps 4-12" for k, v in found.items())
    first = next((v[0] for v in found.values() if v), None)
    return ("PASS" if first is None else "FAIL"), detail + (f" (first: {first[:160]})" if first else "")


def throughput_rows():
    """Steps/s of the MLPerf model (tables capped at 10M rows, uniform ids) from CUDA events."""
    if not CUDA:
        report("steps/s at batch 2048 and 32768 (fp32, TF32, bf16)", "SKIP", NO_GPU)
        return
    base = dict(device="cuda", max_ind_range=10_000_000, learning_rate=1.0)
    with open(os.path.join(ROOT, "configs", "mlperf_closed.yaml")) as f:
        sizes = [min(n, 10_000_000) for n in yaml.safe_load(f)["table_sizes"]]
    cfg = config(table_sizes=sizes, **base)
    started = time.time()
    parallel = runtime.SingleProcess(cfg)
    model = parallel.build_model(cfg, sizes)
    torch.cuda.synchronize()
    report("tables built on the GPU", "PASS", f"{sum(sizes):,} rows x 128 in {time.time() - started:.1f} s")
    for batch_size in (2048, 32768):
        batches = random_batches(sizes, batch_size, 8, parallel.device, seed=batch_size)
        for mode, values in (("fp32", {}), ("fp32 deterministic=false", {"deterministic": False}),
                             ("tf32", {"allow_tf32": True}), ("bf16", {"precision": "bf16"})):
            name = f"steps/s, batch {batch_size}, {mode}"
            try:
                run_cfg = config(table_sizes=sizes, batch_size=batch_size, **base, **values)
                mode_parallel = runtime.SingleProcess(run_cfg)  # applies TF32 and determinism
                trainer = Trainer(run_cfg, model, None, None, None, parallel=mode_parallel)
                for b in batches[:3]:
                    trainer.train_step(b)
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                steps, wall = 30, time.time()
                start.record()
                for i in range(steps):
                    trainer.train_step(batches[i % len(batches)])
                end.record()
                end.synchronize()
                gpu_ms = start.elapsed_time(end) / steps
                wall_ms = (time.time() - wall) * 1000 / steps
                report(name, "PASS", f"{1000 / gpu_ms:,.1f} steps/s ({gpu_ms:.2f} ms GPU, {wall_ms:.2f} ms wall "
                                     f"per step; {batch_size * 1000 / gpu_ms:,.0f} samples/s)")
            except Exception as e:  # noqa: BLE001
                report(name, "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    del model
    torch.cuda.empty_cache()


@check(f"exact AUC of {CRITEO_TEST_SAMPLES:,} scores on the GPU vs the host")
def gpu_auc():
    if not CUDA:
        return "SKIP", NO_GPU
    g = torch.Generator(device="cuda").manual_seed(0)
    labels = (torch.rand(CRITEO_TEST_SAMPLES, device="cuda", generator=g) < 0.034).float()
    noise = torch.randn(CRITEO_TEST_SAMPLES, device="cuda", generator=g)
    scores = torch.round((labels * 1.2 + noise) * 1e4) / 1e4  # ~1e5 distinct values: many ties
    torch.cuda.synchronize()
    started = time.time()
    on_gpu = roc_auc_tensor(scores, labels)
    gpu_s = time.time() - started
    started = time.time()
    on_host = roc_auc(scores.cpu().numpy(), labels.cpu().numpy())
    host_s = time.time() - started
    same = on_gpu == on_host
    return ("PASS" if same else "FAIL"), (f"GPU {on_gpu!r} in {gpu_s:.2f} s, host {on_host!r} in {host_s:.1f} s: "
                                          f"{'identical' if same else 'DIFFERENT'}")


@check("embedded default to its target on the GPU")
def embedded_default(results: str):
    if not CUDA:
        return "SKIP", f"{NO_GPU} (on the CPU: the slow end-to-end test, tests/test_end_to_end.py)"
    env = dict(os.environ, RESULTS_DIR=results)
    done = subprocess.run(["./run_and_time.sh", "device=cuda", "progress=false"], cwd=ROOT, capture_output=True,
                          text=True, timeout=240, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT:")), None)
    if line is None:
        return "FAIL", f"exit {done.returncode}; {done.stderr.strip().splitlines()[-1:] or ['no output']}"
    fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
    ok = done.returncode == 0 and fields.get("status") == "success"
    return ("PASS" if ok else "FAIL"), (f"status={fields.get('status')} steps={fields.get('steps')} "
                                        f"auc={fields.get('auc')} time_to_train_s={fields.get('time_to_train_s')}")


# Set for everything this script starts: a test that runs this script must never run it again.
NESTED = "DLRM_IN_GPU_CHECK"


def main() -> int:
    if os.environ.get(NESTED):
        print(f"gpu_check: refusing to run inside another gpu_check ({NESTED} is set)", file=sys.stderr)
        return 2
    os.environ[NESTED] = "1"
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--python", default=sys.executable, help="interpreter for the tests")
    p.add_argument("--results", default=os.path.join(ROOT, "results", "gpu_check"),
                   help="where the embedded default's MLPerf log goes")
    args = p.parse_args()
    name = torch.cuda.get_device_name(0) if CUDA else "none"
    print(f"gpu_check: torch {torch.__version__}, GPU: {name}", flush=True)
    cuda_tests(args.python)
    split_shard_run()
    sync_audit()
    throughput_rows()
    gpu_auc()
    embedded_default(args.results)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':<{width}}  status  result")
    print(f"{'-' * width}  ------  {'-' * 40}")
    for check_name, status, detail in rows:
        print(f"{check_name:<{width}}  {status:<6}  {detail}")
    return 1 if any(status == "FAIL" for _, status, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
