"""Feature interactions between the bottom-MLP output and the pooled embeddings."""

from __future__ import annotations

import torch
from torch import nn

from .dcn import DCNInteraction


class _PairwiseDots(torch.autograd.Function):
    """Selected entries of each sample's Gram matrix V V^T, flattened.

    Autograd through ``bmm`` + indexing costs two more ``bmm`` in the backward
    and a scatter through 2-D advanced indexing; here the backward is one
    ``bmm``: dL/dV = (G + G^T) V, with G the output gradient scattered into
    the Gram matrix's shape. Small batched GEMMs are slow on CPU, so this
    halves the interaction's share of a step (benchmarks/RESULTS.md).

    Both passes compute in the vectors' dtype (:func:`stack_vectors` makes
    them bf16 under autocast): the backward, which autograd runs outside
    autocast, would otherwise mix dtypes.
    """

    @staticmethod
    def forward(ctx, vectors: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(vectors, flat_index)
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        return gram.view(gram.shape[0], -1).index_select(1, flat_index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        vectors, flat_index = ctx.saved_tensors
        b, n, _ = vectors.shape
        g = vectors.new_zeros(b, n * n).index_copy_(1, flat_index, grad.to(vectors.dtype)).view(b, n, n)
        return torch.bmm(g + g.transpose(1, 2), vectors), None


def stack_vectors(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """(B, T+1, D): the bottom output, then the T pooled embeddings, in the
    dtype the interaction computes in (autocast's, else the embeddings').
    Under bf16 the embeddings are cast before the concatenation, which would
    otherwise promote to fp32 and be cast after: twice the passes over the data."""
    device = sparse.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else sparse.dtype
    return torch.cat([dense.unsqueeze(1).to(dtype), sparse.to(dtype)], dim=1)


class DotInteraction(nn.Module):
    """Pairwise dot products of the T+1 vectors (bottom output first), the
    strictly lower triangle in the seed's row-major order (1,0), (2,0), (2,1),
    (3,0)...; with ``self_interaction`` the diagonal too. The bottom output is
    concatenated in front, as in the seed, so its checkpoints map one to one."""

    flat_index: torch.Tensor  # a buffer: moves with the module

    def __init__(self, num_vectors: int, self_interaction: bool = False):
        super().__init__()
        offset = 1 if self_interaction else 0
        pairs = [(i, j) for i in range(num_vectors) for j in range(i + offset)]
        self.register_buffer("flat_index", torch.tensor([i * num_vectors + j for i, j in pairs],
                                                        dtype=torch.long), persistent=False)

    def output_dim(self, dim: int) -> int:
        return dim + len(self.flat_index)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return torch.cat([dense, _PairwiseDots.apply(stack_vectors(dense, sparse), self.flat_index)], dim=1)


class CatInteraction(nn.Module):
    def __init__(self, num_vectors: int):
        super().__init__()
        self.num_vectors = num_vectors

    def output_dim(self, dim: int, dense_dim: int) -> int:
        return dense_dim + (self.num_vectors - 1) * dim

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return torch.cat([dense, sparse.flatten(1)], dim=1)


class SumInteraction(nn.Module):
    def output_dim(self, dim: int) -> int:
        return dim

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return dense + sparse.sum(dim=1)


def build_interaction(kind: str, num_tables: int, dim: int, dense_dim: int, self_interaction: bool = False, *,
                      dcn_num_layers: int = 3, dcn_low_rank_dim: int = 512, generator: torch.Generator | None = None,
                      kernel: str = "aten") -> tuple[nn.Module, int]:
    """Returns the interaction module and the width of its output. Only
    ``dcn`` has parameters: drawn from ``generator`` (the model's, so they
    follow its seed), computed with the MLPs' GEMM ``kernel``."""
    if kind == "dot":
        dot = DotInteraction(num_tables + 1, self_interaction)
        return dot, dot.output_dim(dim)
    if kind == "cat":
        cat = CatInteraction(num_tables + 1)
        return cat, cat.output_dim(dim, dense_dim)
    if kind == "sum":
        add = SumInteraction()
        return add, add.output_dim(dim)
    if kind == "dcn":
        dcn = DCNInteraction(num_tables, dim, dense_dim, dcn_num_layers, dcn_low_rank_dim,
                             generator if generator is not None else torch.Generator(), kernel)
        return dcn, dcn.width
    raise ValueError(f"unknown interaction {kind!r}: expected dot, cat, sum or dcn")
