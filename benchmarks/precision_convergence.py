"""Convergence and time to train of the embedded default in fp32 and bf16.

Runs ``python -m reference.train --config configs/synthetic.yaml`` (the real
command line, on the data ``./run_and_time.sh`` generates) for each seed in
fp32 and in bf16, alternating the two so that a machine that gets busier
slows both alike, then the same for each extra optimiser on the first seed.
Reports steps to the target and time to train (run_stop - run_start) per run,
the bf16/fp32 ratios of their means, and plots every AUC curve in one figure.
Each run's log and summary are kept in ``--runs-dir``; a rerun reuses the runs
already there (delete the folder to measure afresh).

    python -m benchmarks.precision_convergence [--seeds 0 1 2 3 4] [--optimizers rowwise_adagrad]
        [--rowwise-lr 0.02] [--data-dir .cache/synthetic] [--runs-dir .cache/precision_convergence]
        [--out benchmarks/precision_convergence] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks.train_throughput import cpu_description
from reference.jsonfile import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def optimizer_settings(optimizer: str, rowwise_lr: float) -> list[str]:
    if optimizer == "sgd":
        return []
    if optimizer == "rowwise_adagrad":  # open division only
        return ["optimizer=rowwise_adagrad", f"learning_rate={rowwise_lr}", "submission_division=open"]
    raise ValueError(f"unknown optimizer {optimizer!r}: expected sgd or rowwise_adagrad")


def train(data_dir: str, results: str, precision: str, seed: int, optimizer: str, rowwise_lr: float,
          overrides: tuple[str, ...] = ()) -> dict:
    settings = [*optimizer_settings(optimizer, rowwise_lr), *overrides]
    name = f"{optimizer}-{precision}-seed{seed}" + (f"-lr{rowwise_lr}" if optimizer != "sgd" else "")
    summary_path = os.path.join(results, name + ".json")
    if not os.path.isfile(summary_path):
        command = [sys.executable, "-m", "reference.train", "--config", "configs/synthetic.yaml",
                   "--data-dir", data_dir, "--results-dir", results, f"precision={precision}", f"seed={seed}",
                   f"run_name={name}", "progress=false", *settings]
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    with open(summary_path) as f:
        summary = json.load(f)
    print(f"{name}: converged={summary['converged']} steps={summary['steps']} "
          f"time_to_train_s={summary['run_seconds']:.1f}", flush=True)
    return {"name": name, "optimizer": optimizer, "precision": precision, "seed": seed,
            "converged": summary["converged"], "steps": summary["steps"], "run_seconds": summary["run_seconds"],
            "linear_kernel": summary["linear_kernel"],
            # Summaries written before sparse_update_kernel existed come from runs on torch's sparse ops.
            "sparse_update_kernel": summary.get("sparse_update_kernel", "torch"),
            # And those written before interaction_kernel existed, from runs on torch's interaction.
            "interaction_kernel": summary.get("interaction_kernel", "torch"),
            "log": os.path.join(results, name + ".log"),
            "curve": [(e["epoch_num"], e["auc"]) for e in summary["evaluations"]]}


def compare(runs: list[dict], optimizer: str) -> dict:
    out = {}
    for precision in ("fp32", "bf16"):
        mine = [r for r in runs if r["optimizer"] == optimizer and r["precision"] == precision]
        out[precision] = {"runs": len(mine), "converged": sum(r["converged"] for r in mine),
                          "mean_steps": statistics.mean(r["steps"] for r in mine),
                          "mean_seconds": statistics.mean(r["run_seconds"] for r in mine)}
    out["steps_ratio"] = out["bf16"]["mean_steps"] / out["fp32"]["mean_steps"]
    out["time_ratio"] = out["bf16"]["mean_seconds"] / out["fp32"]["mean_seconds"]
    return out


def plot(runs: list[dict], target: float, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optimizers = list(dict.fromkeys(r["optimizer"] for r in runs))
    fig, axes = plt.subplots(1, len(optimizers), figsize=(6.5 * len(optimizers), 4.5), squeeze=False)
    for ax, optimizer in zip(axes[0], optimizers, strict=True):
        for r in (r for r in runs if r["optimizer"] == optimizer):
            epochs, aucs = zip(*r["curve"], strict=True)
            ax.plot(epochs, aucs, color="tab:blue" if r["precision"] == "fp32" else "tab:orange",
                    alpha=0.8, label=r["precision"] if r["seed"] == runs[0]["seed"] else None)
        ax.axhline(target, color="gray", linestyle="--", label=f"target {target}")
        ax.set(title=f"embedded default, {optimizer}", xlabel="epoch (1-based, as logged)", ylabel="eval AUC",
               ylim=(0.6, 0.85))
        ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--optimizers", nargs="*", default=["rowwise_adagrad"],
                   help="optimisers besides sgd, run on the first seed")
    p.add_argument("--rowwise-lr", type=float, default=0.02,
                   help="learning rate of row-wise Adagrad (0.1 plateaus below the target, 0.5 diverges)")
    cache = os.environ.get("DLRM_CACHE_DIR", ".cache")
    p.add_argument("--data-dir", default=os.path.join(cache, "synthetic"))
    p.add_argument("--runs-dir", default=os.path.join(cache, "precision_convergence"),
                   help="where the runs' logs and summaries are kept (and reused)")
    p.add_argument("--out", default="benchmarks/precision_convergence", help="writes OUT.json and OUT.png")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run, e.g. interaction_kernel=native (runs are reused by name: "
                        "give them a --runs-dir of their own)")
    args = p.parse_args(argv)
    data_dir = os.path.abspath(args.data_dir)
    if not os.path.isfile(os.path.join(data_dir, "terabyte_processed_train.bin")):
        print(f"error: {data_dir} has no embedded-default data; run ./run_and_time.sh once (it makes it)",
              file=sys.stderr)
        return 2
    runs = []
    results = os.path.abspath(args.runs_dir)
    os.makedirs(results, exist_ok=True)
    plan = [("sgd", s) for s in args.seeds] + [(o, args.seeds[0]) for o in args.optimizers]
    for optimizer, seed in plan:
        for precision in ("fp32", "bf16"):
            runs.append(train(data_dir, results, precision, seed, optimizer, args.rowwise_lr, tuple(args.set)))
    checked = {}
    for precision in ("fp32", "bf16"):
        log = next(r["log"] for r in runs if r["precision"] == precision and r["optimizer"] == "sgd")
        with tempfile.TemporaryDirectory() as tmp:  # the checker writes its own log where it runs
            proc = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
                                   "--ruleset", "2.1.0", "--werror", log], cwd=tmp, capture_output=True, text=True)
        checked[precision] = "SUCCESS" if proc.returncode == 0 else f"FAILED: {proc.stdout[-500:]}"
    for r in runs:
        r["log"] = os.path.relpath(r["log"], results)
    summary = {"machine": cpu_description(), "overrides": args.set,
               "comparisons": {o: compare(runs, o) for o in ["sgd", *args.optimizers]},
               "official_compliance_checker_2.1.0": checked, "runs": runs}
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out + ".json", summary)
    plot(runs, 0.8025, args.out + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
