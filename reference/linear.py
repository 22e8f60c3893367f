"""The MLPs' linear layer, with its fp32 GEMMs on the fastest exact kernel of this CPU.

``nn.Linear`` in fp32 runs on the BLAS torch was built with (MKL in the PyPI
wheels), whose sgemm takes a slow path on some CPUs (AMD's among them:
MACHINE-NOTES.md measured 69-78 GFLOP/s on a Zen 5 where oneDNN does 185).
oneDNN's ``_linear_pointwise`` computes the same fp32 product (no reduced
precision); :class:`_OneDNNLinear` uses it for the forward GEMM and both
backward GEMMs, passing transposed *views*, not copies (MACHINE-NOTES.md: a
wrapper that copied the transposes first ran the MLP at 0.81x of nn.Linear's
time where its GEMMs alone took 0.42x; oneDNN itself still makes the output
gradient's transpose contiguous for the weight gradient, about 6% of the step
on a Zen 4). The kernel is chosen once per run (:func:`resolve_kernel`), never
per call, so a run's numerics do not change mid-way. In an :class:`MLP`, a
layer and the ReLU after it run as one GEMM where oneDNN can fuse them
(:meth:`Linear.forward_relu`), fp32 and bf16 alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cpuinfo import cpu_info


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def onednn_bf16_available() -> bool:
    """oneDNN has bf16 GEMMs here (AVX-512 at least: with AVX2 alone it has none, though autocast's
    bf16 still runs)."""
    return onednn_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _onednn_mm(x: torch.Tensor, weight: torch.Tensor, bias=None, relu: bool = False) -> torch.Tensor:
    """x @ weight^T (+ bias), on oneDNN, in the inputs' dtype; with ``relu``, the ReLU applied to
    the output as it is written."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """x W^T + b in fp32 on oneDNN; with ``relu``, the ReLU applied to the GEMM's output as it is
    written (the same values as a ReLU after it, without another pass over the output)."""

    @staticmethod
    def forward(ctx, x, weight, bias, relu: bool):
        out = _onednn_mm(x, weight, bias, relu)
        ctx.save_for_backward(x, weight, out if relu else None)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, out = ctx.saved_tensors
        grad = (grad if out is None else torch.ops.aten.threshold_backward(grad, out, 0)).contiguous()
        grad_x = _onednn_mm(grad, weight.t()) if ctx.needs_input_grad[0] else None
        grad_w = _onednn_mm(grad.t(), x.t()) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


class _BF16LinearReLU(torch.autograd.Function):
    """relu(x W^T + b) as CPU autocast computes it in bf16, with the ReLU fused into oneDNN's GEMM
    as above; the backward runs the ops autograd runs for autocast's linear and ReLU, so values
    and gradients are autocast's bit for bit (tests/test_linear.py)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x16, w16 = x.to(torch.bfloat16).contiguous(), weight.to(torch.bfloat16)
        b16 = None if bias is None else bias.to(torch.bfloat16)
        out = _onednn_mm(x16, w16, b16, relu=True)
        ctx.save_for_backward(x16, w16, out)
        ctx.dtypes = x.dtype, weight.dtype, None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        x16, w16, out = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad = torch.ops.aten.threshold_backward(grad, out, 0)
        grad_x = grad.mm(w16).to(x_dtype) if ctx.needs_input_grad[0] else None
        grad_w = grad.t().mm(x16).to(w_dtype) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0).to(b_dtype) if b_dtype is not None and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def _fp32_on_onednn(x: torch.Tensor) -> bool:
    # Other shapes, dtypes, devices and autocast's bf16: torch's own kernel is the right one.
    return x.dim() == 2 and x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    if not _fp32_on_onednn(x):
        return F.linear(x, weight, bias)
    return _OneDNNLinear.apply(x.contiguous(), weight, bias, False)


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

    def forward_relu(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(self(x))``, the same values and gradients, in one pass where oneDNN can fuse
        the ReLU into the GEMM: bf16 under CPU autocast (whatever the fp32 kernel), and fp32 on
        the onednn kernel. The MLPerf model's step on a Zen 4: 0.97-1.00x of the time with two
        ops (benchmarks/RESULTS.md)."""
        if x.device.type == "cpu" and x.dim() == 2 and not self.fp32_output:
            if torch.is_autocast_enabled("cpu"):
                if torch.get_autocast_dtype("cpu") == torch.bfloat16 and onednn_bf16_available():
                    return _BF16LinearReLU.apply(x, self.weight, self.bias)
            elif self.kernel == "onednn" and _fp32_on_onednn(x):
                return _OneDNNLinear.apply(x.contiguous(), self.weight, self.bias, True)
        return F.relu(self(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}" + (", fp32_output" if self.fp32_output else "")


class MLP(nn.Sequential):
    """Linear layers, each but maybe the last followed by a ReLU: ``nn.Sequential``'s modules and
    state_dict, with each :class:`Linear` and the ReLU after it run as one
    (:meth:`Linear.forward_relu`; so forward hooks on those two modules do not run, the MLP's own
    do). Other layers (quantized ones, say) run one by one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self)
        i = 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, Linear) and i + 1 < len(layers) and type(layers[i + 1]) is nn.ReLU:
                x = layer.forward_relu(x)
                i += 2
            else:
                x = layer(x)
                i += 1
        return x


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
