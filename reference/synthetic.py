"""Synthetic Criteo-format data with a planted ground truth.

A hidden *teacher* decides every click: its logit sums a per-id effect for each
categorical column, low-rank interactions between pairs of columns, and a
linear term in log(1 + dense). Ids follow a power law (a few ids are very
common, most are rare, as in Criteo); labels are drawn from the teacher's
probability. Because the teacher is known, so is the best AUC any model can
reach on the evaluation split: it is written to ``synthetic.json`` and printed.

    python -m reference.synthetic --out DIR [--raw] [--train-samples N] [--seed S]

With --raw it goes through the real data path (Criteo-format raw day files,
then reference.preprocess), as ./run_and_time.sh's embedded default does.

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

from .data.binary import NUM_DENSE, NUM_SPARSE, write_binary, write_counts
from .jsonfile import write_json
from .metrics import roc_auc

# Table sizes shaped like Criteo 1TB's (a few huge, several tiny), scaled down
# so the MLPerf architecture trains on 2 cores in minutes.
DEFAULT_TABLE_SIZES = [40000, 3000, 2000, 700, 2000, 3, 700, 150, 63, 40000, 30000, 4000, 10,
                       220, 1200, 155, 4, 100, 14, 40000, 25000, 40000, 6000, 1300, 108, 36]

FILES = {"train": "synthetic_train.bin", "test": "synthetic_test.bin", "val": "synthetic_val.bin",
         "counts": "synthetic_fea_count.npz", "meta": "synthetic.json"}


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
    # The defaults above were calibrated so configs/synthetic.yaml (the MLPerf
    # architecture, SGD lr 1.0, batch 2048) passes AUC 0.8025 at about 0.4
    # epoch; the teacher's own AUC is about 0.90 (benchmarks/RESULTS.md).

    def __post_init__(self) -> None:
        if len(self.table_sizes) != NUM_SPARSE or min(self.table_sizes) <= 0:
            raise ValueError(f"table_sizes must be {NUM_SPARSE} positive sizes, got {self.table_sizes}")
        if self.train_samples <= 0 or self.eval_samples <= 0:
            raise ValueError("train_samples and eval_samples must be > 0")


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

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (rows (n, 40) int32 with labels, click probabilities (n,))."""
        ids = np.empty((n, NUM_SPARSE), dtype=np.int64)
        for t, cdf in enumerate(self.id_cdf):
            ids[:, t] = np.minimum(np.searchsorted(cdf, rng.random(n)), len(cdf) - 1)
        z = rng.normal(self.dense_mu, self.dense_sigma, (n, NUM_DENSE))
        dense = np.floor(np.expm1(np.maximum(z, 0.0)))
        logit = np.full(n, self.spec.bias)
        for t in range(NUM_SPARSE):
            logit += self.id_effect[t][ids[:, t]]
        for a, b in self.pairs:
            logit += self.pair_weight * np.einsum("ij,ij->i", self.factors[a][ids[:, a]], self.factors[b][ids[:, b]])
        standardised = (np.log1p(dense) - self.dense_mu) / self.dense_sigma
        logit += standardised @ self.dense_weight
        prob = 1.0 / (1.0 + np.exp(-logit))
        labels = (rng.random(n) < prob).astype(np.int64)
        rows = np.concatenate([labels[:, None], dense.astype(np.int64), ids], axis=1).astype(np.int32)
        return rows, prob


def generate(out_dir: str, spec: SyntheticSpec, log=print) -> dict:
    """Write train/test/val binary files, the counts file and synthetic.json to
    ``out_dir``; every file is written under a temporary name and renamed."""
    os.makedirs(out_dir, exist_ok=True)
    teacher = Teacher(spec)
    started = time.time()
    meta: dict = {"spec": asdict(spec), "files": dict(FILES)}
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

        write_binary(os.path.join(out_dir, FILES[split]), chunks(rng, count, split != "train", probs, labels))
        if split != "train":
            meta[f"best_auc_{split}"] = roc_auc(np.concatenate(probs), np.concatenate(labels))
            meta[f"click_rate_{split}"] = float(np.concatenate(labels).mean())
    write_counts(os.path.join(out_dir, FILES["counts"]), spec.table_sizes)
    meta["seconds"] = round(time.time() - started, 2)
    write_json(os.path.join(out_dir, FILES["meta"]), meta, indent=2)
    log(f"synthetic data: {spec.train_samples} train / {spec.eval_samples} test samples in {out_dir} "
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
    if meta is None or meta.get("spec") != asdict(spec) or (meta.get("via") == "raw") != via_raw:
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
    p.add_argument("--train-samples", type=int, default=SyntheticSpec.train_samples)
    p.add_argument("--eval-samples", type=int, default=SyntheticSpec.eval_samples)
    p.add_argument("--seed", type=int, default=SyntheticSpec.seed)
    p.add_argument("--raw", action="store_true",
                   help="go through the real data path: write Criteo-format raw day files (OUT/raw), then "
                        "preprocess them into OUT with reference.preprocess")
    p.add_argument("--force", action="store_true", help="regenerate even if the folder is up to date")
    args = p.parse_args(argv)
    try:
        spec = SyntheticSpec(train_samples=args.train_samples, eval_samples=args.eval_samples, seed=args.seed)
    except ValueError as e:
        p.error(str(e))
    if args.force:
        (generate_via_raw if args.raw else generate)(args.out, spec)
    else:
        ensure(args.out, spec, via_raw=args.raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
