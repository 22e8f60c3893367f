"""Quantized inference: row-wise 8-bit or 4-bit embedding tables and int8
dynamic linear layers, built from a trained fp32 model.

The tables go through PyTorch's quantized embedding-bag kernels (FBGEMM's):
each row is stored as ``dim`` 8-bit (or ``dim/2`` bytes of 4-bit) values with
its own scale and bias (fp32 for 8-bit, fp16 for 4-bit), which is what makes
row-wise quantization accurate for tables whose rows differ in range. The MLP
layers keep fp32 activations and quantize the weights per output channel
(symmetric int8); the activations are quantized on the fly per batch.
Inference only: nothing here has a backward.
"""

from __future__ import annotations

import torch
from torch import nn

from .data.jagged import JaggedIds
from .embeddings import FusedEmbeddingBag, Ids, LocalTables, bag_rows
from .linear import Linear
from .model import DLRM


class QuantizationError(ValueError):
    """A model part cannot be quantized as asked."""


class QuantizedTables(LocalTables):
    """:class:`FusedEmbeddingBag`'s tables, row-wise quantized; the same lookup."""

    offsets: torch.Tensor
    packed: torch.Tensor

    def __init__(self, tables: FusedEmbeddingBag, bits: int):
        super().__init__()
        if bits not in (4, 8):
            raise QuantizationError(f"quantize_embeddings: 8 or 4 bits, got {bits}")
        if bits == 4 and tables.dim % 2:
            raise QuantizationError(f"quantize_embeddings: 4-bit rows pack two values per byte; embedding_dim "
                                    f"{tables.dim} is odd")
        self.table_sizes, self.dim, self.bits = list(tables.table_sizes), tables.dim, bits
        weight = tables.weight.detach().float().cpu()
        prepack = (torch.ops.quantized.embedding_bag_byte_prepack if bits == 8
                   else torch.ops.quantized.embedding_bag_4bit_prepack)
        self.register_buffer("packed", prepack(weight))
        self.register_buffer("offsets", tables.offsets.detach().cpu().clone())
        self._lookup = (torch.ops.quantized.embedding_bag_byte_rowwise_offsets if bits == 8
                        else torch.ops.quantized.embedding_bag_4bit_rowwise_offsets)

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    def forward(self, ids: Ids) -> torch.Tensor:
        """ids as FusedEmbeddingBag takes them: (B, T), (B, T, L) or bags
        (:class:`JaggedIds`); returns (B, T, dim) fp32."""
        # (packed, indices, offsets, scale_grad_by_freq, mode=sum, pruned_weights, per_sample_weights,
        #  compressed_indices_mapping, include_last_offset)
        if isinstance(ids, JaggedIds):
            if ids.num_tables != self.num_tables:
                raise ValueError(f"expected bags for {self.num_tables} tables, got {ids.num_tables}")
            pooled = self._lookup(self.packed, bag_rows(ids, self.offsets), ids.offsets, False, 0, False, None,
                                  None, True)
            return pooled.view(self.num_tables, ids.batch_size, self.dim).transpose(0, 1)
        if ids.dim() not in (2, 3) or ids.shape[1] != self.num_tables:
            raise ValueError(f"expected ids of shape (batch, {self.num_tables}[, hotness]), got {tuple(ids.shape)}")
        batch, hotness = ids.shape[0], 1 if ids.dim() == 2 else ids.shape[2]
        shape = (1, -1) if ids.dim() == 2 else (1, -1, 1)
        rows = (ids.long() + self.offsets.view(shape)).reshape(-1)
        bags = torch.arange(0, rows.numel() + 1, hotness, dtype=torch.int64)
        out = self._lookup(self.packed, rows, bags, False, 0, False, None, None, True)
        return out.view(batch, self.num_tables, self.dim)

    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()


class QuantizedLinear(nn.Module):
    """A :class:`Linear` with int8 weights (per output channel, symmetric) and
    int8 activations quantized per sample on the fly (symmetric); the int32
    products are rescaled to fp32, so it takes and returns fp32 like the layer
    it replaces. ``torch._int_mm`` is exact int8 x int8 -> int32 (PyTorch's
    quantized-tensor API that quantize_dynamic uses is deprecated from 2.13)."""

    weight_t: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float().cpu()
        scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
        quantized = torch.round(weight / scale.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_t", quantized.t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", linear.bias.detach().float().cpu().clone() if linear.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        scale = x.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
        xq = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
        out = torch._int_mm(xq, self.weight_t).float().mul_(scale).mul_(self.weight_scale)
        return out if self.bias is None else out.add_(self.bias)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())


def quantize_model(model: DLRM, embedding_bits: int, mlp_bits: int) -> None:
    """Replace ``model``'s tables and/or MLP layers with their quantized forms, in place."""
    if embedding_bits:
        tables = model.embeddings
        if not isinstance(tables, FusedEmbeddingBag):
            raise QuantizationError(f"quantize_embeddings applies to ordinary tables held by one process; this "
                                    f"model has {type(tables).__name__} (set qr_threshold=0 and md_temperature=0)")
        model.embeddings = QuantizedTables(tables, embedding_bits)
    if mlp_bits:
        for mlp in (model.bottom_mlp, model.top_mlp):
            for i, layer in enumerate(mlp):
                if isinstance(layer, Linear):
                    mlp[i] = QuantizedLinear(layer)


def embedding_bytes(model: DLRM) -> int:
    """Bytes the tables take: quantized ones as packed, fp32 ones as their parameters."""
    tables = model.embeddings
    if isinstance(tables, QuantizedTables):
        return tables.nbytes()
    assert isinstance(tables, nn.Module), "every tables module is a torch module"
    return sum(p.numel() * p.element_size() for p in tables.parameters())


def mlp_bytes(model: DLRM) -> int:
    total = 0
    for mlp in (model.bottom_mlp, model.top_mlp):
        for layer in mlp:
            if isinstance(layer, QuantizedLinear):
                total += layer.nbytes()
            else:
                total += sum(p.numel() * p.element_size() for p in layer.parameters())
    return total
