"""Feature interactions between the bottom-MLP output and the pooled embeddings."""

from __future__ import annotations

import torch
from torch import nn

from .dcn import DCNInteraction
from .dot_kernels import NativeDotKernels
from .embeddings import LookupOutput, stacked


class _Dots(torch.autograd.Function):
    """The dot interaction's output, ``[dense, selected entries of V V^T]``,
    with V the (B, n, D) stack of the bottom output and the T pooled
    embeddings, computed in ``dtype``; one node of the autograd graph.

    Every pass over the data counts here: small batched GEMMs and strided
    copies, not FLOPs, are this layer's cost (benchmarks/RESULTS.md). So:
    the inputs are cast while they are copied into V (no concatenation
    that would promote to fp32 and be cast after); the selected entries are
    one ``gather``; and the backward scatters the output gradient into both
    triangles of a zero (n, n) matrix, G + G^T in two ``index_copy_`` calls
    without adding a transposed copy, so dL/dV = (G + G^T) V is one ``bmm``.
    A diagonal entry (``self_interaction``) gets 2 g_ii, its derivative.
    Gradients are returned in the inputs' dtypes (fp32 for the tables).
    With ``in_place``, embeddings that are already ``V[:, 1:]`` of a stack V
    of ``dtype`` (the native lookup's, see DotInteraction.stack_lookup) are
    not copied: the bottom output is written into V[:, 0]. With ``kernels``
    (of this dtype, on the CPU) the output and the gradient of V come from the
    native kernels (reference/dot_kernels.py), each in one pass over V.
    """

    @staticmethod
    def forward(ctx, dense: torch.Tensor, sparse: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                diagonal: torch.Tensor, dtype: torch.dtype, in_place: bool,
                kernels: NativeDotKernels | None) -> torch.Tensor:
        batch, tables, dim = sparse.shape
        n = tables + 1
        vectors = stacked(sparse, 1) if in_place and sparse.dtype == dtype else None
        if vectors is None:
            vectors = torch.empty(batch, n, dim, dtype=dtype, device=sparse.device)
            vectors[:, 1:].copy_(sparse)
        vectors[:, 0].copy_(dense)
        ctx.save_for_backward(vectors, lower, upper, diagonal)
        ctx.dtypes = (dense.dtype, sparse.dtype)
        on_cpu = vectors.device.type == "cpu"
        ctx.kernels = kernels if kernels is not None and kernels.dtype == dtype and on_cpu else None
        if ctx.kernels is not None:
            return ctx.kernels.forward(vectors, self_interaction=diagonal.numel() > 0)
        gram = torch.bmm(vectors, vectors.transpose(1, 2)).view(batch, n * n)
        pairs = torch.gather(gram, 1, lower.expand(batch, -1))
        return torch.cat([dense.to(dtype), pairs], dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        vectors, lower, upper, diagonal = ctx.saved_tensors
        batch, n, dim = vectors.shape
        if ctx.kernels is not None:
            grad_vectors = ctx.kernels.backward(vectors, grad, self_interaction=diagonal.numel() > 0)
            grad_dense = grad_vectors[:, 0].to(ctx.dtypes[0])  # holds the gradient of the output's copy of it
        else:
            grad = grad.to(vectors.dtype)
            pairs = grad[:, dim:]
            symmetric = vectors.new_zeros(batch, n * n)
            symmetric.index_copy_(1, lower, pairs)
            symmetric.index_copy_(1, upper, pairs)  # upper names the diagonal too: it holds g_ii once more
            if diagonal.numel():
                symmetric.index_copy_(1, diagonal, symmetric.index_select(1, diagonal).mul_(2))
            grad_vectors = torch.bmm(symmetric.view(batch, n, n), vectors)
            grad_dense = (grad[:, :dim] + grad_vectors[:, 0]).to(ctx.dtypes[0])
        return grad_dense, grad_vectors[:, 1:].to(ctx.dtypes[1]), None, None, None, None, None, None


def interaction_dtype(sparse: torch.Tensor) -> torch.dtype:
    """The dtype the interaction computes in: autocast's where it is on, else the embeddings'."""
    device = sparse.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else sparse.dtype


class DotInteraction(nn.Module):
    """Pairwise dot products of the T+1 vectors (bottom output first), the
    strictly lower triangle in the seed's row-major order (1,0), (2,0), (2,1),
    (3,0)...; with ``self_interaction`` the diagonal too. The bottom output is
    concatenated in front, as in the seed, so its checkpoints map one to one."""

    # Buffers (they move with the module): flat (i, j) positions in the n x n Gram matrix.
    lower: torch.Tensor     # each selected pair (i, j), j <= i, in output order
    upper: torch.Tensor     # the same pairs transposed, (j, i)
    diagonal: torch.Tensor  # the (i, i) among them (self_interaction), else empty

    def __init__(self, num_vectors: int, self_interaction: bool = False):
        super().__init__()
        self.in_place = False
        self.kernels: NativeDotKernels | None = None
        offset = 1 if self_interaction else 0
        pairs = [(i, j) for i in range(num_vectors) for j in range(i + offset)]
        n = num_vectors
        for name, flat in (("lower", [i * n + j for i, j in pairs]), ("upper", [j * n + i for i, j in pairs]),
                           ("diagonal", [i * n + i for i, j in pairs if i == j])):
            self.register_buffer(name, torch.tensor(flat, dtype=torch.long), persistent=False)

    def output_dim(self, dim: int) -> int:
        return dim + len(self.lower)

    def stack_lookup(self) -> LookupOutput:
        """Where the model's lookup is to write, so that its vectors enter
        the stack of this interaction without a copy or a cast; from now on the
        slot in front of embeddings written that way is this interaction's to
        fill. The lookup's output is then this interaction's alone: autograd
        refuses any other use of it after the interaction has filled the slot."""
        self.in_place = True
        return LookupOutput(head=1, compute_dtype=True)

    def use_native_kernels(self, kernels: NativeDotKernels) -> None:
        """Compute on the CPU with ``kernels``, in their dtype (other dtypes and devices keep torch's ops)."""
        if not kernels.available:
            raise ValueError(f"the native dot interaction cannot run here: {kernels.why_not}")
        self.kernels = kernels

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return _Dots.apply(dense, sparse, self.lower, self.upper, self.diagonal, interaction_dtype(sparse),
                           self.in_place, self.kernels)


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
