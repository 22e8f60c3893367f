"""One typed, validated training configuration built from YAML plus CLI overrides.

Every option the trainer understands is a field of :class:`Config`. A YAML file
names a subset of them; ``key=value`` overrides on the command line replace
values after the file is read; :meth:`Config.validate` runs once, before any
work starts, and every error names the key and where its value came from. A
validated config is frozen: nothing downstream can change a value the run was
checked with (:meth:`Config.replace` makes a new, validated one).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from dataclasses import dataclass, field
from typing import Any, NoReturn, Union, get_args, get_origin, get_type_hints

import yaml

from .data.binary import DENSE_TRANSFORMS

INTERACTIONS = ("dot", "cat", "sum", "dcn")
MLP_INITS = ("auto", "normal", "uniform")
BENCHMARKS = ("dlrm", "dlrm_dcnv2")
QR_OPERATIONS = ("mult", "add", "concat")
OPTIMIZERS = ("sgd", "rowwise_adagrad", "adagrad")
DIST_BACKENDS = ("auto", "gloo", "nccl", "mpi")
PRECISIONS = ("fp32", "bf16")
LINEAR_KERNELS = ("auto", "aten", "onednn")
SPARSE_UPDATE_KERNELS = ("auto", "torch", "native")
INTERACTION_KERNELS = ("auto", "torch", "native")
DIVISIONS = ("closed", "open")
STATUSES = ("onprem", "cloud", "preview", "research")
QUANTIZE_EMBEDDING_BITS = (0, 8, 4)
QUANTIZE_MLP_BITS = (0, 8)
DATA_MODES = ("files", "random")
DATA_FORMATS = ("onehot", "multihot")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or impossible."""


class FrozenConfigError(AttributeError):
    """A validated config was assigned to; the run was checked with the old value."""


def _doc(text: str, **kwargs: Any) -> Any:
    return field(metadata={"doc": text}, **kwargs)


