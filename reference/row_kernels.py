"""Native kernels for the optimisers' updates of embedding rows (row_kernels.c).

An embedding table's gradient is sparse: one row of ``dim`` values per id in
the batch (53,248 rows for the MLPerf batch of 2048 over 26 tables, 438,272
with DLRMv2's bags). torch applies it with general sparse ops that make
several passes over those rows (coalescing, masks, index copies) and, for
SGD, update them one BLAS call per row. The kernels read each gradient row
once, update its table row in place, prefetch the table rows ahead of use
(they are scattered over gigabytes), and run in torch's own OpenMP thread
pool. Beside torch's ops in one run (benchmarks/RESULTS.md): the bf16 step of
the MLPerf architecture 0.93x (SGD) and 0.90x (row-wise Adagrad), a DLRMv2
fp32 step (Adagrad) 0.45x.

The library is compiled when a run starts (well under a second), for this
CPU (``-march=native``), into a temporary folder that is removed once it is
loaded: nothing is cached, so nothing compiled for one machine is loaded on
another. It needs a C compiler with OpenMP (``$CC``, else ``cc``); without
one, ``sparse_update_kernel=auto`` keeps torch's ops.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .config import SPARSE_UPDATE_KERNELS

SOURCE = Path(__file__).with_name("row_kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC"]

_P, _I64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SIGNATURES = {
    "sgd_rows": [_P, _I64, _P, _P, _I64, _F32, _INT],
    "rowwise_adagrad_rows": [_P, _P, _I64, _P, _P, _P, _I64, _F32, _F32, _INT],
    "adagrad_rows": [_P, _P, _I64, _P, _P, _P, _I64, _F32, _F32, _INT],
}


class NativeKernelError(RuntimeError):
    """The native kernels could not be built or loaded here."""


def compiler() -> str:
    return os.environ.get("CC") or "cc"


def _build(folder: str) -> str:
    cc = compiler()
    if shutil.which(cc) is None:
        raise NativeKernelError(f"no C compiler: {cc!r} is not on PATH (set CC to one with OpenMP, e.g. gcc)")
    library = os.path.join(folder, "row_kernels.so")
    try:
        done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", library], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise NativeKernelError(f"{cc} took over 120 s to compile {SOURCE}") from None
    except OSError as e:  # found, but the system cannot run it (not a program for this machine)
        raise NativeKernelError(f"could not run the C compiler {cc!r}: {e}") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["(no message)"]
        first_error = next((line for line in lines if "error" in line), lines[0])
        raise NativeKernelError(f"{cc} failed to compile {SOURCE.name} (exit {done.returncode}): {first_error}\n"
                                f"{cc} {' '.join(FLAGS)} {SOURCE}:\n" + "\n".join(lines))
    return library


class NativeRowKernels:
    """The compiled kernels, each applying one optimiser's update to the rows
    of a fp32 CPU table named by a sparse gradient, duplicates included."""

    def __init__(self, library: ctypes.CDLL):
        self._lib = library
        for name, argtypes in _SIGNATURES.items():
            getattr(library, name).argtypes = argtypes
            getattr(library, name).restype = None

    @staticmethod
    def _rows(weight: torch.Tensor, grad: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient's row ids and values, checked against the table: a wrong
        pointer or stride here would write outside it."""
        if not (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2
                and weight.is_contiguous()):
            raise ValueError(f"native row kernels update contiguous 2-D fp32 CPU tables, got {weight.dtype} "
                             f"{tuple(weight.shape)} on {weight.device}")
        if not (grad.is_sparse and grad.sparse_dim() == 1 and grad.shape == weight.shape
                and grad.dtype == torch.float32):
            raise ValueError(f"expected a sparse fp32 gradient of the table's shape {tuple(weight.shape)} with one "
                             f"sparse dimension, got {grad.layout} {grad.dtype} {tuple(grad.shape)}")
        for s in state:
            if not (s.dtype == torch.float32 and s.is_contiguous() and s.shape[0] == weight.shape[0]):
                raise ValueError(f"optimiser state {s.dtype} {tuple(s.shape)} does not match the table "
                                 f"{tuple(weight.shape)}")
        rows = grad._indices()[0].contiguous()
        values = grad._values().contiguous()
        if rows.numel() and not 0 <= int(rows.min()) <= int(rows.max()) < weight.shape[0]:
            raise IndexError(f"gradient rows outside the table's {weight.shape[0]} rows")
        return rows, values

    def sgd(self, weight: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        """weight -= lr * grad, duplicates applied one after the other in batch order."""
        rows, values = self._rows(weight, grad)
        self._lib.sgd_rows(weight.data_ptr(), weight.shape[1], rows.data_ptr(), values.data_ptr(), rows.numel(),
                           -lr, torch.get_num_threads())

    def rowwise_adagrad(self, weight: torch.Tensor, grad: torch.Tensor, acc: torch.Tensor, lr: float,
                        eps: float) -> None:
        """Row-wise Adagrad (optim.RowWiseAdagrad) on the summed gradient of each row present."""
        rows, values = self._rows(weight, grad, acc)
        self._runs("rowwise_adagrad_rows", weight, acc, rows, values, lr, eps)

    def adagrad(self, weight: torch.Tensor, grad: torch.Tensor, state_sum: torch.Tensor, lr: float,
                eps: float) -> None:
        """torch's sparse Adagrad on the summed gradient of each row present (``lr``: after lr_decay)."""
        if state_sum.shape != weight.shape:
            raise ValueError(f"Adagrad state {tuple(state_sum.shape)} does not match the table {tuple(weight.shape)}")
        rows, values = self._rows(weight, grad, state_sum)
        self._runs("adagrad_rows", weight, state_sum, rows, values, lr, eps)

    def _runs(self, name: str, weight: torch.Tensor, state: torch.Tensor, rows: torch.Tensor, values: torch.Tensor,
              lr: float, eps: float) -> None:
        # Stable: each row's gradients are summed in batch order, so the sums do not depend on the threads.
        sorted_rows, order = torch.sort(rows, stable=True)
        getattr(self._lib, name)(weight.data_ptr(), state.data_ptr(), weight.shape[1], sorted_rows.data_ptr(),
                                 order.data_ptr(), values.data_ptr(), rows.numel(), lr, eps, torch.get_num_threads())


@functools.cache
def native_row_kernels() -> NativeRowKernels:
    """Compiles and loads the kernels once per process; raises NativeKernelError where they cannot be."""
    with tempfile.TemporaryDirectory(prefix="dlrm-row-kernels-") as folder:
        library = _build(folder)
        try:
            # Loaded after torch: the libgomp.so.1 it needs is the one torch has loaded (see row_kernels.c).
            loaded = ctypes.CDLL(library)
        except OSError as e:
            raise NativeKernelError(f"compiled {SOURCE.name} but could not load it: {e}") from None
    return NativeRowKernels(loaded)


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
