"""Synthetic Criteo-format data with a planted ground truth.

A hidden *teacher* decides every click: its logit sums a per-id effect for each
categorical column, low-rank interactions between pairs of columns, and a
linear term in log(1 + dense). Ids follow a power law (a few ids are very
common, most are rare, as in Criteo); labels are drawn from the teacher's
probability. Because the teacher is known, so is the best AUC any model can
reach on the evaluation split: it is written to ``synthetic.json`` and printed.

    python -m reference.synthetic --out DIR [--raw | --multihot [--multihot-sizes 3,2,...]]
        [--train-samples N] [--seed S]

With --raw it goes through the real data path (Criteo-format raw day files,
then reference.preprocess), as ./run_and_time.sh's embedded default does.
With --multihot every sample holds a bag of ids per table (MLPerf dlrm_dcnv2's
214 by default), each id drawn from the table's power law; the teacher pools
a bag as the model does, by sum (scaled by 1/sqrt(bag length), so a long bag
weighs no more than a short one), and the files are multi-hot ones
(reference/data/multihot.py) with dense features stored as ln(x + 3), the
DLRMv2 reference's transform.

It sits above both data layers: it writes the binary format of reference.data
directly, or raw text that reference.preprocess turns into it, and scores the
teacher with reference.metrics. reference.data itself only reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .data.binary import NUM_DENSE, NUM_SPARSE, dense_log3, write_binary, write_counts
from .data.multihot import DCNV2_MULTIHOT_SIZES, check_sizes, pack, write_multihot, write_multihot_counts
from .jsonfile import write_json
from .metrics import roc_auc

# Table sizes shaped like Criteo 1TB's (a few huge, several tiny), scaled down
# so the MLPerf architecture trains on 2 cores in minutes.
DEFAULT_TABLE_SIZES = [40000, 3000, 2000, 700, 2000, 3, 700, 150, 63, 40000, 30000, 4000, 10,
                       220, 1200, 155, 4, 100, 14, 40000, 25000, 40000, 6000, 1300, 108, 36]

FILES = {"train": "synthetic_train.bin", "test": "synthetic_test.bin", "val": "synthetic_val.bin",
         "counts": "synthetic_fea_count.npz", "meta": "synthetic.json"}
# Multi-hot samples are 5.7x larger (912 bytes): about a quarter of the one-hot default's, 0.3 GB;
# 140 batches of 2048, so that dlrm_dcnv2's 20 evaluations per epoch fall every 7 steps exactly.
MULTIHOT_TRAIN_SAMPLES = 286_720
# The names python -m reference.preprocess multihot writes: one config reads either.
MULTIHOT_FILES = {"train": "multihot_train.bin", "test": "multihot_test.bin", "val": "multihot_val.bin",
                  "counts": "multihot_fea_count.npz", "meta": "synthetic.json"}


@dataclass
class SyntheticSpec:
    train_samples: int = 1_000_000
    eval_samples: int = 32_768
    table_sizes: list = field(default_factory=lambda: list(DEFAULT_TABLE_SIZES))
    seed: int = 1234
    zipf_exponent: float = 1.2   # id k of a table is drawn with probability ~ (k + 1) ** -exponent
    id_effect_scale: float = 0.35  # std of each column's per-id logit effect
    pair_rank: int = 4            # rank of each pairwise column interaction
    pair_scale: float = 0.2      # std of each pairwise interaction term
    num_pairs: int = 6
    dense_scale: float = 0.55     # std of each dense feature's linear effect
    bias: float = -1.2            # sets the click rate near Criteo's ~25%
    chunk_rows: int = 131_072
    multihot_sizes: list | None = None  # ids per bag for each table: multi-hot files; None: one id each
    # The defaults above were calibrated so configs/synthetic.yaml (the MLPerf
    # architecture, SGD lr 1.0, batch 2048) passes AUC 0.8025 at about 0.4
    # epoch; the teacher's own AUC is about 0.90 (benchmarks/RESULTS.md).

    def __post_init__(self) -> None:
        if len(self.table_sizes) != NUM_SPARSE or min(self.table_sizes) <= 0:
            raise ValueError(f"table_sizes must be {NUM_SPARSE} positive sizes, got {self.table_sizes}")
        if self.train_samples <= 0 or self.eval_samples <= 0:
            raise ValueError("train_samples and eval_samples must be > 0")
        if self.multihot_sizes is not None:
            self.multihot_sizes = check_sizes(self.multihot_sizes, "multihot_sizes")

    @property
    def bag_sizes(self) -> list[int]:
        return self.multihot_sizes if self.multihot_sizes is not None else [1] * NUM_SPARSE

    @property
    def files(self) -> dict:
        return MULTIHOT_FILES if self.multihot_sizes is not None else FILES


class Teacher:
    """The hidden model that labels synthetic samples."""

    def __init__(self, spec: SyntheticSpec):
        rng = np.random.default_rng([spec.seed, 0])
        self.spec = spec
        self.id_cdf = []
        self.id_effect = []
        self.factors = []
        for n in spec.table_sizes:
            p = (np.arange(n) + 1.0) ** -spec.zipf_exponent
            self.id_cdf.append(np.cumsum(p / p.sum()))
            self.id_effect.append(rng.normal(0, spec.id_effect_scale, n))
            self.factors.append(rng.normal(0, 1.0, (n, spec.pair_rank)))
        pairs = [(a, b) for a in range(NUM_SPARSE) for b in range(a + 1, NUM_SPARSE)]
        chosen = rng.choice(len(pairs), size=min(spec.num_pairs, len(pairs)), replace=False)
        self.pairs = [pairs[i] for i in sorted(chosen)]
        self.pair_weight = spec.pair_scale / np.sqrt(spec.pair_rank)
        self.dense_mu = rng.uniform(0.0, 3.0, NUM_DENSE)
        self.dense_sigma = rng.uniform(0.5, 1.5, NUM_DENSE)
        self.dense_weight = rng.normal(0, spec.dense_scale, NUM_DENSE)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Returns labels (n,), dense integers (n, 13), every table's bag side by
        side (n, sum of bag sizes) and the click probabilities (n,). With bags of
        one id these are the draws (and the floating-point sums) of one-hot data."""
        sizes = self.spec.bag_sizes
        bags = [np.minimum(np.searchsorted(cdf, rng.random((n, k))), len(cdf) - 1)
                for cdf, k in zip(self.id_cdf, sizes, strict=True)]
        z = rng.normal(self.dense_mu, self.dense_sigma, (n, NUM_DENSE))
        dense = np.floor(np.expm1(np.maximum(z, 0.0)))
        logit = np.full(n, self.spec.bias)
        for t in range(NUM_SPARSE):
            logit += self.id_effect[t][bags[t]].sum(axis=1) / np.sqrt(sizes[t])

        def pooled(t: int) -> np.ndarray:
            return self.factors[t][bags[t]].sum(axis=1) / np.sqrt(sizes[t])
        for a, b in self.pairs:
            logit += self.pair_weight * np.einsum("ij,ij->i", pooled(a), pooled(b))
        standardised = (np.log1p(dense) - self.dense_mu) / self.dense_sigma
        logit += standardised @ self.dense_weight
        prob = 1.0 / (1.0 + np.exp(-logit))
        labels = (rng.random(n) < prob).astype(np.int64)
        return labels, dense, np.concatenate(bags, axis=1), prob

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (records, click probabilities (n,)): one-hot rows (n, 40)
        int32, or multi-hot records (reference/data/multihot.py) with bags."""
        labels, dense, bags, prob = self.draw(rng, n)
        if self.spec.multihot_sizes is not None:
            return pack(labels, dense_log3(dense), bags), prob
        rows = np.concatenate([labels[:, None], dense.astype(np.int64), bags], axis=1).astype(np.int32)
        return rows, prob


def generate(out_dir: str, spec: SyntheticSpec, log=print) -> dict:
    """Write train/test/val binary files (one-hot, or multi-hot with
    ``spec.multihot_sizes``), the counts file and synthetic.json to
    ``out_dir``; every file is written under a temporary name and renamed."""
    os.makedirs(out_dir, exist_ok=True)
    teacher = Teacher(spec)
    started = time.time()
    files = spec.files
    meta: dict = {"spec": asdict(spec), "files": dict(files)}
    for split, count, stream in (("train", spec.train_samples, 1), ("test", spec.eval_samples, 2),
                                 ("val", spec.eval_samples, 3)):
        rng = np.random.default_rng([spec.seed, stream])
        probs: list[np.ndarray] = []
        labels: list[np.ndarray] = []

        def chunks(rng: np.random.Generator, left: int, keep: bool, probs: list, labels: list):
            while left:
                rows, prob = teacher.sample(rng, min(spec.chunk_rows, left))
                left -= rows.shape[0]
                if keep:
                    probs.append(prob)
                    labels.append(rows[:, 0])
                yield rows

        path = os.path.join(out_dir, files[split])
        records = chunks(rng, count, split != "train", probs, labels)
        if spec.multihot_sizes is not None:
            write_multihot(path, records, spec.multihot_sizes)
        else:
            write_binary(path, records)
        if split != "train":
            meta[f"best_auc_{split}"] = roc_auc(np.concatenate(probs), np.concatenate(labels))
            meta[f"click_rate_{split}"] = float(np.concatenate(labels).mean())
    if spec.multihot_sizes is not None:
        write_multihot_counts(os.path.join(out_dir, files["counts"]), spec.table_sizes, spec.multihot_sizes)
    else:
        write_counts(os.path.join(out_dir, files["counts"]), spec.table_sizes)
    meta["seconds"] = round(time.time() - started, 2)
    write_json(os.path.join(out_dir, files["meta"]), meta, indent=2)
    kind = f"multi-hot ({sum(spec.multihot_sizes)} ids per sample) " if spec.multihot_sizes is not None else ""
    log(f"synthetic {kind}data: {spec.train_samples} train / {spec.eval_samples} test samples in {out_dir} "
        f"({meta['seconds']} s); click rate {meta['click_rate_test']:.3f}; "
        f"best achievable AUC on test (the teacher's own) {meta['best_auc_test']:.4f}")
    return meta


_HASH_MULTIPLIER = 2654435761   # odd and not a multiple of 5: a bijection mod 2**32 and mod 40,000,000
EMPTY_ID = 2                     # in some columns this (popular) id is written as an empty field


def raw_values(table: int, ids: np.ndarray, max_ind_range: int) -> np.ndarray:
    """Raw categorical values for teacher ids: a bijection per column, below
    ``max_ind_range`` (so hashing keeps it one to one); in every third column
    EMPTY_ID maps to 0, which the raw text writes as an empty field."""
    modulus = max_ind_range if max_ind_range > 0 else 2 ** 32
    offset = (table + 1) * 7_919_009 % modulus
    if table % 3 == 0:
        offset = (-EMPTY_ID * _HASH_MULTIPLIER) % modulus
    return (ids.astype(np.uint64) * _HASH_MULTIPLIER + offset) % modulus


def raw_lines(rows: np.ndarray, rng: np.random.Generator, max_ind_range: int) -> bytes:
    """Criteo text for binary rows (label, 13 dense, 26 teacher ids), with what
    real day files hold: empty fields and negative integers. Every field parses
    back to the row's value (empty and negative integers mean 0)."""
    n = rows.shape[0]
    table = [rows[:, 0].astype(str)]
    dense = rows[:, 1:14]
    for c in range(NUM_DENSE):
        text = dense[:, c].astype(str).astype(object)
        zero = dense[:, c] == 0
        roll = rng.random(n)
        text[zero & (roll < 0.5)] = ""
        if c == 1:  # Criteo's I2 holds small negative numbers
            text[zero & (roll >= 0.5) & (roll < 0.8)] = "-1"
            text[zero & (roll >= 0.8)] = "-2"
        table.append(text)
    for t in range(NUM_SPARSE):
        values = raw_values(t, rows[:, 1 + NUM_DENSE + t], max_ind_range)
        text = np.char.zfill(np.char.mod("%x", values), 8).astype(object)
        text[values == 0] = ""
        table.append(text)
    return ("\n".join("\t".join(fields) for fields in zip(*table, strict=True)) + "\n").encode()


