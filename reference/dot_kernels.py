"""Native kernels for the dot interaction in bf16 on CPUs with AMX (dot_kernels.c).

torch computes the interaction as a batched GEMM of each sample's 27 x 128
stack with itself (a 27 x 27 Gram matrix, of which the 351 entries below
the diagonal are kept), a gather and a concatenation; its backward scatters
the output's gradient into a zero 27 x 27 matrix and runs another batched
GEMM. Matrices this small keep the GEMM kernels far from their speed, and
each pass writes a buffer that the next reads back from memory: in the
MLPerf bf16 step the interaction took about 7 of 46 ms. The kernels compute
a sample in one pass while its vectors are in the cache, on AMX's tile
units: only the Gram matrix's blocks on and below the diagonal, its selected
entries straight into the top MLP's input, and in the backward the vectors'
gradient S V from the symmetric matrix S of the output's gradient, with the
bottom output's own gradient added before rounding. Measured in the training
step (benchmarks/RESULTS.md, three runs): 1.6-2.4 ms less with SGD, 1.5-2.4
ms with row-wise Adagrad. In bf16, AVX-512 kernels without AMX were slower
than torch's GEMMs (which run on AMX); in fp32 they took the step to 0.97x,
not kept so far (it would change the default fp32 run's sums). So other
CPUs, fp32 and GPUs keep torch's ops.

Compiled at start-up for this CPU (reference/native_build.py); where the
CPU has no AMX, or Linux does not grant it, ``interaction_kernel=auto``
keeps torch's ops and says why.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from .config import INTERACTION_KERNELS
from .cpuinfo import cpu_info
from .native_build import NativeKernelError, compiler, load_library

SOURCE = Path(__file__).with_name("dot_kernels.c")

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "dot_forward_scratch": ([_I64, _I64], _I64),
    "dot_backward_scratch": ([_I64, _I64], _I64),
    "dot_forward": ([_P, _I64, _I64, _I64, _INT, _P, _P, _INT], None),
    "dot_backward": ([_P, _P, _I64, _I64, _I64, _INT, _P, _P, _INT], None),
}


class NativeDotKernels:
    """The compiled dot interaction: bf16 CPU tensors, where :attr:`available` (else :attr:`why_not`)."""

    def __init__(self, library: ctypes.CDLL):
        self._lib = library
        library.dot_compiled.restype = _INT
        if not library.dot_compiled():
            self.available, self.why_not = False, (
                f"the C compiler ({compiler()}) cannot target this CPU's AMX (gcc 11 and clang 12 can)"
                if {"amx_tile", "amx_bf16"} <= cpu_info().flags else "no AMX (amx_tile, amx_bf16) on this CPU")
            return
        library.dot_init.restype = _INT
        if not library.dot_init():
            self.available, self.why_not = False, ("Linux did not grant AMX's tile state (it needs Linux 5.16 or "
                                                   "later, with AMX enabled)")
            return
        for name, (argtypes, restype) in _SIGNATURES.items():
            getattr(library, name).argtypes = argtypes
            getattr(library, name).restype = restype
        self.available, self.why_not = True, ""

    def _check(self, vectors: torch.Tensor) -> None:
        if not self.available:
            raise NativeKernelError(f"the native dot interaction cannot run here: {self.why_not}")
        if vectors.dtype != torch.bfloat16 or vectors.device.type != "cpu":
            raise ValueError(f"the native dot interaction computes bf16 CPU tensors, got {vectors.dtype} on "
                             f"{vectors.device}")
        if vectors.dim() != 3 or not vectors.is_contiguous():
            raise ValueError(f"expected a contiguous (batch, vectors, dim) stack, got shape {tuple(vectors.shape)}, "
                             f"strides {vectors.stride()}")

    @staticmethod
    def width(n: int, dim: int, self_interaction: bool) -> int:
        """The output's width: vector 0, then one value per pair."""
        return dim + n * (n - 1) // 2 + (n if self_interaction else 0)

    def _scratch(self, name: str, n: int, dim: int, threads: int) -> torch.Tensor:
        return torch.empty(threads * getattr(self._lib, name)(n, dim), dtype=torch.int32)

    def forward(self, vectors: torch.Tensor, self_interaction: bool) -> torch.Tensor:
        """[vectors[:, 0], the dot products of the pairs (i, j), j < i (j <= i with
        ``self_interaction``), row-major], (B, :meth:`width`), bf16."""
        self._check(vectors)
        batch, n, dim = vectors.shape
        out = vectors.new_empty(batch, self.width(n, dim, self_interaction))
        threads = torch.get_num_threads()
        scratch = self._scratch("dot_forward_scratch", n, dim, threads)
        self._lib.dot_forward(vectors.data_ptr(), batch, n, dim, int(self_interaction), out.data_ptr(),
                              scratch.data_ptr(), threads)
        return out

    def backward(self, vectors: torch.Tensor, grad: torch.Tensor, self_interaction: bool) -> torch.Tensor:
        """The gradient of :meth:`forward`'s output with respect to the stack, given the output's
        gradient ``grad`` (cast to bf16), (B, n, dim)."""
        self._check(vectors)
        batch, n, dim = vectors.shape
        if grad.shape != (batch, self.width(n, dim, self_interaction)):
            raise ValueError(f"expected the output's gradient of shape {(batch, self.width(n, dim, self_interaction))}"
                             f", got {tuple(grad.shape)}")
        grad = grad.to(torch.bfloat16).contiguous()
        out = torch.empty_like(vectors)
        threads = torch.get_num_threads()
        scratch = self._scratch("dot_backward_scratch", n, dim, threads)
        self._lib.dot_backward(vectors.data_ptr(), grad.data_ptr(), batch, n, dim, int(self_interaction),
                               out.data_ptr(), scratch.data_ptr(), threads)
        return out


@functools.cache
def native_dot_kernels() -> NativeDotKernels:
    """Compiles and loads the kernels once per process; raises NativeKernelError where they cannot be built."""
    return NativeDotKernels(load_library(SOURCE))


def resolve_interaction_kernel(kind: str, interaction: str, device: torch.device | str,
                               precision: str) -> tuple[str, str]:
    """The dot interaction's kernel for this run (``interaction_kernel``; auto resolved
    here) and why. ``native`` that cannot run here raises NativeKernelError."""
    if kind not in INTERACTION_KERNELS:
        raise ValueError(f"unknown interaction kernel {kind!r}: expected {', '.join(INTERACTION_KERNELS)}")
    if kind == "torch":
        return "torch", "set by interaction_kernel"
    device_type = torch.device(device).type
    elsewhere = (f"the {interaction} interaction" if interaction != "dot" else
                 f"the interaction on {device_type}" if device_type != "cpu" else
                 f"precision {precision}" if precision != "bf16" else "")
    if elsewhere:
        if kind == "native":
            raise NativeKernelError(f"the native kernels compute the dot interaction in bf16 on the CPU; this run "
                                    f"has {elsewhere}")
        return "torch", f"{elsewhere}: torch's ops"
    try:
        kernels = native_dot_kernels()
    except NativeKernelError as e:
        if kind == "native":
            raise
        return "torch", f"auto: no native kernels here: {str(e).splitlines()[0]}"
    if not kernels.available:
        if kind == "native":
            raise NativeKernelError(f"the native dot interaction cannot run here: {kernels.why_not}")
        return "torch", f"auto: {kernels.why_not}: torch's ops"
    return "native", "set by interaction_kernel" if kind == "native" else f"auto: AMX, compiled here with {compiler()}"
