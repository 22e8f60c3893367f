"""The native lookup (reference/embeddings.py) and the tables' step in its
backward pass (optim.backward_row_update): the same values, gradients and
trained weights as torch's lookup followed by the optimiser's step."""

import pytest
import torch

from conftest import compile_with, tiny_config
from reference import train
from reference.distributed import runtime
from reference.embeddings import FusedEmbeddingBag, LookupOutput, stacked
from reference.interaction import DotInteraction
from reference.mlperf_log import MLPerfLogger
from reference.precision import cpu_bf16_support
from reference.row_kernels import NativeKernelError, native_row_kernels
from reference.trainer import Trainer

needs_bf16 = pytest.mark.skipif(cpu_bf16_support() is not None, reason=f"bf16 needs {cpu_bf16_support()}")
SIZES = [40, 3, 500]


def kernels_or_skip():
    try:
        return native_row_kernels()
    except NativeKernelError as e:
        pytest.skip(f"native row kernels not built here: {e}")


def awkward_tables(dim: int) -> FusedEmbeddingBag:
    """Tables whose first row holds the values a bf16 cast can get wrong: ties
    (rounded to even), the largest finite float, infinities, signed zero, NaN;
    and whose second row holds a subnormal (a row the AVX512_BF16 path redoes
    the portable way, so it gets a row of its own)."""
    tables = FusedEmbeddingBag(SIZES, dim, seed=3)
    special = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 3.4028235e38, float("inf"), float("-inf"),
                            -0.0, float("nan"), 1 + 2**-9])
    with torch.no_grad():
        tables.weight[0, :len(special)] = special
        tables.weight[1, 3] = 1e-40
    return tables


@pytest.mark.parametrize("head", [0, 1, 3])
def test_the_native_lookup_returns_torchs_vectors_behind_a_free_head(head):
    kernels = kernels_or_skip()
    native = awkward_tables(16)
    native.use_native_kernels(kernels)
    native.lookup_output = LookupOutput(head=head)
    ids = torch.randint(0, 3, (64, 3), generator=torch.Generator().manual_seed(0))
    got = native(ids)
    expected = awkward_tables(16)(ids)  # torch's lookup: no kernels given
    assert got.dtype == torch.float32 and got.shape == (64, 3, 16)
    assert torch.equal(got.nan_to_num(), expected.nan_to_num()) and torch.equal(got.isnan(), expected.isnan())
    stack = stacked(got, head)
    assert (stack is None) == (head == 0)
    if stack is not None:
        assert stack.shape == (64, head + 3, 16) and torch.equal(stack[:, head:].nan_to_num(), got.nan_to_num())


def test_in_the_compute_dtype_it_rounds_as_torch_casts():
    assert_rounds_as_torch(kernels_or_skip())


def test_without_avx512_bf16_the_portable_cast_rounds_alike(fresh_build, tmp_path):
    """The kernels use AVX512_BF16's conversion where the CPU has it; built without it they
    take the portable loop, which every CPU without it runs: checked here on any CPU."""
    _, used = compile_with(fresh_build, tmp_path, "-mno-avx512bf16")
    kernels = kernels_or_skip()
    assert used.exists()  # built by the wrapper, not taken from the cache
    assert_rounds_as_torch(kernels)


def assert_rounds_as_torch(kernels):
    native = awkward_tables(16)
    native.use_native_kernels(kernels)
    native.lookup_output = LookupOutput(head=1, compute_dtype=True)
    ids = torch.randint(0, 3, (64, 3), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = native(ids)
    expected = awkward_tables(16)(ids).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got.view(torch.int16)[~expected.isnan()], expected.view(torch.int16)[~expected.isnan()])
    assert torch.equal(got.isnan(), expected.isnan())
    assert native(ids).dtype == torch.float32  # outside autocast: the tables' dtype


def test_without_an_update_the_backward_gives_torchs_sparse_gradient():
    kernels = kernels_or_skip()
    native, plain = FusedEmbeddingBag(SIZES, 8, seed=1), FusedEmbeddingBag(SIZES, 8, seed=1)
    native.use_native_kernels(kernels)
    native.lookup_output = LookupOutput(head=1)
    ids = torch.randint(0, 3, (32, 3), generator=torch.Generator().manual_seed(1))
    weights = torch.randn(32, 3, 8)
    for tables in (native, plain):
        (tables(ids) * weights).sum().backward()
    assert native.weight.grad.is_sparse
    assert torch.equal(native.weight.grad.coalesce().to_dense(), plain.weight.grad.coalesce().to_dense())