def write_raw_days(out_dir: str, spec: SyntheticSpec, days: int, rows_per_day: int, gz_days=(),
                   max_ind_range: int = 40_000_000, last_day_rows: int | None = None):
    """Criteo-format day files day_0 .. day_{days-1} (gzip for the days in
    ``gz_days``) drawn from the teacher of ``spec``; the last day holds
    ``last_day_rows`` (default ``rows_per_day``). Returns the paths, and the
    teacher's click probabilities and the labels of the last day's rows."""
    import gzip

    os.makedirs(out_dir, exist_ok=True)
    teacher = Teacher(spec)
    paths, probs, labels = [], [], []
    for d in range(days):
        rng = np.random.default_rng([spec.seed, 100 + d])
        last = d == days - 1
        path = os.path.join(out_dir, f"day_{d}" + (".gz" if d in gz_days else ""))
        opener = gzip.open if d in gz_days else open
        with opener(path + ".partial", "wb") as f:
            left = last_day_rows if last and last_day_rows is not None else rows_per_day
            while left:
                rows, prob = teacher.sample(rng, min(spec.chunk_rows, left))
                left -= rows.shape[0]
                f.write(raw_lines(rows, rng, max_ind_range))
                if last:
                    probs.append(prob)
                    labels.append(rows[:, 0])
        os.replace(path + ".partial", path)
        paths.append(path)
    return paths, np.concatenate(probs), np.concatenate(labels)


