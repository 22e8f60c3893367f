"""``python -m reference.preprocess``: the command line of the preprocessing."""

from __future__ import annotations

import argparse
import os
import sys

from ..data.binary import DataError
from ..data.multihot import DCNV2_MULTIHOT_SIZES
from ..malloc import keep_freed_memory
from . import __doc__ as PACKAGE_DOC
from .criteo_raw import RawFormatError
from .days import find_inputs
from .multihot import MultiHot
from .options import DCNV2_TABLE_SIZES, PREFIX, SEMANTICS, Options, PreprocessError
from .pipeline import Pipeline, default_buckets

MULTIHOT_DOC = """One-hot MLPerf binary files -> multi-hot binary files (MLPerf dlrm_dcnv2):

    python -m reference.preprocess multihot --in DIR --out DIR [--sizes 3,2,1,...]
        [--semantics {v1,dcnv2}] [--workers N]

Every id becomes the bag [id, lookup_t[id]] of the reference's fixed lookup
(numpy's legacy generator seeded with 0, tables in order); the dense features
are stored transformed (v1: log(x + 1), dcnv2: ln(x + 3); default: what the
input folder's manifest says, else v1). Reads *_{train,test,val}.bin and
*_fea_count.npz of --in, writes multihot_{train,test,val}.bin,
multihot_fea_count.npz and multihot_manifest.json to --out (which may be
--in). Resumable: rerun the same command after an interruption.
Layout and memory: reference/data/multihot.py, reference/preprocess/multihot.py.
"""


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("-", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 3,2,1, got {text!r}") from None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["multihot"]:
        return multihot_main(argv[1:])
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
    p.add_argument("--semantics", choices=SEMANTICS, default="v1",
                   help="v1: the original reference's rules (above); dcnv2: the DLRMv2 reference's: negative "
                        "integers kept (its dense input is ln(x + 3)), ids numbered from 2 in first-seen order "
                        "over all days, then mod --table-sizes; no hashing, no sub-sampling")
    p.add_argument("--table-sizes", type=_int_list, default=None,
                   help="dcnv2: the 26 table sizes the ids are taken mod (default: the reference's)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    dcnv2 = args.semantics == "dcnv2"
    if not dcnv2 and args.table_sizes is not None:
        p.error("--table-sizes goes with --semantics dcnv2")
    if dcnv2 and args.max_ind_range:
        p.error("--semantics dcnv2 takes its ids mod --table-sizes, not --max-ind-range")
    if dcnv2 and args.sub_sample_rate:
        p.error("--semantics dcnv2 keeps every row (no --sub-sample-rate)")
    table_sizes = (args.table_sizes or list(DCNV2_TABLE_SIZES)) if dcnv2 else None
    if table_sizes is not None and (len(table_sizes) != 26 or min(table_sizes) < 1):
        p.error(f"--table-sizes must be 26 positive sizes, got {len(table_sizes)}")
    if dcnv2:
        args.max_ind_range = 0
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
                          buckets, args.semantics, table_sizes)
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



def multihot_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m reference.preprocess multihot", description=MULTIHOT_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in", dest="inp", required=True, help="folder of one-hot binary files and their counts file")
    p.add_argument("--out", required=True, help="output folder (may be --in: the names do not collide)")
    p.add_argument("--sizes", type=_int_list, default=list(DCNV2_MULTIHOT_SIZES),
                   help="ids per bag for each of the 26 tables (default: the reference's, 214 ids)")
    p.add_argument("--semantics", choices=SEMANTICS, default=None,
                   help="how the input's dense integers become the stored floats: v1 log(x + 1), dcnv2 ln(x + 3) "
                        "(default: the input manifest's, else v1)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads filling the bags")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    try:
        manifest = MultiHot(args.inp, args.out, args.sizes, args.semantics, workers=args.workers,
                            progress=not args.no_progress).run()
    except (PreprocessError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}\nrerun the same command to resume once this is fixed", file=sys.stderr)
        return 2
    rows = manifest["splits"]
    print(f"done: {', '.join(f'{k} {v:,}' for k, v in rows.items())} rows of {sum(manifest['multihot_sizes'])} ids "
          f"({manifest['options']['semantics']} dense); lookups {manifest['lookup_bytes'] / 1e9:.2f} GB; "
          f"{manifest['seconds']} s; manifest {os.path.join(args.out, 'multihot_manifest.json')}")
    return 0
