"""Raw Criteo day files -> MLPerf binary files (train, test, val), counts and a manifest.

    python -m reference.preprocess --dataset {terabyte,kaggle} --raw PATH --out DIR
        [--max-ind-range 40000000] [--sub-sample-rate R] [--days N] [--seed S]
        [--on-bad-line {error,skip}] [--buckets K] [--workers N] [--semantics {v1,dcnv2}]
    python -m reference.preprocess multihot --in DIR --out DIR [--sizes ...]   (multihot.py)

Semantics of the original reference (REFERENCE.md): empty -> 0, negative
integers -> 0, categorical = hex mod max-ind-range, one dictionary per column
over all days numbered by first appearance (rows dropped by sub-sampling not
counted), days 0..N-2 train (negatives sub-sampled with the seed), the last
day split into test (first ceil(n/2) rows) and val. ``--semantics dcnv2``
follows the DLRMv2 reference instead (REFERENCE-DCNV2.md): negative integers
kept, raw values numbered from 2 in order of first appearance over all days,
then taken mod its table sizes (the dictionaries then hold every distinct
raw value: hash tables, not bounded by max-ind-range).

Stages, each resumable (temporary names, renamed when complete; a rerun after
kill -9 skips what is complete and writes byte-identical outputs):
  1. map:     each day in order is streamed, parsed, sub-sampled and mapped to
              ids; training rows are scattered into K buckets by a seeded draw;
              the day's new dictionary entries are saved for resume;
  2. shuffle: each bucket is shuffled in memory (seeded) and written at its
              offset in the training file, so no split is ever held whole;
  3. split:   the last day becomes the test and val files;
  4. finish:  counts file and manifest (rows, table sizes, options, sha256).
Threads (``--workers``, default: cores) do what does not depend on order:
parsing the next days, the dictionary columns of a block, the gather and
write of a shuffle bucket; a writer thread scatters each day's rows into the
buckets in block order. The outputs do not depend on the number of threads.
Memory: the dictionaries (hash tables sized to the values seen, at most
26 x max-ind-range x 4 B: 4.2 GB at 40M; freed before the shuffle), a few
8 MB blocks per thread, then two buckets (at most about 512 MB each).
Temporary disk: at most a quarter of the training output besides the outputs.

Modules, one concept each: ``options`` (a run's options and output names),
``criteo_raw`` (the raw text format's parser), ``days`` (finding, reading and
parsing the input days), ``vocabulary`` (the per-column dictionaries),
``pipeline`` (the stages), ``lookup`` (the dcnv2 reference's multi-hot lookup),
``multihot`` (one-hot files to multi-hot files) and ``cli`` (the command line). The binary format
they write is reference/data/binary.py's, the one the loader reads.
"""

from .cli import main
from .criteo_raw import RawFormatError
from .days import DaySource, find_inputs, kaggle_days
from .options import Options, PreprocessError, output_names
from .pipeline import Pipeline

__all__ = ["DaySource", "Options", "Pipeline", "PreprocessError", "RawFormatError", "find_inputs", "kaggle_days",
           "main", "output_names"]
