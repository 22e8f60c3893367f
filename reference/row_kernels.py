"""Native kernels for the embedding tables on the CPU (row_kernels.c): the
lookup of one id per table, and the optimisers' updates of the rows a batch
names.

An embedding table's gradient is sparse: one row of ``dim`` values per id in
the batch (53,248 rows for the MLPerf batch of 2048 over 26 tables, 438,272
with DLRMv2's bags). torch applies it with general sparse ops that make
several passes over those rows (coalescing, masks, index copies) and, for
SGD, update them one BLAS call per row. The kernels read each gradient row
once, update its table row in place, prefetch the table rows ahead of use
(they are scattered over gigabytes), and run in torch's own OpenMP thread
pool. The lookup gathers the rows the same way, straight into the layout and
dtype its consumer computes in, and the updates read their gradient where
the backward pass left it, fp32 or bf16, a slice of a larger stack or not
(reference/embeddings.py), so neither is copied or cast on the way. Measured
within one run each (benchmarks/RESULTS.md): the updates alone took the bf16
step of the MLPerf architecture to 0.93x of torch's ops (SGD) and 0.90x
(row-wise Adagrad), the lookup then to 0.91-0.92x and 0.92-0.94x of that;
a DLRMv2 fp32 step (Adagrad) is 0.45x of torch's.

The library is compiled when a run starts, for this CPU (reference/native_build.py);
without a C compiler, ``sparse_update_kernel=auto`` keeps torch's ops.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from .config import SPARSE_UPDATE_KERNELS
from .native_build import NativeKernelError, compiler, load_library

SOURCE = Path(__file__).with_name("row_kernels.c")

_P, _I64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_VECTORS = [_P, _I64, _I64, _I64, _INT]  # base, per_sample, sample_stride, dim, bf16 (row_kernels.c)
_SIGNATURES = {
    "gather_rows": [_P, _P, _I64, *_VECTORS, _INT],
    "sgd_rows": [_P, _P, _I64, *_VECTORS, _F32, _INT],
    "rowwise_adagrad_rows": [_P, _P, _P, _P, _I64, *_VECTORS, _F32, _F32, _INT],
    "adagrad_rows": [_P, _P, _P, _P, _I64, *_VECTORS, _F32, _F32, _INT],
}
VECTOR_DTYPES = (torch.float32, torch.bfloat16)


class NativeRowKernels:
    """The compiled kernels: the lookup of a fp32 CPU table's rows, and each
    optimiser's update of the rows named by ids, duplicates included, from one
    gradient vector per id."""

    def __init__(self, library: ctypes.CDLL):
        self._lib = library
        for name, argtypes in _SIGNATURES.items():
            getattr(library, name).argtypes = argtypes
            getattr(library, name).restype = None

    @staticmethod
    def _table(weight: torch.Tensor, *state: torch.Tensor) -> None:
        if not (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2
                and weight.is_contiguous()):
            raise ValueError(f"native row kernels read and update contiguous 2-D fp32 CPU tables, got {weight.dtype} "
                             f"{tuple(weight.shape)} on {weight.device}")
        for s in state:
            if not (s.dtype == torch.float32 and s.is_contiguous() and s.shape[0] == weight.shape[0]):
                raise ValueError(f"optimiser state {s.dtype} {tuple(s.shape)} does not match the table "
                                 f"{tuple(weight.shape)}")

    @staticmethod
    def _rows(weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The row ids, flat and checked against the table: a row outside it would be read or written outside it."""
        if rows.dtype != torch.int64 or rows.device.type != "cpu":
            raise ValueError(f"row ids must be int64 on the CPU, got {rows.dtype} on {rows.device}")
        rows = rows.reshape(-1).contiguous()
        if rows.numel() and not 0 <= int(rows.min()) <= int(rows.max()) < weight.shape[0]:
            raise IndexError(f"row ids outside the table's {weight.shape[0]} rows")
        return rows

    @staticmethod
    def _layout(vectors: torch.Tensor, n: int, dim: int) -> tuple[int, int] | None:
        """(vectors per sample, sample stride) of ``n`` vectors of ``dim`` values laid
        out as the kernels read and write them (row_kernels.c): (n, dim) contiguous,
        or a (B, T, dim) view whose T vectors of a sample are contiguous and whose
        samples do not overlap (a slice of a larger stack); else None."""
        if vectors.dim() == 2 and vectors.shape == (n, dim) and vectors.is_contiguous():
            return 1, dim
        if (vectors.dim() == 3 and vectors.shape[0] * vectors.shape[1] == n and vectors.shape[2] == dim
                and vectors.stride()[1:] == (dim, 1) and vectors.stride(0) >= vectors.shape[1] * dim):
            return vectors.shape[1], vectors.stride(0)
        return None

    def _vectors(self, vectors: torch.Tensor, n: int, dim: int, copy: bool = False) -> tuple:
        """The kernels' arguments for ``vectors``; in another layout they are copied
        (``copy``: they are only read) or refused."""
        if vectors.dtype not in VECTOR_DTYPES or vectors.device.type != "cpu":
            raise ValueError(f"vectors must be fp32 or bf16 on the CPU, got {vectors.dtype} on {vectors.device}")
        if n >= 2**32:
            raise ValueError(f"{n} vectors: the kernels index fewer than 2**32")
        layout = self._layout(vectors, n, dim)
        if layout is None and copy:
            vectors = vectors.contiguous()
            layout = self._layout(vectors, n, dim)
        if layout is None:
            raise ValueError(f"expected {n} vectors of {dim} values, (n, dim) contiguous or (B, T, dim) with each "
                             f"sample's vectors contiguous; got shape {tuple(vectors.shape)}, "
                             f"strides {vectors.stride()}")
        return vectors.data_ptr(), *layout, dim, int(vectors.dtype == torch.bfloat16)

    def gather(self, weight: torch.Tensor, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out[b, t] = weight[rows[b, t]], cast to out's dtype (fp32, or bf16 rounded as torch rounds);
        ``out`` may be a slice of a larger stack (see :meth:`_vectors`). Returns ``out``."""
        self._table(weight)
        flat = self._rows(weight, rows)
        self._lib.gather_rows(weight.data_ptr(), flat.data_ptr(), flat.numel(),
                              *self._vectors(out, flat.numel(), weight.shape[1]), torch.get_num_threads())
        return out

    def sgd(self, weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        """weight[rows[i]] -= lr * grad[i], duplicates applied one after the other in batch order."""
        self._table(weight)
        rows = self._rows(weight, rows)
        self._lib.sgd_rows(weight.data_ptr(), rows.data_ptr(), rows.numel(),
                           *self._vectors(grad, rows.numel(), weight.shape[1], copy=True), -lr, torch.get_num_threads())

    def rowwise_adagrad(self, weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, acc: torch.Tensor,
                        lr: float, eps: float) -> None:
        """Row-wise Adagrad (optim.RowWiseAdagrad) on the summed gradient of each row present."""
        self._table(weight, acc)
        self._runs("rowwise_adagrad_rows", weight, acc, rows, grad, lr, eps)

    def adagrad(self, weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, state_sum: torch.Tensor,
                lr: float, eps: float) -> None:
        """torch's sparse Adagrad on the summed gradient of each row present (``lr``: after lr_decay)."""
        if state_sum.shape != weight.shape:
            raise ValueError(f"Adagrad state {tuple(state_sum.shape)} does not match the table {tuple(weight.shape)}")
        self._table(weight, state_sum)
        self._runs("adagrad_rows", weight, state_sum, rows, grad, lr, eps)

    def _runs(self, name: str, weight: torch.Tensor, state: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
              lr: float, eps: float) -> None:
        rows = self._rows(weight, rows)
        # Stable: each row's gradients are summed in batch order, so the sums do not depend on the threads.
        sorted_rows, order = torch.sort(rows, stable=True)
        getattr(self._lib, name)(weight.data_ptr(), state.data_ptr(), sorted_rows.data_ptr(), order.data_ptr(),
                                 rows.numel(), *self._vectors(grad, rows.numel(), weight.shape[1], copy=True), lr, eps,
                                 torch.get_num_threads())


def sparse_rows(grad: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The row ids and values of a sparse gradient of ``weight`` (one sparse dimension), as the kernels take them."""
    if not (grad.is_sparse and grad.sparse_dim() == 1 and grad.shape == weight.shape):
        raise ValueError(f"expected a sparse gradient of the table's shape {tuple(weight.shape)} with one sparse "
                         f"dimension, got {grad.layout} {grad.dtype} {tuple(grad.shape)}")
    return grad._indices()[0], grad._values().contiguous()


@functools.cache
def native_row_kernels() -> NativeRowKernels:
    """Compiles and loads the kernels once per process; raises NativeKernelError where they cannot be."""
    return NativeRowKernels(load_library(SOURCE))


def resolve_sparse_update_kernel(kind: str, device: torch.device | str) -> tuple[str, str]:
    """The kernel for this run's sparse updates (``sparse_update_kernel``; auto
    resolved here) and why. ``native`` that cannot be built raises NativeKernelError."""
    if kind not in SPARSE_UPDATE_KERNELS:
        raise ValueError(f"unknown sparse update kernel {kind!r}: expected {', '.join(SPARSE_UPDATE_KERNELS)}")
    device_type = torch.device(device).type
    if kind == "torch":
        return "torch", "set by sparse_update_kernel"
    if device_type != "cpu":
        if kind == "native":
            raise NativeKernelError(f"the native row kernels update CPU tables; the tables are on {device_type}")
        return "torch", f"tables on {device_type}: torch's ops"
    if kind == "native":
        native_row_kernels()
        return "native", "set by sparse_update_kernel"
    try:
        native_row_kernels()
    except NativeKernelError as e:
        return "torch", f"auto: no native kernels here: {str(e).splitlines()[0]}"
    return "native", f"auto: compiled here with {compiler()}"
