"""End-to-end preprocessing throughput: synthetic Criteo-format day files (raw
text, as reference.synthetic writes them) -> the three .bin files.

For each size it reports rows/s from raw text to the outputs (wall time of
`python -m reference.preprocess`), its CPU time, peak RSS, the seconds of each
stage and of the in-order id assignment (from the manifest), and the peak disk
allocated in the output folder relative to the final outputs (so temporary disk
included). Then per-core rates measured in this process (parsing, id lookups in
dictionaries of the real data's size, gunzip) and, from them, the projected time
for the full Criteo 1TB (4.37 billion lines) on 32 cores.

    python -m benchmarks.preprocess_throughput [--rows 1000000 4000000] [--days 24] [--no-projection]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from reference.synthetic import SyntheticSpec, write_raw_days

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs the command and prints its peak RSS and CPU seconds (a fresh parent per measurement).
PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(u.ru_maxrss, u.ru_utime + u.ru_stime); sys.exit(rc)")
CRITEO_LINES = 4_370_000_000
CRITEO_TEXT_BYTES = 1.3e12
RECORD_BYTES = 160
DISK_BYTES_PER_S = 2e9  # storage assumed for the projection: a common NVMe drive, sequential


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


def write_uniform_days(folder: str, days: int, rows_per_day: int, seed: int = 0) -> None:
    """The dictionaries' worst case: every categorical a uniform 32-bit value
    (8 hex digits), so nearly every value is new until a column holds millions
    and its dictionary turns dense; dense fields 5 digits. Fixed-width lines,
    built as one byte array per day."""
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    digits, hexdigits = np.frombuffer(b"0123456789", np.uint8), np.frombuffer(b"0123456789abcdef", np.uint8)
    width = 2 + 13 * 6 + 26 * 9
    for d in range(days):
        line = np.empty((rows_per_day, width), dtype=np.uint8)
        line[:, 0] = 48 + rng.integers(0, 2, rows_per_day)
        line[:, 1] = 9
        dense = rng.integers(0, 100_000, (rows_per_day, 13))
        for f in range(13):
            at = 2 + 6 * f
            for k in range(5):
                line[:, at + k] = digits[dense[:, f] // 10 ** (4 - k) % 10]
            line[:, at + 5] = 9
        cats = rng.integers(0, 2 ** 32, (rows_per_day, 26), dtype=np.uint64)
        for f in range(26):
            at = 2 + 13 * 6 + 9 * f
            for k in range(8):
                line[:, at + k] = hexdigits[(cats[:, f] >> np.uint64(4 * (7 - k))) & np.uint64(15)]
            line[:, at + 8] = 10 if f == 25 else 9
        line.tofile(os.path.join(folder, f"day_{d}"))


def measure(rows: int, days: int, cache: str, uniform: bool = False) -> dict:
    kind = "uniform" if uniform else "raw"
    raw = os.path.join(cache, f"{kind}_{rows}_{days}")
    if not os.path.isfile(os.path.join(raw, f"day_{days - 1}")):
        started = time.time()
        if uniform:
            write_uniform_days(raw, days, rows // days)
        else:
            write_raw_days(raw, SyntheticSpec(seed=11), days, rows // days)
        print(f"wrote {rows:,} raw rows in {time.time() - started:.0f} s to {raw}", file=sys.stderr)
    out = os.path.join(cache, f"out_{kind}_{rows}_{days}")
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
    peak_rss_kb, cpu_seconds = proc.stdout.strip().splitlines()[-1].split()
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    outputs = sum(f["bytes"] for f in manifest["files"].values())
    total_rows = sum(manifest["splits"].values())
    raw_bytes = folder_bytes(raw)
    return {"data": "uniform" if uniform else "synthetic", "rows": total_rows, "days": days,
            "raw_mb": round(raw_bytes / 1e6), "seconds": round(seconds, 1),
            "rows_per_s": round(total_rows / seconds), "raw_mb_per_s": round(raw_bytes / 1e6 / seconds, 1),
            "cpu_seconds": round(float(cpu_seconds), 1), "peak_rss_mb": round(int(peak_rss_kb) / 1024),
            "output_mb": round(outputs / 1e6), "peak_disk_over_output": round(peak_disk[0] / outputs, 2),
            "stage_seconds": manifest["stage_seconds"], "in_order_seconds": manifest["map_in_order_seconds"],
            "raw": raw}


def per_core_rates(raw: str) -> dict:
    """Single-thread rates: the compiled parser on one day file (in blocks, as
    the pipeline reads it) and its speed against the numpy parser (which
    handles blocks with malformed lines), the writer thread scattering that day into 8
    bucket files, id lookups in dense dictionaries of Criteo 1TB's size (the
    worst case: values spread over 40M, each lookup a cache miss), and gunzip
    of Criteo-format text."""
    import gzip
    import tempfile

    import numpy as np

    from reference.malloc import keep_freed_memory
    from reference.preprocess.criteo_raw import parse_block, parse_checked
    from reference.preprocess.days import BLOCK_BYTES, DaySource, read_blocks
    from reference.preprocess.pipeline import _DayWriter
    from reference.preprocess.vocabulary import Vocabulary

    keep_freed_memory()  # as reference.preprocess does

    text = open(os.path.join(raw, "day_0"), "rb").read()
    parse_block(text[:100_000].rsplit(b"\n", 1)[0] + b"\n", max_ind_range=40_000_000)  # load the compiled code
    blocks, started = [], time.perf_counter()
    for block, _ in read_blocks(DaySource(os.path.join(raw, "day_0"))):
        blocks.append(parse_block(block, max_ind_range=40_000_000).records)
    parse_seconds = time.perf_counter() - started
    rows = sum(len(b) for b in blocks)
    first = text[:BLOCK_BYTES].rsplit(b"\n", 1)[0] + b"\n"  # the numpy parser (the fallback), on one block
    timings = []
    for parse in (parse_block, parse_checked, parse_block, parse_checked):
        started = time.perf_counter()
        parse(first, max_ind_range=40_000_000)
        timings.append(time.perf_counter() - started)
    checked_ratio = (timings[1] + timings[3]) / (timings[0] + timings[2])
    with tempfile.TemporaryDirectory(dir=os.path.dirname(raw)) as folder:
        started = time.perf_counter()
        writer = _DayWriter(folder, 8, np.random.default_rng(0))
        for records in blocks:
            writer.put(records)
        writer.close()
        write_seconds = time.perf_counter() - started
    columns, rng = 4, np.random.default_rng(0)
    vocab = Vocabulary(columns, 40_000_000)
    for _ in range(10):  # ~9M values per column: past the switch to the dense array, as Criteo 1TB's large columns
        vocab.map(rng.integers(0, 40_000_000, (1_000_000, columns)))
    values = rng.integers(0, 40_000_000, (1_000_000, columns))
    vocab.map(values)
    started = time.perf_counter()
    vocab.map(values)
    lookup_ns = (time.perf_counter() - started) / values.size * 1e9
    packed = gzip.compress(text, 6)
    started = time.perf_counter()
    gzip.decompress(packed)
    gunzip_mb_s = len(text) / (time.perf_counter() - started) / 1e6
    return {"parse_rows_per_s": round(rows / parse_seconds), "parse_mb_per_s": round(len(text) / parse_seconds / 1e6),
            "compiled_over_numpy_parser": round(checked_ratio, 1), "write_rows_per_s": round(rows / write_seconds),
            "dense_lookup_ns": round(lookup_ns, 1),
            "gunzip_mb_per_s": round(gunzip_mb_s), "block_mb": BLOCK_BYTES >> 20}


def pyarrow_comparison(raw: str) -> dict:
    """The issue's alternative to our parser: pyarrow's C++ CSV reader, one
    thread, on one day file, against our whole parse (label, dense, hex and
    mod). pyarrow is not a dependency: install it to run this."""
    import pyarrow as pa
    import pyarrow.csv as csv

    from reference.preprocess.criteo_raw import parse_block

    text = open(os.path.join(raw, "day_0"), "rb").read()
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    types = {n: pa.int64() if i < 14 else pa.string() for i, n in enumerate(names)}
    parse_block(text[:100_000].rsplit(b"\n", 1)[0] + b"\n", max_ind_range=40_000_000)  # load the compiled code
    ours, arrow = [], []
    for _ in range(3):
        started = time.perf_counter()
        parse_block(text, max_ind_range=40_000_000)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        csv.read_csv(pa.py_buffer(text), read_options=csv.ReadOptions(column_names=names, use_threads=False),
                     parse_options=csv.ParseOptions(delimiter="\t"),
                     convert_options=csv.ConvertOptions(column_types=types))
        arrow.append(time.perf_counter() - started)
    return {"pyarrow": pa.__version__, "ours_s": round(min(ours), 3),
            "pyarrow_read_csv_s (hex left as strings)": round(min(arrow), 3),
            "pyarrow_over_ours": round(min(arrow) / min(ours), 2)}


def projection(run: dict, rates: dict, cores: int = 32) -> dict:
    """Hours for Criteo 1TB on ``cores`` cores (``--workers`` = cores): the
    largest of
    - the CPU work spread over the cores: CPU seconds per row of the run (plus
      gunzip for .gz days);
    - the ids, assigned in day order: 26 lookups per row at the worst-case
      cost, the columns split over min(cores, 26) threads;
    - the one writer thread per day, scattering rows into buckets in order;
    - the disk traffic (text read once; training rows written to buckets, read
      back and written shuffled) at DISK_BYTES_PER_S."""
    cpu = run["cpu_seconds"] / run["rows"] * CRITEO_LINES / cores
    gunzip = CRITEO_TEXT_BYTES / (rates["gunzip_mb_per_s"] * 1e6) / cores
    ids = 26 * rates["dense_lookup_ns"] * 1e-9 * CRITEO_LINES / min(cores, 26)
    writer = CRITEO_LINES / rates["write_rows_per_s"]
    disk = (CRITEO_TEXT_BYTES + 3 * CRITEO_LINES * RECORD_BYTES) / DISK_BYTES_PER_S
    bounds = {"cpu_plain": cpu, "cpu_gz": cpu + gunzip, "ids_in_order": ids, "writer": writer, "disk": disk}
    hours = {k: round(v / 3600, 2) for k, v in bounds.items()}
    hours["projected_plain"] = round(max(cpu, ids, writer, disk) / 3600, 2)
    hours["projected_gz"] = round(max(cpu + gunzip, ids, writer, disk) / 3600, 2)
    return hours


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 4_000_000])
    p.add_argument("--days", type=int, default=24)
    p.add_argument("--cache", default=os.path.join(ROOT, ".cache", "bench_preprocess"))
    p.add_argument("--uniform-rows", type=int, nargs="*", default=[],
                   help="also run on days of uniformly random categoricals (the dictionaries' worst case: "
                        "8M rows fill them to their dense 4.2 GB bound)")
    p.add_argument("--no-projection", action="store_true", help="skip the per-core rates and the projection")
    p.add_argument("--compare-pyarrow", action="store_true",
                   help="only compare the parser with pyarrow's CSV reader on one day of the first --rows size "
                        "(needs pyarrow installed)")
    args = p.parse_args(argv)
    if args.compare_pyarrow:
        print(json.dumps(pyarrow_comparison(os.path.join(args.cache, f"raw_{args.rows[0]}_{args.days}"))))
        return 0
    # The first run compiles the parser and the dictionaries' loops (about 3 s, then cached):
    # pay it here, so the timed runs are what every later run costs.
    measure(args.days * 100, args.days, args.cache)
    results = [measure(rows, args.days, args.cache) for rows in args.rows]
    results += [measure(rows, args.days, args.cache, uniform=True) for rows in args.uniform_rows]
    print(f"{'data':>9} {'rows':>10} {'raw MB':>7} {'seconds':>8} {'rows/s':>9} {'MB/s':>6} {'CPU s':>6} "
          f"{'peak RSS MB':>12} {'peak disk / output':>19}  stages (s)")
    for r in results:
        print(f"{r['data']:>9} {r['rows']:>10,} {r['raw_mb']:>7} {r['seconds']:>8} {r['rows_per_s']:>9,} "
              f"{r['raw_mb_per_s']:>6} {r['cpu_seconds']:>6} {r['peak_rss_mb']:>12} {r['peak_disk_over_output']:>19}  "
              f"{r['stage_seconds']}, ids in order {r['in_order_seconds']}")
    report = {"runs": results}
    if not args.no_projection:
        largest = max((r for r in results if r["data"] == "synthetic"), key=lambda r: r["rows"])
        report["rates"] = per_core_rates(largest["raw"])
        report["projection_hours_32_cores"] = projection(largest, report["rates"])
        print(f"per core: {report['rates']}")
        print(f"Criteo 1TB on 32 cores (hours; disk at {DISK_BYTES_PER_S / 1e9:.0f} GB/s): "
              f"{report['projection_hours_32_cores']}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
