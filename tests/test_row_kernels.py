import ast
import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_config
from reference import train
from reference.config import Config, ConfigError
from reference.embeddings import FusedEmbeddingBag
from reference.optim import NativeRowsAdagrad, NativeRowsSGD, build_optimizer
from reference.row_kernels import NativeKernelError, native_row_kernels, resolve_sparse_update_kernel, sparse_rows

OPTIMIZERS = ["sgd", "rowwise_adagrad", "adagrad"]


def native_or_skip():
    try:
        return native_row_kernels()
    except NativeKernelError as e:
        pytest.skip(f"native row kernels not built here: {e}")


def train_tables(optimizer: str, kernel: str, dim: int, steps: int = 4, threads: int | None = None):
    """A few optimiser steps on tables plus a dense layer; ids drawn from few rows, so most repeat."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"tables": FusedEmbeddingBag([40, 3, 500], dim, seed=1),
                                 "dense": torch.nn.Linear(dim, 1)})
    opt = build_optimizer(optimizer, model, 0.3, eps=1e-8, lr_decay=0.1, sparse_update_kernel=kernel)
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        for step in range(steps):
            ids = torch.randint(0, 3, (96, 3), generator=torch.Generator().manual_seed(step))
            loss = model["dense"](model["tables"](ids).pow(2).sum(1)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(before)
    return model, opt


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("dim", [1, 5, 16, 128])
def test_native_updates_follow_torchs(optimizer, dim):
    native_or_skip()
    expected, expected_opt = train_tables(optimizer, "torch", dim)
    got, got_opt = train_tables(optimizer, "native", dim)
    changed = expected["tables"].weight != FusedEmbeddingBag([40, 3, 500], dim, seed=1).weight
    assert changed.any(dim=1).sum() == 9  # ids 0-2 of each table, the rest untouched
    for (name, a), b in zip(expected.named_parameters(), got.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=2e-6, atol=1e-7, msg=name)
    # A row's ~32 repeated contributions are summed in another order than torch's: each sum is
    # off by up to 31 roundings (2e-6 relative), the squares Adagrad keeps by twice that.
    for a, b in zip(expected_opt.state.values(), got_opt.state.values(), strict=True):
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=4e-6, atol=1e-9)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_native_updates_are_the_same_for_any_thread_count(optimizer):
    native_or_skip()
    one, _ = train_tables(optimizer, "native", 16, threads=1)
    for threads in (2, 3):
        other, _ = train_tables(optimizer, "native", 16, threads=threads)
        assert torch.equal(one["tables"].weight, other["tables"].weight), threads


def test_native_sgd_applies_duplicates_one_after_the_other():
    kernels = native_or_skip()
    weight = torch.zeros(4, 3)
    kernels.sgd(weight, torch.tensor([2, 0, 2]), torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]), 0.5)
    assert weight.tolist() == [[-2, -2.5, -3], [0, 0, 0], [-4, -5, -6], [0, 0, 0]]


def test_native_kernels_reject_what_they_cannot_update():
    kernels = native_or_skip()
    weight = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="gradient of the table's shape"):
        sparse_rows(torch.sparse_coo_tensor(torch.tensor([[1, 9]]), torch.ones(2, 3), (10, 3)), weight)
    with pytest.raises(IndexError, match="outside the table's 4 rows"):
        kernels.sgd(weight, torch.tensor([1, 9]), torch.ones(2, 3), 0.1)
    with pytest.raises(IndexError, match="outside the table's 4 rows"):
        kernels.gather(weight, torch.tensor([[-1]]), torch.empty(1, 1, 3))
    with pytest.raises(ValueError, match="fp32 CPU tables"):
        kernels.sgd(weight.double(), torch.tensor([1]), torch.ones(1, 3), 0.1)
    with pytest.raises(ValueError, match="optimiser state"):
        kernels.rowwise_adagrad(weight, torch.tensor([1]), torch.ones(1, 3), torch.zeros(3), 0.1, 1e-8)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        kernels.sgd(weight, torch.tensor([1]), torch.ones(1, 3, dtype=torch.float16), 0.1)
    with pytest.raises(ValueError, match="int64"):
        kernels.sgd(weight, torch.tensor([1], dtype=torch.int32), torch.ones(1, 3), 0.1)
    with pytest.raises(ValueError, match=r"expected 2 vectors of 3 values.*strides \(3, 1\)"):
        kernels.sgd(weight, torch.tensor([1, 2]), torch.ones(3, 3), 0.1)
    # The lookup writes: an output whose samples overlap is refused, not written twice.
    with pytest.raises(ValueError, match="each sample's vectors contiguous"):
        kernels.gather(weight, torch.tensor([[1, 2], [0, 3]]), torch.empty(6, 3).as_strided((2, 2, 3), (3, 3, 1)))


# In a fresh process (other libraries bring their own OpenMP, scikit-learn's among them): the OpenMP
# runtimes mapped once torch is imported and the kernels are loaded.
RUNTIMES = """
import re
import torch
from reference.row_kernels import native_row_kernels
native_row_kernels()
print(sorted(set(re.findall(r"\\S*/lib(?:gomp|iomp5|omp)[^/\\s]*\\.so[.\\d]*", open("/proc/self/maps").read()))))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads the process's mappings (Linux)")
def test_native_kernels_run_in_torchs_openmp_runtime():
    native_or_skip()
    out = subprocess.run([sys.executable, "-c", RUNTIMES], capture_output=True, text=True, check=True, cwd=ROOT)
    runtimes = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    # A second runtime would bring its own threads, spinning against torch's for the two cores.
    assert len(runtimes) == 1, runtimes


