import math
import subprocess
import sys

import pytest
import torch

from reference.embeddings import FusedEmbeddingBag
from reference.interaction import build_interaction
from reference.model import DLRM


def dot_by_loop(dense, sparse, self_interaction):
    vectors = [dense] + [sparse[:, t] for t in range(sparse.shape[1])]
    rows = []
    for b in range(dense.shape[0]):
        feats = [dense[b]]
        for i in range(len(vectors)):
            for j in range(i + (1 if self_interaction else 0)):
                feats.append(torch.dot(vectors[i][b], vectors[j][b]).reshape(1))
        rows.append(torch.cat(feats))
    return torch.stack(rows)


@pytest.mark.parametrize("self_interaction", [False, True])
def test_dot_interaction_against_a_plain_loop(self_interaction):
    torch.manual_seed(0)
    dense, sparse = torch.randn(5, 4), torch.randn(5, 3, 4)
    module, width = build_interaction("dot", 3, 4, 4, self_interaction)
    out = module(dense, sparse)
    expected = dot_by_loop(dense, sparse, self_interaction)
    assert out.shape == (5, width) == expected.shape
    torch.testing.assert_close(out, expected)


def test_mlperf_interaction_width_is_479():
    _, width = build_interaction("dot", 26, 128, 128)
    assert width == 128 + 27 * 26 // 2 == 479


def test_cat_and_sum_interactions():
    dense, sparse = torch.randn(2, 4), torch.randn(2, 3, 4)
    cat, width = build_interaction("cat", 3, 4, 4)
    assert width == 16
    torch.testing.assert_close(cat(dense, sparse), torch.cat([dense, sparse[:, 0], sparse[:, 1], sparse[:, 2]], 1))
    add, width = build_interaction("sum", 3, 4, 4)
    assert width == 4
    torch.testing.assert_close(add(dense, sparse), dense + sparse[:, 0] + sparse[:, 1] + sparse[:, 2])
    with pytest.raises(ValueError, match="unknown interaction 'mul': expected dot, cat, sum or dcn"):
        build_interaction("mul", 3, 4, 4)


def test_fused_lookup_equals_per_table_lookup_and_sum_pools_bags():
    emb = FusedEmbeddingBag([5, 3, 7], dim=4, seed=1)
    ids = torch.tensor([[4, 0, 6], [0, 2, 0]])
    out = emb(ids)
    for t in range(3):
        torch.testing.assert_close(out[:, t], emb.table(t)[ids[:, t]])
    bags = torch.tensor([[[1, 2], [0, 0], [3, 6]]])
    pooled = emb(bags)
    torch.testing.assert_close(pooled[0, 2], emb.table(2)[3] + emb.table(2)[6])
    torch.testing.assert_close(pooled[0, 1], 2 * emb.table(1)[0])
    with pytest.raises(ValueError, match=r"expected ids of shape \(batch, 3"):
        emb(torch.zeros(2, 4, dtype=torch.long))


def test_embedding_init_per_table_bounds_and_independent_of_other_tables():
    a = FusedEmbeddingBag([100, 4000], dim=8, seed=3)
    b = FusedEmbeddingBag([4000], dim=8, seed=3)
    assert a.table(0).abs().max() <= math.sqrt(1 / 100)
    assert a.table(1).abs().max() <= math.sqrt(1 / 4000)
    # Table 1 of `a` and table 0 of `b` differ in index, so in stream; the same index gives the same weights.
    c = FusedEmbeddingBag([7, 4000], dim=8, seed=3)
    torch.testing.assert_close(a.table(1), c.table(1))
    assert not torch.equal(a.table(1), b.table(0))


def test_dlrm_shapes_init_and_sparse_gradient():
    model = DLRM([10, 20, 30], 8, [13, 16, 8], [32, 16, 1], seed=0)
    assert [m.weight.shape for m in model.top_mlp if hasattr(m, "weight")][0] == (32, 8 + 6)
    w = model.top_mlp[0].weight
    assert abs(w.std().item() - math.sqrt(2 / (14 + 32))) < 0.05
    dense, ids = torch.rand(4, 13), torch.tensor([[1, 2, 3]] * 4)
    logits = model(dense, ids)
    assert logits.shape == (4,)
    logits.sum().backward()
    grad = model.embeddings.weight.grad
    assert grad.is_sparse
    assert sorted(set(grad.coalesce().indices()[0].tolist())) == [1, 12, 33]
    assert model.mlperf_tensor_names() == ["embeddings", "bottom_mlp_dense1", "bottom_mlp_dense2",
                                           "top_mlp_dense1", "top_mlp_dense2", "top_mlp_dense3"]


def test_same_seed_same_model_other_seed_other_model():
    a, b, c = (DLRM([10] * 3, 8, [13, 8], [4, 1], seed=s) for s in (0, 0, 1))
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
        assert not torch.equal(va, vc), k


@pytest.mark.parametrize("self_interaction", [False, True])
def test_dot_interaction_gradient_against_autograd_of_the_plain_form(self_interaction):
    torch.manual_seed(1)
    dense = torch.randn(6, 5, dtype=torch.double, requires_grad=True)
    sparse = torch.randn(6, 4, 5, dtype=torch.double, requires_grad=True)
    module, _ = build_interaction("dot", 4, 5, 5, self_interaction)
    torch.autograd.gradcheck(lambda d, s: module(d, s), (dense, sparse))
    upstream = torch.randn(6, module.output_dim(5), dtype=torch.double)
    grads = torch.autograd.grad((module(dense, sparse) * upstream).sum(), (dense, sparse))
    expected = torch.autograd.grad((dot_by_loop(dense, sparse, self_interaction) * upstream).sum(), (dense, sparse))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


# In a fresh process (in this one, a new tensor may reuse memory an earlier test advised): whether
# the mapping behind a 32 MB torch tensor and a numpy array is advised (VmFlags "hg" in
# /proc/self/smaps) before and after advise_huge_pages, and what the call returned.
ADVISE = """
import numpy as np
import torch
from reference.hugepages import advise_huge_pages
def advised(address):
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "VmFlags:":
            return "hg" in line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")
big = torch.empty(8 << 20)
middle = big.data_ptr() + big.numel() * big.element_size() // 2
before = advised(middle)
print(before, advise_huge_pages(big), advised(middle))
array = np.zeros(8 << 20, dtype=np.int32)
middle = array.ctypes.data + array.nbytes // 2
print(advise_huge_pages(array), advised(middle))
"""


def test_huge_page_advice_on_large_tables_only():
    from reference.hugepages import advise_huge_pages
    assert advise_huge_pages(torch.empty(10)) is False  # too small to matter
    if not sys.platform.startswith("linux"):
        assert advise_huge_pages(torch.empty(8 << 20)) is False
        return
    out = subprocess.run([sys.executable, "-c", ADVISE], capture_output=True, text=True, check=True).stdout
    tensor, array = (line.split() for line in out.splitlines())
    assert tensor == ["False", "True", "True"], "the tensor's mapping is advised by the call, not before"
    # numpy advises its own large allocations already; the call must still take.
    assert array == ["True", "True"]
