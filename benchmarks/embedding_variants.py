"""Table memory and AUC of the embedding variants on the embedded default.

Trains ``configs/synthetic.yaml`` (the real command line, on the data
``./run_and_time.sh`` generates) for the same number of steps with ordinary
fp32 tables, quotient-remainder tables (each ``--qr-collisions``) and
mixed-dimension tables (each ``--md-temperatures``), then evaluates the fp32
model with 8-bit and 4-bit row-wise quantized tables (``--inference-only``).
A fixed step budget rather than the AUC target, so that every variant is
compared at the same amount of training. Reports the tables' bytes (as held
in memory: parameters, or the packed quantized rows) and the final AUC.

    python -m benchmarks.embedding_variants [--steps 300] [--qr-collisions 2 4 8] [--qr-threshold 200]
        [--md-temperatures 0.3]
        [--data-dir .cache/synthetic] [--runs-dir .cache/embedding_variants] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from reference.cpuinfo import cpu_info
from reference.export import model_from_checkpoint
from reference.jsonfile import write_json
from reference.quantize import embedding_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "reference.train", "--config", "configs/synthetic.yaml", *args,
                           "progress=false"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1: trained to the end without a target, which is what is asked
        raise RuntimeError(f"reference.train {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def train(name: str, settings: list[str], args) -> dict:
    folder = os.path.join(args.runs_dir, name)
    ckpt, summary = os.path.join(folder, "model.pt"), os.path.join(folder, f"{name}.json")
    if not os.path.exists(summary):  # a rerun reuses the runs already made
        cli(["--data-dir", args.data_dir, "--results-dir", folder, f"run_name={name}", f"max_steps={args.steps}",
             f"eval_every={args.steps}", "eval_every_epochs=0", "auc_threshold=null", f"checkpoint_path={ckpt}",
             *settings])
    with open(summary) as f:
        result = json.load(f)
    return {"variant": name, "settings": " ".join(settings) or "(defaults)", "steps": result["steps"],
            "auc": result["evaluations"][-1]["auc"], "table_bytes": embedding_bytes(model_from_checkpoint(ckpt))}


def quantized(bits: int, fp32_ckpt: str, args) -> dict:
    settings = [f"quantize_embeddings={bits}"]
    proc = cli(["--data-dir", args.data_dir, "--results-dir", os.path.join(args.runs_dir, "quantized"),
                "--load-checkpoint", fp32_ckpt, "--inference-only", *settings])
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"variant": f"fp32 model, {bits}-bit tables", "settings": " ".join(settings), "steps": args.steps,
            "auc": metrics["auc"], "table_bytes": metrics["embedding_bytes"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--qr-collisions", type=int, nargs="*", default=[2, 4, 8])
    p.add_argument("--qr-threshold", type=int, default=200, help="the original's --qr-threshold default")
    p.add_argument("--md-temperatures", type=float, nargs="*", default=[0.3])
    p.add_argument("--data-dir", default=os.path.join(ROOT, ".cache", "synthetic"))
    p.add_argument("--runs-dir", default=os.path.join(ROOT, ".cache", "embedding_variants"))
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    if not os.path.isdir(args.data_dir):
        print(f"error: --data-dir {args.data_dir}: no data; ./run_and_time.sh generates the embedded default's "
              f"there on first use", file=sys.stderr)
        return 2
    open_division = ["submission_division=open"]
    rows = [train("fp32", [], args)]
    rows += [train(f"qr{c}", [f"qr_threshold={args.qr_threshold}", f"qr_collisions={c}", *open_division], args)
             for c in args.qr_collisions]
    rows += [train(f"md{t}", [f"md_temperature={t}", *open_division], args) for t in args.md_temperatures]
    fp32_ckpt = os.path.join(args.runs_dir, "fp32", "model.pt")
    rows += [quantized(bits, fp32_ckpt, args) for bits in (8, 4)]
    info = cpu_info()
    print(f"# {json.dumps({'cpu': info.model, 'steps': args.steps, 'config': 'configs/synthetic.yaml'})}")
    print(f"{'variant':<28} {'table MB':>9} {'vs fp32':>8} {'AUC':>8} {'AUC - fp32':>11}  settings")
    base = rows[0]
    for r in rows:
        print(f"{r['variant']:<28} {r['table_bytes'] / 1e6:>9.2f} {r['table_bytes'] / base['table_bytes']:>7.3f}x "
              f"{r['auc']:>8.5f} {r['auc'] - base['auc']:>+11.5f}  {r['settings']}")
    if args.json:
        write_json(args.json, {"cpu": info.model, "steps": args.steps, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