def test_auto_falls_back_to_torch_without_a_compiler_and_native_says_why(fresh_build):
    fresh_build.setenv("CC", "/nonexistent/cc")
    kernel, reason = resolve_sparse_update_kernel("auto", "cpu")
    assert kernel == "torch" and "'/nonexistent/cc' is not on PATH" in reason
    with pytest.raises(NativeKernelError, match="no C compiler: '/nonexistent/cc'"):
        resolve_sparse_update_kernel("native", "cpu")
    assert resolve_sparse_update_kernel("torch", "cpu") == ("torch", "set by sparse_update_kernel")


def test_a_failing_compiler_is_quoted(fresh_build, tmp_path):
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'In file included from row_kernels.c:1:' >&2\n"
                  "echo 'row_kernels.c:13: error: omp.h: No such file' >&2\nexit 1\n")
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    fresh_build.setenv("CC", str(cc))
    with pytest.raises(NativeKernelError) as failed:
        native_row_kernels()
    first, *rest = str(failed.value).splitlines()
    assert first == f"{cc} failed to compile row_kernels.c (exit 1): row_kernels.c:13: error: omp.h: No such file"
    assert rest[-2:] == ["In file included from row_kernels.c:1:", "row_kernels.c:13: error: omp.h: No such file"]
    # auto falls back and says why in one line
    kernel, reason = resolve_sparse_update_kernel("auto", "cpu")
    assert kernel == "torch" and reason.endswith("row_kernels.c:13: error: omp.h: No such file")


def test_a_compiler_that_cannot_run_is_named(fresh_build, tmp_path):
    cc = tmp_path / "cc"
    cc.write_text("not a program")  # executable, but no binary and no #! line: exec fails
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    fresh_build.setenv("CC", str(cc))
    kernel, reason = resolve_sparse_update_kernel("auto", "cpu")
    assert kernel == "torch" and f"could not run the C compiler '{cc}'" in reason


def test_tables_on_a_gpu_keep_torchs_ops():
    assert resolve_sparse_update_kernel("auto", "cuda") == ("torch", "tables on cuda: torch's ops")
    with pytest.raises(NativeKernelError, match="tables are on cuda"):
        resolve_sparse_update_kernel("native", "cuda")
    with pytest.raises(ValueError, match="expected auto, torch, native"):
        resolve_sparse_update_kernel("fast", "cpu")
    with pytest.raises(ConfigError, match="sparse_update_kernel: must be one of auto, torch, native"):
        Config.from_sources(None, ["sparse_update_kernel=fast"])
    with pytest.raises(ConfigError, match="sparse_update_kernel: native kernels update CPU tables; the tables are on "
                                          "cuda"):
        Config.from_sources(None, ["sparse_update_kernel=native", "device=cuda"])


def test_optimizer_state_moves_between_torchs_classes_and_the_native_ones():
    native_or_skip()
    for optimizer, torch_class, native_class in (("sgd", torch.optim.SGD, NativeRowsSGD),
                                                 ("adagrad", torch.optim.Adagrad, NativeRowsAdagrad)):
        model, native = train_tables(optimizer, "native", 4, steps=2)
        assert type(native) is native_class
        plain = build_optimizer(optimizer, model, 0.3, eps=1e-8, lr_decay=0.1, sparse_update_kernel="torch")
        assert type(plain) is torch_class
        plain.load_state_dict(native.state_dict())
        assert plain.state_dict()["param_groups"] == native.state_dict()["param_groups"]


def test_training_with_native_kernels_follows_torchs(easy_data, tmp_path):
    native_or_skip()
    for optimizer in ("sgd", "rowwise_adagrad"):
        runs = {kernel: train.run(tiny_config(easy_data, tmp_path, optimizer=optimizer, submission_division="open",
                                              sparse_update_kernel=kernel,
                                              learning_rate=0.05, max_steps=10), out=open(os.devnull, "w"))
                for kernel in ("torch", "native")}
        torch.testing.assert_close(runs["native"].losses, runs["torch"].losses, rtol=1e-5, atol=0)
    assert json.load(open(runs["native"].summary_path))["sparse_update_kernel"] == "native"