@dataclass
class Config:
    # --- model ---
    embedding_dim: int = _doc("Width of every embedding row (and of the bottom MLP output).", default=128)
    bottom_mlp: list = _doc("Bottom MLP widths, input first, e.g. 13-512-256-128.",
                            default_factory=lambda: [13, 512, 256, 128])
    top_mlp: list = _doc("Top MLP widths after the interaction, e.g. 1024-1024-512-256-1 "
                         "(its input width follows from the interaction).",
                         default_factory=lambda: [1024, 1024, 512, 256, 1])
    interaction: str = _doc("Feature interaction: dot, cat, sum, or dcn (DLRMv2's low-rank cross network over "
                            "[bottom output, tables], as wide as that concatenation).", default="dot")
    self_interaction: bool = _doc("dot only: include each vector's dot product with itself.", default=False)
    dcn_num_layers: int = _doc("dcn only: cross layers.", default=3)
    dcn_low_rank_dim: int = _doc("dcn only: rank r of each cross layer's W (d x r) V (r x d).", default=512)
    mlp_init: str = _doc("MLP initialisation: normal (DLRM v1's seed: N(0, sqrt(2/(fan_in+fan_out))) weights, "
                         "N(0, sqrt(1/fan_out)) biases), uniform (nn.Linear's default, DLRMv2's reference: "
                         "U(+-1/sqrt(fan_in))), or auto: uniform with interaction dcn, else normal. Seeded by "
                         "seed either way.", default="auto")
    table_sizes: list | None = _doc("Rows per embedding table; null reads them from the counts file.",
                                    default=None)
    max_ind_range: int = _doc("Cap on rows per table (the ids were hashed mod this); 0 = no cap.", default=0)
    qr_threshold: int = _doc("Quotient-remainder trick for every table of more rows than this: two tables of "
                             "ceil(n/qr_collisions) and qr_collisions rows (0 = off; one process only).", default=0)
    qr_collisions: int = _doc("QR: rows of each remainder table (ids per quotient row), >= 2.", default=4)
    qr_operation: str = _doc("QR: how the two vectors combine: mult (element-wise), add, or concat (each half "
                             "embedding_dim/2 wide).", default="mult")
    md_temperature: float = _doc("Mixed-dimension tables: the alpha of md_solver, widths ~ rows**-alpha, the "
                                 "smallest table at embedding_dim, projected back to it (0 = off; one process "
                                 "only).", default=0.0)
    md_threshold: int = _doc("MD: tables of at most this many rows keep the full embedding_dim.", default=0)
    md_round_dims: bool = _doc("MD: round each width to the nearest power of 2 (md_solver's round_dim).",
                               default=False)

    # --- optimiser and schedule ---
    optimizer: str = _doc("sgd, rowwise_adagrad or adagrad.", default="sgd")
    learning_rate: float = _doc("Base learning rate.", default=1.0)
    warmup_steps: int = _doc("Linear warmup steps (0 = none).", default=0)
    decay_start_step: int = _doc("Step at which polynomial decay starts.", default=0)
    decay_steps: int = _doc("Length of the polynomial decay in steps (0 = no decay).", default=0)
    decay_power: int = _doc("Power of the polynomial decay (MLPerf closed division: 2).", default=2)
    adagrad_eps: float = _doc("Epsilon of (row-wise) Adagrad.", default=1e-10)
    adagrad_lr_decay: float = _doc("(Row-wise) Adagrad lr decay: lr / (1 + (s-1) * decay).", default=0.0)

    # --- data ---
    data_mode: str = _doc("files (the binary files in data_dir) or random: batches drawn in memory for speed "
                          "studies on any shape (the original's --data-generation=random): uniform ids for "
                          "table_sizes, uniform dense features, coin-flip labels (AUC ~0.5 by construction); "
                          "needs table_sizes, submission_division=open and no target.", default="files")
    random_train_batches: int = _doc("data_mode=random: training batches per epoch.", default=100)
    random_eval_batches: int = _doc("data_mode=random: evaluation batches (of eval_batch_size).", default=4)
    bag_size: int = _doc("data_mode=random: ids per table per sample, pooled by sum (the original's "
                         "--num-indices-per-lookup): 1 to bag_size, uniformly, or exactly bag_size with "
                         "bag_size_fixed (1 = one id, as in the files).", default=1)
    bag_size_fixed: bool = _doc("data_mode=random: every bag holds exactly bag_size ids (the original's "
                                "--num-indices-per-lookup-fixed).", default=False)
    bag_sizes: list | None = _doc("data_mode=random: a fixed number of ids per bag for each table, one per "
                                  "entry of table_sizes (DLRMv2's multi-hot: 3-2-1-2-6-1-1-1-1-7-3-8-1-6-9-5-1-1-1-"
                                  "12-100-27-10-3-1-1); null = bag_size for every table.", default=None)
    data_format: str = _doc("data_mode=files: onehot (the MLPerf DLRM binary files, one id per table) or multihot "
                            "(python -m reference.preprocess multihot's files: bags of multihot_sizes ids per "
                            "table, MLPerf dlrm_dcnv2).", default="onehot")
    multihot_sizes: list | None = _doc("data_format=multihot: ids per bag for each table; null reads them from "
                                       "the counts file (key multihot_sizes), which they must match.", default=None)
    dense_transform: str = _doc("data_format=onehot: how the files' dense integers become the model's input: log1p "
                                "(log(x + 1), DLRM v1; negatives refused) or log3 (ln(x + 3), files made with "
                                "--semantics dcnv2, which keeps negatives). Multi-hot files store them transformed.",
                                default="log1p")
    data_dir: str | None = _doc("Folder with the binary files and the counts file.", default=None)
    train_file: str = _doc("Training split, relative to data_dir.", default="terabyte_processed_train.bin")
    eval_file: str = _doc("Evaluation split, relative to data_dir.", default="terabyte_processed_test.bin")
    counts_file: str = _doc("Table sizes (.npz with key 'counts'), relative to data_dir.",
                            default="day_fea_count.npz")
    batch_size: int = _doc("Global training batch size.", default=2048)
    eval_batch_size: int = _doc("Evaluation batch size.", default=16384)
    shuffle_batches: bool = _doc("Shuffle the order of training batches every epoch (seeded).", default=True)

    # --- run length, evaluation, stopping ---
    epochs: int = _doc("Maximum number of epochs.", default=1)
    max_steps: int = _doc("Stop after this many optimiser steps in total (0 = no limit).", default=0)
    eval_every: int = _doc("Evaluate every N iterations (0 = see eval_every_epochs).", default=0)
    eval_every_epochs: float = _doc("Evaluate every this fraction of an epoch (0 = only at epoch end).",
                                    default=0.0)
    auc_threshold: float | None = _doc("Stop at the first evaluation with AUC >= this.", default=None)
    accuracy_threshold: float | None = _doc("Stop at the first evaluation with accuracy >= this.",
                                            default=None)
    seed: int = _doc("Seed of initialisation and batch order.", default=0)
    num_threads: int = _doc("Torch intra-op threads (0 = torch's default).", default=0)
    device: str = _doc("cpu, cuda or cuda:N (the model, batches and optimiser state live there).",
                       default="cpu")
    precision: str = _doc("fp32, or bf16: the MLPs and the interaction in bf16 (autocast) with fp32 weights, "
                          "tables, loss and metrics; needs a CPU with avx512_bf16 or AMX, or a GPU.",
                          default="fp32")
    allow_tf32: bool = _doc("CUDA only: fp32 GEMMs on tensor cores in TF32 (10-bit mantissa inputs, fp32 "
                            "accumulation); the MLPs' weights, the tables and the metrics stay fp32.", default=False)
    deterministic: bool = _doc("CUDA: deterministic kernels (sparse updates without float atomics, a fixed "
                               "cuBLAS workspace), so runs of one seed and resumed runs repeat their losses bit "
                               "for bit; false allows the faster nondeterministic ones. The CPU path is "
                               "deterministic either way.", default=True)
    linear_kernel: str = _doc("GEMM kernel of the MLPs in fp32 on CPU: aten (torch's BLAS), onednn, or auto "
                              "(onednn on x86 CPUs not made by Intel, else aten; bf16 and CUDA use torch's "
                              "own).", default="auto")
    sparse_update_kernel: str = _doc("How the optimiser updates the embedding rows of a batch: torch (torch's "
                                     "sparse ops), native (C kernels compiled at start-up for this CPU; needs a C "
                                     "compiler with OpenMP, CPU tables), or auto (native where it compiles, "
                                     "else torch). The same formulas; native is the faster (benchmarks/RESULTS.md).",
                                     default="auto")
    interaction_kernel: str = _doc("How the dot interaction is computed on the CPU: torch (batched GEMMs, gather, "
                                   "scatter), native (C kernels compiled at start-up: bf16 on AMX where Linux "
                                   "grants it, else AVX512_BF16; fp32 on AVX-512; needs interaction=dot, "
                                   "device=cpu, a CPU with those, a C compiler with OpenMP), or auto (bf16: "
                                   "native where it runs, else torch; fp32: torch, its sums as before). The "
                                   "same sums in fp32 in another order (bf16: rounded once); native is the "
                                   "faster (benchmarks/RESULTS.md).",
                                   default="auto")
    prefetch_batches: int = _doc("Batches read ahead in a background thread (0 = read on the main thread; "
                                 "the results are the same).", default=2)
    log_every: int = _doc("Progress line (and loss read-out) every N iterations.", default=50)
    progress: bool = _doc("Show a tqdm progress bar on stderr.", default=True)

    # --- several processes (torchrun, mpirun, srun) ---
    dist_backend: str = _doc("auto, gloo, nccl or mpi (auto: nccl on cuda, else gloo). mpi uses torch's MPI "
                             "backend when built in, else mpi4py.", default="auto")
    dist_timeout: float = _doc("Seconds a rank waits at startup or in a collective before it exits with an "
                               "error naming the rank that stopped answering.", default=300.0)
    embedding_memory_per_rank: float | None = _doc(
        "GiB of embedding weights and optimiser state one rank may hold; tables over it are split by rows "
        "(null: the even share of the total, which balances memory).", default=None)

    # --- outputs ---
    results_dir: str = _doc("Folder for MLPerf logs and run summaries.", default="results")
    run_name: str | None = _doc("Name of the result files (default: config name, seed and time).",
                                default=None)
    checkpoint_path: str | None = _doc("Where to save the checkpoint (null = no checkpoints).", default=None)
    checkpoint_every: int = _doc("Save every N iterations (0 = only at the end of the run).", default=0)
    resume: str | None = _doc("Checkpoint to resume training from.", default=None)
    load_checkpoint: str | None = _doc("Checkpoint (ours or the original dlrm_s_pytorch.py's) to "
                                       "initialise the model from.", default=None)
    inference_only: bool = _doc("Only evaluate (the loaded) model on the eval split.", default=False)
    quantize_embeddings: int = _doc("Inference only: 8 or 4 = row-wise 8-bit or 4-bit tables (FBGEMM's quantized "
                                    "embedding bags, a scale and bias per row); 0 = fp32.", default=0)
    quantize_mlp: int = _doc("Inference only: 8 = the MLPs' linear layers in int8 (weights per output channel, "
                             "activations per sample on the fly); 0 = fp32.", default=0)
    cache_cleared: bool = _doc("The page cache was dropped before the run (run_and_time.sh sets it "
                               "under DLRM_CLEAR_CACHES=1); logged as cache_clear.", default=False)

    # --- MLPerf submission metadata ---
    submission_benchmark: str = _doc("MLPerf benchmark: dlrm (training <= 2.1) or dlrm_dcnv2 (3.0 - 6.0); "
                                     "chooses the closed division's fixed values.", default="dlrm")
    submission_org: str = _doc("Submitting organisation.", default="reference")
    submission_platform: str = _doc("System name.", default="cpu")
    submission_division: str = _doc("closed or open.", default="closed")
    submission_status: str = _doc("onprem, cloud, preview or research.", default="onprem")

    # Where values came from, for error messages; not a configuration key.
    source: dict = field(default_factory=dict, repr=False, compare=False, metadata={"internal": True})
    name: str = field(default="default", compare=False, metadata={"internal": True})
    _frozen: bool = field(default=False, init=False, repr=False, compare=False, metadata={"internal": True})

    def __setattr__(self, key: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise FrozenConfigError(f"the configuration is validated and frozen; {key} cannot change "
                                    f"(Config.replace makes a new one)")
        object.__setattr__(self, key, value)

    # ------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]

    @classmethod
    def from_sources(cls, path: str | None = None, overrides: list[str] | None = None) -> Config:
        """Build from a YAML file and ``key=value`` strings, then validate."""
        cfg = cls()
        if path is not None:
            cfg.name = os.path.splitext(os.path.basename(path))[0]
            cfg.update(_read_yaml(path), origin=path)
        return cfg._overridden(overrides)

    @classmethod
    def from_values(cls, values: dict, origin: str, overrides: list[str] | None = None) -> Config:
        """Build from a dictionary (a checkpoint's saved config) and ``key=value`` strings, then validate."""
        cfg = cls()
        cfg.update(values, origin=origin)
        return cfg._overridden(overrides)

    def _overridden(self, overrides: list[str] | None) -> Config:
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"command line: expected key=value, got {item!r}")
            key, text = item.split("=", 1)
            self.update({key.strip(): yaml.safe_load(text) if text.strip() else None}, origin="command line")
        return self.validate()

    def update(self, values: dict, origin: str) -> None:
        hints = get_type_hints(type(self))
        known = {f.name for f in self.keys()}
        for key, value in values.items():
            if key not in known:
                close = [k for k in sorted(known) if k.split("_")[0] == str(key).split("_")[0]]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"{origin}: unknown key {key!r}{hint}; "
                                  f"`python -m reference.train --help` lists every key")
            setattr(self, key, _coerce(key, value, hints[key], origin))
            self.source[key] = origin

    def replace(self, origin: str, **values: Any) -> Config:
        """A new validated config: this one with ``values`` (recorded as coming from ``origin``)."""
        new = dataclasses.replace(self, source=dict(self.source))
        new.update(values, origin=origin)
        return new.validate()

    def where(self, key: str) -> str:
        return self.source.get(key, "default")

    def _fail(self, key: str, message: str) -> NoReturn:
        raise ConfigError(f"{self.where(key)}: {key}: {message}")

    def validate(self) -> Config:
        positive = ["embedding_dim", "batch_size", "eval_batch_size", "epochs", "log_every", "random_train_batches",
                    "random_eval_batches", "bag_size",
                    "dcn_num_layers", "dcn_low_rank_dim"]
        non_negative = ["warmup_steps", "decay_start_step", "decay_steps", "max_ind_range", "eval_every",
                        "num_threads", "checkpoint_every", "seed", "max_steps", "prefetch_batches"]
        for key in positive:
            if getattr(self, key) <= 0:
                self._fail(key, f"must be > 0, got {getattr(self, key)}")
        for key in non_negative:
            if getattr(self, key) < 0:
                self._fail(key, f"must be >= 0, got {getattr(self, key)}")
        for key, allowed in (("interaction", INTERACTIONS), ("optimizer", OPTIMIZERS), ("qr_operation", QR_OPERATIONS),
                             ("dist_backend", DIST_BACKENDS), ("precision", PRECISIONS),
                             ("linear_kernel", LINEAR_KERNELS), ("sparse_update_kernel", SPARSE_UPDATE_KERNELS),
                             ("interaction_kernel", INTERACTION_KERNELS),
                             ("data_mode", DATA_MODES),
                             ("submission_division", DIVISIONS), ("submission_status", STATUSES),
                             ("mlp_init", MLP_INITS), ("submission_benchmark", BENCHMARKS)):
            if getattr(self, key) not in allowed:
                self._fail(key, f"must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            self._fail("learning_rate", f"must be a finite number > 0, got {self.learning_rate}")
        if not self.adagrad_eps > 0:
            self._fail("adagrad_eps", f"must be > 0, got {self.adagrad_eps}")
        if self.adagrad_lr_decay < 0:
            self._fail("adagrad_lr_decay", f"must be >= 0, got {self.adagrad_lr_decay}")
        if not (self.dist_timeout > 0 and math.isfinite(self.dist_timeout)):
            self._fail("dist_timeout", f"must be a finite number of seconds > 0, got {self.dist_timeout}")
        if self.embedding_memory_per_rank is not None and not self.embedding_memory_per_rank > 0:
            self._fail("embedding_memory_per_rank", f"must be > 0 GiB (or null), got {self.embedding_memory_per_rank}")
        if self.decay_power <= 0:
            self._fail("decay_power", f"must be > 0, got {self.decay_power}")
        if self.decay_steps > 0 and self.decay_start_step < self.warmup_steps:
            self._fail("decay_start_step", f"must not come before the end of warmup "
                                           f"(warmup_steps={self.warmup_steps}), got {self.decay_start_step}")
        for key in ("bottom_mlp", "top_mlp"):
            widths = getattr(self, key)
            if len(widths) < 2 or any(w <= 0 for w in widths):
                self._fail(key, f"needs at least two widths, all > 0, got {_dashes(widths)}")
        if self.top_mlp[-1] != 1:
            self._fail("top_mlp", f"must end in 1 (one click logit), got {_dashes(self.top_mlp)}")
        if self.interaction in ("dot", "sum") and self.bottom_mlp[-1] != self.embedding_dim:
            self._fail("bottom_mlp", f"must end in embedding_dim={self.embedding_dim} for interaction "
                                     f"{self.interaction!r}, got {_dashes(self.bottom_mlp)}")
        if self.table_sizes is not None:
            if not self.table_sizes or any(n <= 0 for n in self.table_sizes):
                self._fail("table_sizes", "must be a non-empty list of positive row counts")
        self._validate_embedding_tricks()
        self._validate_data_mode()
        if self.eval_every_epochs < 0 or self.eval_every_epochs > 1:
            self._fail("eval_every_epochs", f"must be in [0, 1], got {self.eval_every_epochs}")
        if self.eval_every and self.eval_every_epochs:
            self._fail("eval_every", "set either eval_every or eval_every_epochs, not both")
        if self.auc_threshold is not None and not 0 < self.auc_threshold <= 1:
            self._fail("auc_threshold", f"must be in (0, 1], got {self.auc_threshold}")
        if self.accuracy_threshold is not None and not 0 < self.accuracy_threshold <= 1:
            self._fail("accuracy_threshold", f"must be in (0, 1], got {self.accuracy_threshold}")
        if self.submission_division == "closed":
            self._validate_closed_division()
        if self.linear_kernel == "onednn" and (self.precision != "fp32" or self.device != "cpu"):
            self._fail("linear_kernel", f"onednn is a kernel for fp32 on CPU; with precision={self.precision} "
                                        f"on {self.device} the MLPs use torch's own GEMMs (leave linear_kernel "
                                        f"at auto)")
        if self.sparse_update_kernel == "native" and self.device != "cpu":
            self._fail("sparse_update_kernel", f"native kernels update CPU tables; the tables are on "
                                               f"{self.device} (leave sparse_update_kernel at auto)")
        if self.interaction_kernel == "native" and (self.interaction, self.device) != ("dot", "cpu"):
            self._fail("interaction_kernel", f"native computes the dot interaction on the CPU; this run has "
                                             f"interaction={self.interaction}, device={self.device} (leave "
                                             f"interaction_kernel at auto)")
        if self.allow_tf32 and not self.device.startswith("cuda"):
            self._fail("allow_tf32", f"TF32 is a GPU mode (tensor cores); device is {self.device!r}")
        if self.device != "cpu":
            import torch  # only where a GPU is asked for: config stays cheap to import

            if not (self.device == "cuda" or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
                self._fail("device", f"must be cpu, cuda or cuda:N, got {self.device!r}")
            if not torch.cuda.is_available():
                self._fail("device", f"{self.device!r} asked for, but torch sees no CUDA device "
                                     f"(torch {torch.__version__})")
        if self.inference_only and self.load_checkpoint is None and self.resume is None:
            self._fail("inference_only", "needs load_checkpoint (or resume) to name the model to evaluate")
        for key, bits in (("quantize_embeddings", QUANTIZE_EMBEDDING_BITS), ("quantize_mlp", QUANTIZE_MLP_BITS)):
            if getattr(self, key) not in bits:
                self._fail(key, f"must be one of {', '.join(map(str, bits))} (bits; 0 = off), "
                                f"got {getattr(self, key)}")
            if getattr(self, key) and not self.inference_only:
                self._fail(key, "quantization is for inference: set inference_only=true (--inference-only) and "
                                "load_checkpoint")
            if getattr(self, key) and self.device != "cpu":
                self._fail(key, f"the quantized kernels run on the CPU; device is {self.device!r}")
        if self.quantize_embeddings and (self.qr_threshold > 0 or self.md_temperature > 0):
            self._fail("quantize_embeddings", "quantizes ordinary tables; this config has QR or MD tables "
                                              "(qr_threshold / md_temperature)")
        if self.quantize_embeddings == 4 and self.embedding_dim % 2:
            self._fail("quantize_embeddings", f"4-bit rows pack two values per byte: embedding_dim must be even, "
                                              f"got {self.embedding_dim}")
        object.__setattr__(self, "_frozen", True)
        return self

    def _validate_closed_division(self) -> None:
        """The values each benchmark's closed division fixes (REFERENCE.md, REFERENCE-DCNV2.md)."""
        bench = f"submission_benchmark={self.submission_benchmark}"
        if self.submission_benchmark == "dlrm":
            if self.optimizer != "sgd":
                self._fail("optimizer", f"the closed division requires sgd for {bench}, got {self.optimizer!r} "
                                        f"(set submission_division=open)")
            if self.decay_power != 2:
                self._fail("decay_power", f"the closed division requires 2 for {bench}, got {self.decay_power}")
            return
        fixed: dict[str, Any] = {"interaction": "dcn", "optimizer": "adagrad", "adagrad_eps": 1e-8,
                                 "adagrad_lr_decay": 0.0, "warmup_steps": 0, "decay_start_step": 0, "decay_steps": 0}
        for key, value in fixed.items():
            if getattr(self, key) != value:
                self._fail(key, f"the closed division of {bench} requires {value!r} (the reference's fixed "
                                f"value), got {getattr(self, key)!r} (set submission_division=open)")

    def _validate_embedding_tricks(self) -> None:
        """QR and MD tables: their keys, one of them at a time, one process, the open division."""
        if self.qr_threshold < 0:
            self._fail("qr_threshold", f"must be >= 0 (0 = off), got {self.qr_threshold}")
        if self.qr_collisions < 2:
            self._fail("qr_collisions", f"must be >= 2 (remainder rows; 1 would not shrink a table), "
                                        f"got {self.qr_collisions}")
        if not (self.md_temperature >= 0 and math.isfinite(self.md_temperature)):
            self._fail("md_temperature", f"must be a finite number >= 0 (0 = off), got {self.md_temperature}")
        if self.md_threshold < 0:
            self._fail("md_threshold", f"must be >= 0, got {self.md_threshold}")
        qr, md = self.qr_threshold > 0, self.md_temperature > 0
        if qr and md:
            self._fail("md_temperature", f"quotient-remainder (qr_threshold={self.qr_threshold}) and mixed-dimension "
                                         f"tables (md_temperature={self.md_temperature}) do not combine; set one "
                                         f"of them to 0")
        if not (qr or md):
            return
        key = "qr_threshold" if qr else "md_temperature"
        if qr and self.qr_operation == "concat" and self.embedding_dim % 2:
            self._fail("qr_operation", f"concat splits embedding_dim in two halves: needs an even embedding_dim, "
                                       f"got {self.embedding_dim}")
        if self.submission_division == "closed":
            self._fail(key, "QR and MD tables change the reference model, which the closed division forbids "
                            "(set submission_division=open)")

    def _validate_data_mode(self) -> None:
        """Random batches: their shape comes from the config, and they are no MLPerf dataset."""
        for key, allowed in (("data_format", DATA_FORMATS), ("dense_transform", DENSE_TRANSFORMS)):
            if getattr(self, key) not in allowed:
                self._fail(key, f"must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        multihot = self.data_format == "multihot"
        if self.multihot_sizes is not None and not multihot:
            self._fail("multihot_sizes", f"bag lengths of multi-hot files: set data_format=multihot "
                                         f"(data_format is {self.data_format!r})")
        if self.multihot_sizes is not None and (not self.multihot_sizes or min(self.multihot_sizes) < 1):
            self._fail("multihot_sizes", f"must list bag lengths >= 1, one per table, got {self.multihot_sizes}")
        if multihot and self.dense_transform != "log1p":
            self._fail("dense_transform", "multi-hot files store the dense features transformed (as they were made: "
                                          "--semantics); dense_transform is for data_format=onehot")
        if multihot and self.data_mode == "random":
            self._fail("data_format", "data_mode=random draws its batches (bag_size sets their bags); "
                                      "data_format=multihot reads files")
        if multihot and (self.qr_threshold > 0 or self.md_temperature > 0):
            self._fail("data_format", "multi-hot bags go to ordinary tables only for now (qr_threshold=0, "
                                      "md_temperature=0)")
        if self.bag_size > 1 and self.data_mode != "random":
            self._fail("bag_size", f"the binary files hold one id per table; bags of {self.bag_size} ids come "
                                   f"from data_mode=random (multi-hot files carry their own: data_format=multihot)")
        if self.bag_sizes is not None and self.data_mode != "random":
            self._fail("bag_sizes", "per-table bags are drawn by data_mode=random (data files carry their own)")
        for key in ("bag_size", "bag_sizes"):
            if getattr(self, key) not in (1, None) and (self.qr_threshold > 0 or self.md_temperature > 0):
                self._fail(key, "bags of several ids go to ordinary tables only for now (qr_threshold=0, "
                                "md_temperature=0)")
        if self.data_mode != "random":
            return
        if self.table_sizes is None:
            self._fail("table_sizes", "data_mode=random draws ids for the tables listed here (no counts file "
                                      "is read): set it, e.g. table_sizes=100000-100000-100000")
        if self.bag_sizes is not None:
            if len(self.bag_sizes) != len(self.table_sizes) or any(k <= 0 for k in self.bag_sizes):
                self._fail("bag_sizes", f"needs one count > 0 for each of the {len(self.table_sizes)} tables, "
                                        f"got {_dashes(self.bag_sizes)}")
            if self.bag_size != 1 or self.bag_size_fixed:
                self._fail("bag_sizes", "fixes every table's bag size: leave bag_size and bag_size_fixed unset")
        for key in ("auc_threshold", "accuracy_threshold"):
            if getattr(self, key) is not None:
                self._fail(key, f"data_mode=random has coin-flip labels (AUC ~0.5 by construction), so no "
                                f"target is reachable: set {key}=null")
        if self.submission_division == "closed":
            self._fail("data_mode", "random data is not the MLPerf dataset, which the closed division requires "
                                    "(set submission_division=open)")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in self.keys()}


def _dashes(widths: list) -> str:
    return "-".join(str(w) for w in widths)


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def _coerce(key: str, value: Any, hint: Any, origin: str) -> Any:
    """Check ``value`` against the field's type; ints are accepted for floats,
    'a-b-c' strings for integer lists (the seed's MLP notation)."""
    # `X | None` (types.UnionType) as the fields spell it; typing.Union as older code might.
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    base = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{origin}: {key}: must not be null")
    where = f"{origin}: {key}"
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-8 (no dot before the e) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if base is list:
        if isinstance(value, str):
            parts = value.replace(",", "-").split("-")
            try:
                return [int(p) for p in parts]
            except ValueError:
                raise ConfigError(f"{where}: expected integers like 13-512-256, got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
        raise ConfigError(f"{where}: expected a list of integers, got {value!r}")
    raise TypeError(f"unsupported config type {hint} for {key}")  # programming error


def help_text() -> str:
    lines = ["Configuration keys (set in the YAML file or as key=value on the command line):"]
    for f in Config.keys():
        default = f.default_factory() if callable(f.default_factory) else f.default
        if isinstance(default, list):
            default = _dashes(default)
        lines.append(f"  {f.name:<22} {f.metadata['doc']} [default: {default}]")
    return "\n".join(lines)