def test_with_an_update_the_backward_steps_the_rows_and_leaves_no_gradient():
    kernels = kernels_or_skip()
    tables = FusedEmbeddingBag(SIZES, 8, seed=1)
    calls = []
    tables.use_native_kernels(kernels, update=lambda rows, grad: calls.append((rows.clone(), grad.clone())))
    ids = torch.randint(0, 3, (32, 3), generator=torch.Generator().manual_seed(1))
    weights = torch.randn(32, 3, 8)
    (tables(ids) * weights).sum().backward()
    assert tables.weight.grad is None and len(calls) == 1
    rows, grad = calls[0]
    assert torch.equal(rows, ids + tables.offsets) and torch.equal(grad, weights)
    with torch.no_grad():
        tables(ids)  # evaluation: nothing to update
    assert len(calls) == 1


def test_tables_off_the_cpu_are_refused():
    kernels = kernels_or_skip()
    tables = FusedEmbeddingBag(SIZES, 8, device="meta")
    with pytest.raises(ValueError, match="the native lookup reads CPU tables; these are on meta"):
        tables.use_native_kernels(kernels)


def test_the_dot_interaction_fills_the_lookups_stack_in_place():
    torch.manual_seed(0)
    dense = torch.randn(16, 8, requires_grad=True)
    stack = torch.randn(16, 4, 8)
    sparse = stack[:, 1:].requires_grad_()
    in_place = DotInteraction(4)
    assert in_place.stack_lookup() == LookupOutput(head=1, compute_dtype=True)
    reference_dense, reference_sparse = (dense.detach().clone().requires_grad_(),
                                         sparse.detach().clone().requires_grad_())
    out = in_place(dense, sparse)
    expected = DotInteraction(4)(reference_dense, reference_sparse)
    assert torch.equal(out, expected)
    assert torch.equal(stack[:, 0], dense.detach())  # written where the lookup left room
    out.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    assert torch.equal(sparse.grad, reference_sparse.grad) and torch.equal(dense.grad, reference_dense.grad)
    # An interaction that was not given the lookup never writes outside the tensors it is given.
    other = torch.randn(16, 4, 8)
    before = other.clone()
    DotInteraction(4)(dense, other[:, 1:])
    assert torch.equal(other, before)


def trained(easy_data, tmp_path, lookup: str, steps: int = 6, **overrides):
    """A trainer after ``steps`` steps, its lookup ``torch`` (torch's gather, the
    optimiser steps the tables), ``native`` (the native gather, the same), or
    ``fused`` (the native gather, the tables stepped in its backward: the Trainer's
    choice with sparse_update_kernel=native)."""
    # Vectors of 32 values (the kernels' 16-wide path) and two threads (each updating its share of the rows).
    cfg = tiny_config(easy_data, tmp_path, sparse_update_kernel="native", adagrad_lr_decay=0.01,
                      submission_division="open", embedding_dim=32, bottom_mlp=[13, 32, 32], **overrides)
    parallel = runtime.SingleProcess(cfg)
    model = parallel.build_model(cfg, train.resolve_table_sizes(cfg))
    data = train.open_split(cfg, cfg.train_file, cfg.batch_size, model.embeddings.table_sizes)
    trainer = Trainer(cfg, model, data, data, MLPerfLogger(None), parallel=parallel)
    tables = trainer.model.embeddings
    assert tables.kernels is not None and tables.update is not None  # the Trainer wires the fused path
    if lookup != "fused":
        tables.use_native_kernels(tables.kernels if lookup == "native" else None)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # whatever an earlier test left set
    try:
        for i in range(steps):
            trainer.train_step(data.batch(i))
            assert (tables.weight.grad is None) == (lookup == "fused")
    finally:
        torch.set_num_threads(threads)
    return trainer


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad", "adagrad"])
def test_stepping_the_tables_in_the_backward_trains_the_same_weights(easy_data, tmp_path, optimizer, precision):
    kernels_or_skip()
    runs = {lookup: trained(easy_data, tmp_path, lookup, optimizer=optimizer, precision=precision)
            for lookup in ("torch", "native", "fused")}
    expected = runs["torch"]
    for lookup in ("native", "fused"):
        got = runs[lookup]
        for (name, p), q in zip(expected.model.named_parameters(), got.model.parameters(), strict=True):
            assert torch.equal(p, q), (lookup, name)
            a, b = expected.optimizer.state[p], got.optimizer.state[q]
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (lookup, name)
