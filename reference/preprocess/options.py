"""What a preprocessing run is made with (:class:`Options`) and the files it writes."""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = {"terabyte": ("terabyte_processed", "day_fea_count.npz"),
          "kaggle": ("kaggle_processed", "kaggle_fea_count.npz")}


SEMANTICS = ("v1", "dcnv2")
# The dcnv2 reference's table sizes (REFERENCE-DCNV2.md): its ids are taken mod these.
DCNV2_TABLE_SIZES = [40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10, 2209,
                     11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36]
DCNV2_FIRST_ID = 2  # the dcnv2 reference numbers each column's values from 2


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
    # v1: the original reference's rules; dcnv2: the DLRMv2 reference's (negative integers
    # kept, ids from DCNV2_FIRST_ID in first-seen order, then mod table_sizes)
    semantics: str = "v1"
    table_sizes: list | None = None  # dcnv2 only

    def __post_init__(self):
        if self.semantics not in SEMANTICS:
            raise PreprocessError(f"semantics must be one of {', '.join(SEMANTICS)}, got {self.semantics!r}")
        if (self.semantics == "dcnv2") != (self.table_sizes is not None):
            raise PreprocessError("table sizes go with --semantics dcnv2 (its ids are taken mod them), and only there")
        if self.semantics == "dcnv2" and (self.max_ind_range or self.sub_sample_rate):
            raise PreprocessError("--semantics dcnv2 numbers the raw values without hashing (its ids are taken mod "
                                  "the table sizes) and keeps every row: no --max-ind-range or --sub-sample-rate")


def defaults_of_later_fields() -> dict:
    """The options added since manifests were first written, at their defaults:
    a manifest without them was made with these."""
    return {"semantics": "v1", "table_sizes": None}


def output_names(dataset: str) -> dict:
    prefix, counts = PREFIX[dataset]
    return {"train": f"{prefix}_train.bin", "test": f"{prefix}_test.bin", "val": f"{prefix}_val.bin",
            "counts": counts, "manifest": "manifest.json"}
