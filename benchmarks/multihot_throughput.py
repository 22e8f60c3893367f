"""Multi-hot preprocessing throughput: one-hot binary files -> multi-hot files
(``python -m reference.preprocess multihot``), rows/s and peak RSS.

The input is one-hot data with uniform ids in the dcnv2 reference's table
sizes, each capped at ``--cap`` so the lookup fits this machine (at the real
40M cap it is 23 GB; the stage's memory does not grow with it, only the file
cache the conversion reads it through). For each row count it runs the command
in a fresh process and reports the seconds of the lookup and conversion stages
(from the manifest), rows/s of the conversion, ids/s of the lookup draws, the
peak RSS (VmHWM: it counts the lookup pages the process has mapped and
touched, file cache the kernel can drop), the peak of the process's own memory
(RssAnon, sampled every 20 ms) and the output size.

    python -m benchmarks.multihot_throughput [--rows 250000 1000000] [--cap 1000000] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from reference.data.binary import write_binary, write_counts
from reference.data.multihot import DCNV2_MULTIHOT_SIZES
from reference.preprocess.lookup import lookup_bytes
from reference.preprocess.options import DCNV2_TABLE_SIZES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sampled(command: list[str]) -> tuple[int, int, float]:
    """Run ``command``; its peak VmHWM and peak RssAnon (bytes) and CPU seconds."""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    hwm = anon = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f)
            hwm = max(hwm, int(fields["VmHWM"].split()[0]) * 1024)
            anon = max(anon, int(fields["RssAnon"].split()[0]) * 1024)
        except (OSError, KeyError):
            pass
        time.sleep(0.02)
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode})")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return hwm, anon, usage.ru_utime + usage.ru_stime


def one_hot_input(folder: str, rows: int, table_sizes: list[int], seed: int = 0) -> None:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)

    def chunks(left: int):
        while left:
            n = min(left, 1 << 18)
            data = np.empty((n, 40), dtype=np.int32)
            data[:, 0] = rng.integers(0, 2, n)
            data[:, 1:14] = rng.integers(0, 10_000, (n, 13))
            data[:, 14:] = rng.integers(0, table_sizes, (n, 26))
            left -= n
            yield data
    write_binary(os.path.join(folder, "bench_train.bin"), chunks(rows))
    write_counts(os.path.join(folder, "bench_fea_count.npz"), table_sizes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000])
    p.add_argument("--cap", type=int, default=1_000_000, help="cap on the reference's table sizes")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    table_sizes = [min(n, args.cap) for n in DCNV2_TABLE_SIZES]
    print(f"tables: the dcnv2 reference's capped at {args.cap:,} ({sum(table_sizes):,} rows); bags "
          f"{sum(DCNV2_MULTIHOT_SIZES)} ids; lookup {lookup_bytes(table_sizes, DCNV2_MULTIHOT_SIZES) / 1e9:.2f} GB "
          f"(at the real sizes {lookup_bytes(DCNV2_TABLE_SIZES, DCNV2_MULTIHOT_SIZES) / 1e9:.1f} GB); "
          f"workers {args.workers}")
    print("| rows | lookup s | lookup Mids/s | convert s | rows/s | CPU s | peak RSS | peak own (anon) | output MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    cpu_before = 0.0
    for rows in args.rows:
        work = tempfile.mkdtemp(prefix="multihot-bench-", dir=os.environ.get("TMPDIR"))
        try:
            one_hot_input(os.path.join(work, "in"), rows, table_sizes)
            out = os.path.join(work, "out")
            command = [sys.executable, "-m", "reference.preprocess", "multihot", "--in", os.path.join(work, "in"),
                       "--out", out, "--workers", str(args.workers), "--no-progress"]
            hwm, anon, cpu_total = run_sampled(command)
            cpu, cpu_before = cpu_total - cpu_before, cpu_total
            with open(os.path.join(out, "multihot_manifest.json")) as f:
                manifest = json.load(f)
            stages = manifest["stage_seconds"]
            ids = manifest["lookup_bytes"] / 4
            size = os.path.getsize(os.path.join(out, "multihot_train.bin"))
            print(f"| {rows:,} | {stages['lookups']} | {ids / max(stages['lookups'], 1e-9) / 1e6:,.0f} | "
                  f"{stages['convert']} | {rows / max(stages['convert'], 1e-9):,.0f} | {cpu:.1f} | "
                  f"{hwm / 2**20:,.0f} MB | {anon / 2**20:,.0f} MB | {size / 1e6:,.0f} |", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
