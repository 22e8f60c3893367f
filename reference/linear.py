"""The MLPs' linear layer, with its fp32 GEMMs on the fastest exact kernel of this CPU.

``nn.Linear`` in fp32 runs on the BLAS torch was built with (MKL in the PyPI
wheels), whose sgemm takes a slow path on some CPUs (AMD's among them:
MACHINE-NOTES.md measured 69-78 GFLOP/s on a Zen 5 where oneDNN does 185).
oneDNN's ``_linear_pointwise`` computes the same fp32 product (no reduced
precision); :class:`_OneDNNLinear` uses it for the forward GEMM and both
backward GEMMs, passing transposed *views* so no activation is copied (oneDNN
reads the strides; MACHINE-NOTES.md: a wrapper that copied the transposes
first ran the MLP at 0.81x of nn.Linear's time where its GEMMs alone took
0.42x). The kernel is chosen once per run (:func:`resolve_kernel`), never per
call, so a run's numerics do not change mid-way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cpuinfo import cpu_info


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_mm(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """x @ weight^T (+ bias), fp32 in and out, on oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_mm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _onednn_mm(grad, weight.t()) if ctx.needs_input_grad[0] else None
        grad_w = _onednn_mm(grad.t(), x.t()) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    if x.dim() != 2 or x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        # Other shapes, dtypes, devices and autocast's bf16: torch's own kernel is the right one.
        return F.linear(x, weight, bias)
    return _OneDNNLinear.apply(x.contiguous(), weight, bias)


_FUNCTIONS: dict[str, Callable] = {"aten": F.linear, "onednn": onednn_linear}


def linear_function(kernel: str) -> Callable:
    if kernel not in _FUNCTIONS:
        raise ValueError(f"unknown linear kernel {kernel!r}: expected {', '.join(_FUNCTIONS)} "
                         f"(auto is resolved before the model is built)")
    if kernel == "onednn" and not onednn_available():
        raise ValueError("linear kernel 'onednn': this torch build has no oneDNN (torch.backends.mkldnn)")
    return _FUNCTIONS[kernel]


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state_dict) with a chosen GEMM kernel.

    ``fp32_output``: the layer computes in fp32 even under autocast. The
    model's logit layer is one, so scores, loss and AUC keep fp32's
    resolution (bf16 logits would tie thousands of evaluation scores)."""

    def __init__(self, in_features: int, out_features: int, kernel: str = "aten", fp32_output: bool = False,
                 bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.kernel = kernel
        self.fp32_output = fp32_output
        self._function = linear_function(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp32_output and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._function(x.float(), self.weight, self.bias)
        return self._function(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}" + (", fp32_output" if self.fp32_output else "")


def resolve_kernel(kernel: str) -> tuple[str, str]:
    """The fp32 CPU kernel a run uses, and why. ``auto`` decides from the CPU,
    not from a timing: a timing on a busy machine could flip the choice, and
    with it the run's last bits, between two runs of one seed. oneDNN on x86
    CPUs not made by Intel, whose sgemm in MKL takes a generic path there
    (benchmarks/train_throughput.py measures both side by side on any CPU);
    torch's own elsewhere."""
    if kernel != "auto":
        linear_function(kernel)
        return kernel, "set by linear_kernel"
    if not onednn_available():
        return "aten", "auto: this torch build has no oneDNN"
    vendor = cpu_info().vendor
    if vendor and vendor != "GenuineIntel" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return "onednn", f"auto: {vendor} CPU, where MKL's sgemm is not tuned"
    return "aten", f"auto: {vendor or 'unknown'} CPU, torch's BLAS"
