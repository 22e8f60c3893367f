"""Native kernels for the dot interaction on the CPU, in bf16 and fp32 (dot_kernels.c).

torch computes the interaction as a batched GEMM of each sample's 27 x 128
stack with itself (a 27 x 27 Gram matrix, of which the 351 entries below
the diagonal are kept), a gather and a concatenation; its backward scatters
the output's gradient into a zero 27 x 27 matrix and runs another batched
GEMM. Matrices this small keep the GEMM kernels far from their speed, and
each pass writes a buffer that the next reads back from memory: in the
MLPerf bf16 step the interaction took about 7 of 46 ms on an Intel CPU with
AMX, 11.6 of 106 on an AMD Zen 4. The kernels compute a sample in one pass
while its vectors are in the cache, its selected entries straight into the
top MLP's input, and in the backward the vectors' gradient S V from the
symmetric matrix S of the output's gradient, with the bottom output's own
gradient added. bf16 has two implementations: on AMX's tile units (only the
Gram matrix's blocks on and below the diagonal), and with AVX512_BF16's dot
products for CPUs without AMX (each pair's dot product on its own, no
padding to tiles); fp32 has one, with AVX-512's fused multiply-adds, the
latter's twin. Measured in the training step (benchmarks/RESULTS.md): bf16
with AMX 1.5-2.4 ms less; on a Zen 4 the bf16 interaction's forward and
backward 1.7 and 2.3 ms instead of 4.9 and 6.7, the step 0.93-0.95x; fp32's
step there 0.92-0.97x. fp32's kernels are opt-in (``interaction_kernel=
native``): ``auto`` keeps torch's ops in fp32, so the default fp32 run sums
as every version before did. GPUs keep torch's ops.

Compiled at start-up for this CPU (reference/native_build.py); where the
CPU lacks what a dtype needs, ``interaction_kernel=auto`` keeps torch's ops
and says why.
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
_SIGNATURES = {  # every instruction set's functions take these
    "forward": ([_P, _I64, _I64, _I64, _INT, _P, _P, _INT], None),  # vectors, batch, n, dim, self-int., out,
    "backward": ([_P, _P, _I64, _I64, _I64, _INT, _P, _P, _INT], None),  # (grad,) ... scratch, threads
    "forward_scratch": ([_I64, _I64], _I64),  # words per thread for (n, dim)
    "backward_scratch": ([_I64, _I64], _I64),
}
# Per instruction set: the dtype it computes, its bit in dot_compiled(), the C name of each function.
_ISAS = {
    "amx": (torch.bfloat16, 2, {"forward": "dot_forward", "backward": "dot_backward",
                                "forward_scratch": "dot_forward_scratch", "backward_scratch": "dot_backward_scratch"}),
    "avx512_bf16": (torch.bfloat16, 1, {"forward": "dot_forward_avx512", "backward": "dot_backward_avx512",
                                        "forward_scratch": "dot_no_scratch",
                                        "backward_scratch": "dot_backward_avx512_scratch"}),
    "avx512": (torch.float32, 4, {"forward": "dot_forward_fp32", "backward": "dot_backward_fp32",
                                  "forward_scratch": "dot_no_scratch",
                                  "backward_scratch": "dot_backward_fp32_scratch"}),
}
_NAMES = {"amx": "AMX", "avx512_bf16": "AVX512_BF16", "avx512": "AVX-512"}
_DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32"}
_AVX512_FLAGS = ("avx512f", "avx512bw", "avx512dq", "avx512vl")


class NativeDotKernels:
    """The compiled dot interaction for CPU tensors of :attr:`dtype` (bf16 or fp32), where
    :attr:`available` (else :attr:`why_not`), on :attr:`isa`: bf16 on AMX where this build has it
    and Linux grants it, else on AVX512_BF16; fp32 on AVX-512. :attr:`isas` lists those that can
    run here for the dtype (``isa`` picks one of them); :attr:`amx_note` says why a CPU with AMX
    runs bf16 without it."""

    def __init__(self, library: ctypes.CDLL, dtype: torch.dtype = torch.bfloat16, isa: str | None = None):
        if dtype not in _DTYPES:
            raise ValueError(f"the native dot interaction computes bf16 or fp32, not {dtype!r}")
        if isa is not None and (isa not in _ISAS or _ISAS[isa][0] != dtype):
            expected = ", ".join(name for name, (of, _, _) in _ISAS.items() if of == dtype)
            raise ValueError(f"instruction set {isa!r} for {_DTYPES[dtype]}: expected {expected}" + (
                f" ({isa} computes {_DTYPES[_ISAS[isa][0]]})" if isa in _ISAS else ""))
        self._lib, self.dtype = library, dtype
        library.dot_compiled.restype = library.dot_init.restype = _INT
        compiled, flags = library.dot_compiled(), cpu_info().flags
        isas, self.amx_note, self.why_not = [], "", ""
        if dtype == torch.float32:
            if compiled & _ISAS["avx512"][1]:
                isas.append("avx512")
            else:
                needs = f"AVX-512 ({', '.join(_AVX512_FLAGS)})"
                self.why_not = (f"the C compiler ({compiler()}) cannot target this CPU's {needs} (gcc 7 and clang 5 "
                                f"can)" if set(_AVX512_FLAGS) <= flags else f"no {needs} on this CPU")
        else:
            if compiled & _ISAS["amx"][1]:
                if library.dot_init():
                    isas.append("amx")
                else:
                    self.amx_note = ("Linux did not grant AMX's tile state (it needs Linux 5.16 or later, with AMX "
                                     "enabled)")
            elif {"amx_tile", "amx_bf16"} <= flags:
                self.amx_note = f"the C compiler ({compiler()}) cannot target this CPU's AMX (gcc 11 and clang 12 can)"
            if compiled & _ISAS["avx512_bf16"][1]:
                isas.append("avx512_bf16")
            else:
                self.why_not = (f"the C compiler ({compiler()}) cannot target this CPU's AVX512_BF16 (gcc 10 and "
                                f"clang 9 can)" if "avx512_bf16" in flags else "no AVX512_BF16 on this CPU")
        self.isas = tuple(isas)
        if isa is not None and isa not in self.isas:
            why = (self.amx_note if isa == "amx" else "") or self.why_not or f"this CPU has no {_NAMES[isa]}"
            raise NativeKernelError(f"the native dot interaction cannot run on {_NAMES[isa]} here: {why}")
        self.isa = isa or (self.isas[0] if self.isas else "")
        self._functions = {}
        for role, name in _ISAS[self.isa][2].items() if self.available else ():
            function = getattr(library, name)
            function.argtypes, function.restype = _SIGNATURES[role]
            self._functions[role] = function

    @property
    def available(self) -> bool:
        return bool(self.isa)

    def on(self, isa: str) -> NativeDotKernels:
        """These kernels on instruction set ``isa``, for the dtype it computes."""
        if isa not in _ISAS:
            raise ValueError(f"unknown instruction set {isa!r}: expected {', '.join(_ISAS)}")
        return NativeDotKernels(self._lib, _ISAS[isa][0], isa)

    def describe(self) -> str:
        """The instruction set in use, and why it is not AMX on a CPU that has AMX."""
        return _NAMES[self.isa] + (f" ({self.amx_note})" if self.amx_note else "")

    def _check(self, vectors: torch.Tensor) -> None:
        if not self.available:
            raise NativeKernelError(f"the native dot interaction cannot run here: {self.why_not}")
        if vectors.dtype != self.dtype or vectors.device.type != "cpu":
            raise ValueError(f"these native dot kernels compute {_DTYPES[self.dtype]} CPU tensors, got "
                             f"{vectors.dtype} on {vectors.device}")
        if vectors.dim() != 3 or not vectors.is_contiguous():
            raise ValueError(f"expected a contiguous (batch, vectors, dim) stack, got shape {tuple(vectors.shape)}, "
                             f"strides {vectors.stride()}")

    @staticmethod
    def width(n: int, dim: int, self_interaction: bool) -> int:
        """The output's width: vector 0, then one value per pair."""
        return dim + n * (n - 1) // 2 + (n if self_interaction else 0)

    def _scratch(self, role: str, n: int, dim: int, threads: int) -> torch.Tensor:
        return torch.empty(threads * self._functions[role](n, dim), dtype=torch.int32)

    def forward(self, vectors: torch.Tensor, self_interaction: bool) -> torch.Tensor:
        """[vectors[:, 0], the dot products of the pairs (i, j), j < i (j <= i with
        ``self_interaction``), row-major], (B, :meth:`width`), in :attr:`dtype`."""
        self._check(vectors)
        batch, n, dim = vectors.shape
        out = vectors.new_empty(batch, self.width(n, dim, self_interaction))
        threads = torch.get_num_threads()
        scratch = self._scratch("forward_scratch", n, dim, threads)
        self._functions["forward"](vectors.data_ptr(), batch, n, dim, int(self_interaction), out.data_ptr(),
                                   scratch.data_ptr(), threads)
        return out

    def backward(self, vectors: torch.Tensor, grad: torch.Tensor, self_interaction: bool) -> torch.Tensor:
        """The gradient of :meth:`forward`'s output with respect to the stack, given the output's
        gradient ``grad`` (cast to :attr:`dtype`), (B, n, dim)."""
        self._check(vectors)
        batch, n, dim = vectors.shape
        if grad.shape != (batch, self.width(n, dim, self_interaction)):
            raise ValueError(f"expected the output's gradient of shape {(batch, self.width(n, dim, self_interaction))}"
                             f", got {tuple(grad.shape)}")
        grad = grad.to(self.dtype).contiguous()
        out = torch.empty_like(vectors)
        threads = torch.get_num_threads()
        scratch = self._scratch("backward_scratch", n, dim, threads)
        self._functions["backward"](vectors.data_ptr(), grad.data_ptr(), batch, n, dim, int(self_interaction),
                                    out.data_ptr(), scratch.data_ptr(), threads)
        return out


