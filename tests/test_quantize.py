"""Quantized inference: row-wise 8/4-bit tables and int8 linear layers, against direct implementations."""
import os

import pytest
import torch

from conftest import tiny_config
from reference import train
from reference.config import Config, ConfigError
from reference.data.jagged import JaggedIds
from reference.embeddings import FusedEmbeddingBag
from reference.linear import Linear
from reference.quantize import QuantizedLinear, QuantizedTables

DEVNULL = open(os.devnull, "w")


def rowwise_dequantized(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Row-wise asymmetric quantization as FBGEMM defines it: per row,
    scale = (max - min) / (2**bits - 1), bias = min, q = round((w - min) / scale);
    4-bit rows keep scale and bias in fp16."""
    lo, hi = weight.min(dim=1, keepdim=True).values, weight.max(dim=1, keepdim=True).values
    scale = (hi - lo) / (2 ** bits - 1)
    if bits == 4:
        scale, lo = scale.half().float(), lo.half().float()
    q = torch.round((weight - lo) / scale).clamp_(0, 2 ** bits - 1)
    return q * scale + lo


def tables_like(quantized, tables, bits):
    """fp32 tables holding the dequantized rows: the reference lookup for any ids."""
    dequantized = FusedEmbeddingBag(tables.table_sizes, tables.dim)
    with torch.no_grad():
        dequantized.weight.copy_(rowwise_dequantized(tables.weight.detach(), bits))
    return dequantized


@pytest.mark.parametrize("bits,tolerance", [(8, 1e-6), (4, 1e-3)])
def test_quantized_tables_look_up_the_rowwise_dequantized_rows(bits, tolerance):
    tables = FusedEmbeddingBag([40, 7, 300], 16, seed=3)
    quantized = QuantizedTables(tables, bits)
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randint(0, n, (64,), generator=g) for n in (40, 7, 300)], 1)
    expected = rowwise_dequantized(tables.weight.detach(), bits)[ids + tables.offsets]
    torch.testing.assert_close(quantized.start(ids), expected, rtol=0, atol=tolerance)
    bags = torch.stack([ids, ids.flip(0), ids.roll(3, 0)], dim=2)  # fixed hotness 3: pooled by sum
    pooled = rowwise_dequantized(tables.weight.detach(), bits)[bags + tables.offsets.view(1, -1, 1)].sum(2)
    torch.testing.assert_close(quantized(bags), pooled, rtol=0, atol=3 * tolerance)
    lengths = torch.randint(0, 5, (3 * 64,), generator=g)  # bags of 0..4 ids, table by table
    values = torch.cat([torch.randint(0, (40, 7, 300)[i // 64], (int(n),), generator=g)
                        for i, n in enumerate(lengths)])
    jagged = JaggedIds.from_lengths(values, lengths.view(3, 64))
    torch.testing.assert_close(quantized(jagged), tables_like(quantized, tables, bits)(jagged), rtol=0,
                               atol=4 * tolerance)
    row_bytes = 16 + 8 if bits == 8 else 16 // 2 + 4  # values, then the row's scale and bias
    assert quantized.nbytes() == 347 * row_bytes


def test_quantized_linear_is_the_int8_product_rescaled():
    torch.manual_seed(0)
    layer = Linear(37, 11, "aten")
    x = torch.randn(5, 37)
    w_scale = layer.weight.detach().abs().amax(1) / 127
    x_scale = x.abs().amax(1, keepdim=True) / 127
    wq = torch.round(layer.weight.detach() / w_scale.unsqueeze(1)).clamp(-127, 127)
    xq = torch.round(x / x_scale).clamp(-127, 127)
    expected = (xq.double() @ wq.double().t()) * x_scale.double() * w_scale.double() + layer.bias.detach().double()
    got = QuantizedLinear(layer)(x)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    assert (got - layer(x)).abs().max() < 0.02 * layer(x).abs().max()


@pytest.fixture(scope="module")
def checkpoint_path(easy_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quantize")
    path = str(tmp / "c.pt")
    train.run(tiny_config(easy_data, tmp, checkpoint_path=path), out=DEVNULL)
    return path


def evaluate(easy_data, tmp_path, path, **quantize):
    return train.run(tiny_config(easy_data, tmp_path, load_checkpoint=path, inference_only=True, **quantize),
                     out=DEVNULL).final


def test_8bit_inference_keeps_the_auc_and_shrinks_the_tables(easy_data, tmp_path, checkpoint_path):
    fp32 = evaluate(easy_data, tmp_path, checkpoint_path)
    q8 = evaluate(easy_data, tmp_path, checkpoint_path, quantize_embeddings=8, quantize_mlp=8)
    q4 = evaluate(easy_data, tmp_path, checkpoint_path, quantize_embeddings=4)
    assert abs(q8["auc"] - fp32["auc"]) < 0.002
    assert abs(q4["auc"] - fp32["auc"]) < 0.01
    dim = 8  # tiny_config's embedding_dim
    assert q8["embedding_bytes"] * 4 * dim == fp32["embedding_bytes"] * (dim + 8)
    assert q4["embedding_bytes"] * 4 * dim == fp32["embedding_bytes"] * (dim // 2 + 4)
    assert q8["mlp_bytes"] < fp32["mlp_bytes"] / 2 and q4["mlp_bytes"] == fp32["mlp_bytes"]
    assert (q8["quantize_embeddings"], q8["quantize_mlp"], fp32["quantize_embeddings"]) == (8, 8, 0)


@pytest.mark.parametrize("overrides,message", [
    (["quantize_embeddings=8"], "quantize_embeddings: quantization is for inference: set inference_only=true"),
    (["quantize_mlp=4", "inference_only=true", "load_checkpoint=c.pt"], "quantize_mlp: must be one of 0, 8"),
    (["quantize_embeddings=3", "inference_only=true", "load_checkpoint=c.pt"],
     "quantize_embeddings: must be one of 0, 8, 4"),
    (["quantize_embeddings=8", "inference_only=true", "load_checkpoint=c.pt", "qr_threshold=10",
      "submission_division=open"], "quantize_embeddings: quantizes ordinary tables; this config has QR or MD"),
    (["quantize_embeddings=4", "inference_only=true", "load_checkpoint=c.pt", "embedding_dim=7",
      "bottom_mlp=13-7"], "quantize_embeddings: 4-bit rows pack two values per byte"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_sources(None, overrides)
