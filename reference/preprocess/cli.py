"""``python -m reference.preprocess``: the command line of the preprocessing."""

from __future__ import annotations

import argparse
import os
import sys

from ..malloc import keep_freed_memory
from . import __doc__ as PACKAGE_DOC
from .criteo_raw import RawFormatError
from .days import find_inputs
from .options import PREFIX, Options, PreprocessError
from .pipeline import Pipeline, default_buckets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reference.preprocess", description=PACKAGE_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(PREFIX), required=True)
    p.add_argument("--raw", required=True, help="folder of day files (terabyte) or train.txt (kaggle)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-ind-range", type=int, default=None,
                   help="hash categoricals mod this (default: 40000000 for terabyte, 0 = none for kaggle)")
    p.add_argument("--sub-sample-rate", type=float, default=0.0, help="share of negative training rows dropped")
    p.add_argument("--days", type=int, default=None, help="number of days (default: 24 terabyte, 7 kaggle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on-bad-line", choices=["error", "skip"], default="error")
    p.add_argument("--buckets", type=int, default=None, help="shuffle buckets (default: ~512 MB each, at least 4)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="threads: days parsed ahead of the in-order id assignment, and parts of each shuffle "
                        "bucket (0: parse inline, one thread; default: cores); the outputs do not depend on it")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    kaggle = args.dataset == "kaggle"
    days = args.days if args.days is not None else (7 if kaggle else 24)
    max_ind_range = args.max_ind_range if args.max_ind_range is not None else (0 if kaggle else 40_000_000)
    if days < 2:
        p.error("--days must be at least 2 (training days, then the test/val day)")
    if not 0 <= args.sub_sample_rate < 1:
        p.error("--sub-sample-rate must be in [0, 1)")
    if max_ind_range < 0:
        p.error("--max-ind-range must be >= 0")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    keep_freed_memory()  # blocks reuse their pages instead of faulting them in again (reference/malloc.py)
    try:
        inputs = find_inputs(args.dataset, args.raw, days)
        buckets = args.buckets if args.buckets is not None else default_buckets(inputs[:-1])
        if buckets < 1:
            p.error("--buckets must be >= 1")
        options = Options(args.dataset, max_ind_range, args.sub_sample_rate, days, args.seed, args.on_bad_line,
                          buckets)
        manifest = Pipeline(options, inputs, args.out, progress=not args.no_progress, workers=args.workers).run()
    except (PreprocessError, RawFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, say: what is complete is kept
        print(f"error: {e}\nrerun the same command to resume once this is fixed", file=sys.stderr)
        return 2
    splits = manifest["splits"]
    skipped = sum(i["skipped"] for i in manifest["inputs"])
    print(f"done: train {splits['train']:,} / test {splits['test']:,} / val {splits['val']:,} rows; "
          f"{skipped:,} bad lines skipped; {sum(manifest['table_sizes']):,} embedding rows in "
          f"{len(manifest['table_sizes'])} tables; {manifest['seconds']} s; "
          f"manifest {os.path.join(args.out, 'manifest.json')}")
    return 0