@functools.cache
def _library() -> ctypes.CDLL:
    return load_library(SOURCE)


@functools.cache
def native_dot_kernels(dtype: torch.dtype = torch.bfloat16) -> NativeDotKernels:
    """The kernels for ``dtype``, compiled and loaded once per process; raises NativeKernelError where
    they cannot be built."""
    return NativeDotKernels(_library(), dtype)


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
                 f"the interaction on {device_type}" if device_type != "cpu" else "")
    if elsewhere:
        if kind == "native":
            raise NativeKernelError(f"the native kernels compute the dot interaction on the CPU; this run has "
                                    f"{elsewhere}")
        return "torch", f"{elsewhere}: torch's ops"
    if precision != "bf16" and kind == "auto":
        return "torch", ("auto: fp32 keeps torch's ops, its sums as in every version before (interaction_kernel="
                         "native computes it on AVX-512 where it runs)")
    try:
        kernels = native_dot_kernels(torch.bfloat16 if precision == "bf16" else torch.float32)
    except NativeKernelError as e:
        if kind == "native":
            raise
        return "torch", f"auto: no native kernels here: {str(e).splitlines()[0]}"
    if not kernels.available:
        if kind == "native":
            raise NativeKernelError(f"the native dot interaction cannot run here: {kernels.why_not}")
        return "torch", f"auto: {kernels.why_not}: torch's ops"
    return "native", (f"set by interaction_kernel: {kernels.describe()}" if kind == "native" else
                      f"auto: {kernels.describe()}, compiled here with {compiler()}")
