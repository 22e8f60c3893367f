"""DCNv2's low-rank cross network: the interaction of MLPerf's ``dlrm_dcnv2``.

The bottom MLP's output and the pooled embeddings, concatenated (dense first,
then tables 0..T-1), are ``x0`` (B x d, d = 3456 for the reference). Each
layer ``l`` crosses the running ``x_l`` with ``x0`` through a rank-``r``
factorisation of a d x d matrix:

    x_{l+1} = x0 * (W_l (V_l x_l) + b_l) + x_l

with V_l (r x d) and W_l (d x r) drawn xavier-normal, b_l zero, and no
activation (REFERENCE-DCNV2.md). The output is d wide; the top MLP follows.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .linear import Linear


def _xavier_normal(linear: nn.Linear, generator: torch.Generator) -> None:
    fan_out, fan_in = linear.weight.shape
    linear.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)


class CrossNetwork(nn.Module):
    """``num_layers`` low-rank cross layers on vectors ``width`` wide.

    Under bf16 autocast the two GEMMs of a layer run in bf16 while ``x0`` and
    the running sum stay fp32: a bf16 residual would round ``x_l`` again at
    every layer, and the element-wise terms cost little next to the GEMMs."""

    def __init__(self, width: int, num_layers: int, rank: int, generator: torch.Generator, kernel: str = "aten"):
        super().__init__()
        if width <= 0 or num_layers <= 0 or rank <= 0:
            raise ValueError(f"cross network: width, layers and rank must be > 0, got {width}, {num_layers}, "
                             f"{rank}")
        down = [Linear(width, rank, kernel, bias=False) for _ in range(num_layers)]  # V_l
        up = [Linear(rank, width, kernel) for _ in range(num_layers)]  # W_l and b_l
        with torch.no_grad():
            for v, w in zip(down, up, strict=True):
                _xavier_normal(v, generator)
                _xavier_normal(w, generator)
                w.bias.zero_()
        self.down, self.up = nn.ModuleList(down), nn.ModuleList(up)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for v, w in zip(self.down, self.up, strict=True):
            x = x0 * w(v(x)) + x
        return x


class DCNInteraction(nn.Module):
    """The cross network over [bottom output, table 0, ..., table T-1]."""

    def __init__(self, num_tables: int, dim: int, dense_dim: int, num_layers: int, rank: int,
                 generator: torch.Generator, kernel: str = "aten"):
        super().__init__()
        self.width = dense_dim + num_tables * dim
        self.cross = CrossNetwork(self.width, num_layers, rank, generator, kernel)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        # Under autocast the bottom output is bf16 and the tables fp32: cat promotes x0 to fp32.
        return self.cross(torch.cat([dense, sparse.flatten(1)], dim=1))
