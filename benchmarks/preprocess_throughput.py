"""End-to-end preprocessing throughput: synthetic Criteo-format day files (raw
text, as reference.data.synthetic writes them) -> the three .bin files.

For each size it reports rows/s from raw text to the outputs (wall time of
`python -m reference.preprocess`), the peak RSS of that process, and the peak
disk allocated in the output folder relative to the final outputs (so temporary
disk included).

    python -m benchmarks.preprocess_throughput [--rows 1000000 4000000] [--days 24]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from reference.data.synthetic import SyntheticSpec, write_raw_days

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs the command and prints the peak RSS of it alone (a fresh parent per measurement).
PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def folder_bytes(path: str, allocated: bool = False) -> int:
    """Bytes of the files under ``path``: apparent sizes, or the disk blocks
    actually allocated (the training file is preallocated sparse)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            total += st.st_blocks * 512 if allocated else st.st_size
    return total


def measure(rows: int, days: int, cache: str) -> dict:
    raw = os.path.join(cache, f"raw_{rows}_{days}")
    if not os.path.isfile(os.path.join(raw, f"day_{days - 1}")):
        started = time.time()
        write_raw_days(raw, SyntheticSpec(seed=11), days, rows // days)
        print(f"wrote {rows:,} raw rows in {time.time() - started:.0f} s to {raw}", file=sys.stderr)
    out = os.path.join(cache, f"out_{rows}_{days}")
    subprocess.run(["rm", "-rf", out], check=True)
    peak_disk = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak_disk[0] = max(peak_disk[0], folder_bytes(out, allocated=True))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.time()
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "reference.preprocess",
                           "--dataset", "terabyte", "--raw", raw, "--out", out, "--days", str(days), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - started
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    peak_rss_kb = int(proc.stdout.strip().splitlines()[-1])
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    outputs = sum(f["bytes"] for f in manifest["files"].values())
    total_rows = sum(manifest["splits"].values())
    raw_bytes = folder_bytes(raw)
    return {"rows": total_rows, "days": days, "raw_mb": round(raw_bytes / 1e6), "seconds": round(seconds, 1),
            "rows_per_s": round(total_rows / seconds), "raw_mb_per_s": round(raw_bytes / 1e6 / seconds, 1),
            "peak_rss_mb": round(peak_rss_kb / 1024), "output_mb": round(outputs / 1e6),
            "peak_disk_over_output": round(peak_disk[0] / outputs, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--days", type=int, default=24)
    p.add_argument("--cache", default=os.path.join(ROOT, ".cache", "bench_preprocess"))
    args = p.parse_args(argv)
    results = [measure(rows, args.days, args.cache) for rows in args.rows]
    print(f"{'rows':>10} {'raw MB':>7} {'seconds':>8} {'rows/s':>9} {'MB/s':>6} {'peak RSS MB':>12} "
          f"{'peak disk / output':>19}")
    for r in results:
        print(f"{r['rows']:>10,} {r['raw_mb']:>7} {r['seconds']:>8} {r['rows_per_s']:>9,} {r['raw_mb_per_s']:>6} "
              f"{r['peak_rss_mb']:>12} {r['peak_disk_over_output']:>19}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