RAW_DAYS = 8  # seven training days and a test/validation day


def generate_via_raw(out_dir: str, spec: SyntheticSpec, log=print) -> dict:
    """The whole real data path: Criteo-format raw day files from the teacher
    (``out_dir/raw``), then ``reference.preprocess`` into ``out_dir``, then
    synthetic.json with the teacher's AUC on the test split (the first half of
    the last day, as preprocessing splits it)."""
    from .preprocess import Options, Pipeline, find_inputs, output_names

    if spec.multihot_sizes is not None:
        raise ValueError("multi-hot synthetic data is written directly (the raw text format has one id per table)")
    started = time.time()
    for key in ("train", "test", "val", "counts", "meta"):  # a cache made the direct way, by this module
        stale = os.path.join(out_dir, FILES[key])
        if os.path.isfile(stale):
            os.remove(stale)
    raw = os.path.join(out_dir, "raw")
    per_day = -(-spec.train_samples // (RAW_DAYS - 1))
    _, prob, labels = write_raw_days(raw, spec, RAW_DAYS, per_day, gz_days=(1,),
                                     last_day_rows=2 * spec.eval_samples)
    options = Options("terabyte", 40_000_000, 0.0, RAW_DAYS, spec.seed, "error", buckets=1)
    Pipeline(options, find_inputs("terabyte", raw, RAW_DAYS), out_dir, progress=False).run()
    test = slice(0, -(-prob.size // 2))
    meta = {"spec": asdict(spec), "via": "raw", "files": output_names("terabyte"), "raw_days": RAW_DAYS,
            "best_auc_test": roc_auc(prob[test], labels[test]), "click_rate_test": float(labels[test].mean()),
            "seconds": round(time.time() - started, 2)}
    write_json(os.path.join(out_dir, FILES["meta"]), meta, indent=2)
    log(f"synthetic data via raw day files: {RAW_DAYS} Criteo-format days in {raw} -> preprocessed into "
        f"{out_dir} ({meta['seconds']} s); best achievable AUC on test (the teacher's own) {meta['best_auc_test']:.4f}")
    return meta


def read_meta(data_dir: str) -> dict | None:
    path = os.path.join(data_dir, FILES["meta"])
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def is_complete(out_dir: str, spec: SyntheticSpec, via_raw: bool = False) -> bool:
    """True when ``out_dir`` holds data generated from exactly ``spec`` (and the same way)."""
    meta = read_meta(out_dir)
    # multihot_sizes came later: data made before it is one-hot
    if meta is None or {"multihot_sizes": None, **meta.get("spec", {})} != asdict(spec) or \
            (meta.get("via") == "raw") != via_raw:
        return False
    files = meta.get("files", FILES)
    return all(os.path.isfile(os.path.join(out_dir, files[k])) for k in ("train", "test", "val", "counts"))


def ensure(out_dir: str, spec: SyntheticSpec, via_raw: bool = False, log=print) -> dict:
    """Generate into ``out_dir`` unless it already holds data made from ``spec``:
    binary files directly, or (``via_raw``) raw day files run through preprocessing."""
    if is_complete(out_dir, spec, via_raw):
        meta = read_meta(out_dir)
        assert meta is not None, "is_complete() read it"
        log(f"synthetic data in {out_dir} is up to date; best achievable AUC {meta['best_auc_test']:.4f}")
        return meta
    return generate_via_raw(out_dir, spec, log=log) if via_raw else generate(out_dir, spec, log=log)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reference.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train-samples", type=int, default=None,
                   help=f"default {SyntheticSpec.train_samples:,}, with --multihot {MULTIHOT_TRAIN_SAMPLES:,}")
    p.add_argument("--eval-samples", type=int, default=SyntheticSpec.eval_samples)
    p.add_argument("--seed", type=int, default=SyntheticSpec.seed)
    p.add_argument("--raw", action="store_true",
                   help="go through the real data path: write Criteo-format raw day files (OUT/raw), then "
                        "preprocess them into OUT with reference.preprocess")
    p.add_argument("--multihot", action="store_true",
                   help="multi-hot files (multihot_*.bin): a bag of ids per table, pooled by the teacher by sum")
    p.add_argument("--multihot-sizes", default=None,
                   help="with --multihot: ids per bag for each of the 26 tables, e.g. 3,2,1,... "
                        "(default: MLPerf dlrm_dcnv2's, 214 ids)")
    p.add_argument("--force", action="store_true", help="regenerate even if the folder is up to date")
    args = p.parse_args(argv)
    if args.multihot and args.raw:
        p.error("--multihot writes multi-hot files directly; --raw makes one-hot data through raw day files")
    if args.multihot_sizes is not None and not args.multihot:
        p.error("--multihot-sizes goes with --multihot")
    try:
        sizes = None
        if args.multihot:
            sizes = ([int(v) for v in args.multihot_sizes.replace("-", ",").split(",")] if args.multihot_sizes
                     else list(DCNV2_MULTIHOT_SIZES))
        train = args.train_samples or (MULTIHOT_TRAIN_SAMPLES if args.multihot else SyntheticSpec.train_samples)
        spec = SyntheticSpec(train_samples=train, eval_samples=args.eval_samples, seed=args.seed,
                             multihot_sizes=sizes)
    except ValueError as e:
        p.error(str(e))
    if args.force:
        (generate_via_raw if args.raw else generate)(args.out, spec)
    else:
        ensure(args.out, spec, via_raw=args.raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
