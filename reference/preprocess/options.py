"""What a preprocessing run is made with (:class:`Options`) and the files it writes."""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = {"terabyte": ("terabyte_processed", "day_fea_count.npz"),
          "kaggle": ("kaggle_processed", "kaggle_fea_count.npz")}


class PreprocessError(ValueError):
    pass


@dataclass(frozen=True)
class Options:
    dataset: str
    max_ind_range: int
    sub_sample_rate: float
    days: int
    seed: int
    on_bad_line: str
    buckets: int


def output_names(dataset: str) -> dict:
    prefix, counts = PREFIX[dataset]
    return {"train": f"{prefix}_train.bin", "test": f"{prefix}_test.bin", "val": f"{prefix}_val.bin",
            "counts": counts, "manifest": "manifest.json"}
