"""Numeric precision of the dense compute: fp32, or bf16 mixed precision.

``bf16`` runs the MLPs and the interaction under ``torch.autocast``: their
GEMMs take bf16 inputs and accumulate in fp32, while the weights (the
optimiser's master copy), the embedding tables, the loss and every metric stay
fp32, so checkpoints are the same whatever the precision. On a CPU without
native bf16 instructions autocast still works but emulates them, slower than
fp32, so it is refused there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .config import PRECISIONS


class PrecisionError(ValueError):
    """The precision asked for is unknown or this machine cannot run it well."""


def cpu_bf16_support() -> str | None:
    """None when this CPU has native bf16 (AVX512_BF16 or AMX); else what it lacks."""
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return None
    return "avx512_bf16 and amx_bf16 (the CPU has neither; torch would emulate bf16, slower than fp32)"


@dataclass(frozen=True)
class Precision:
    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the model's forward runs in."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def build_precision(name: str, device: torch.device) -> Precision:
    if name not in PRECISIONS:
        raise PrecisionError(f"unknown precision {name!r}: expected {', '.join(PRECISIONS)}")
    if name == "bf16" and device.type == "cpu":
        missing = cpu_bf16_support()
        if missing is not None:
            raise PrecisionError(f"bf16 on this CPU needs {missing}; use precision=fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PrecisionError(f"bf16 on {torch.cuda.get_device_name(device)} is not supported "
                             f"(compute capability 8.0 or newer is needed); use precision=fp32")
    return Precision(name, device.type)
