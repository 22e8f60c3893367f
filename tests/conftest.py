import os
import shlex
import shutil
import stat
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from reference import dot_kernels  # noqa: E402
from reference.config import Config  # noqa: E402
from reference.dot_kernels import native_dot_kernels  # noqa: E402
from reference.native_build import compiler  # noqa: E402
from reference.row_kernels import native_row_kernels  # noqa: E402
from reference.synthetic import SyntheticSpec, generate  # noqa: E402

SMALL_TABLES = [40, 3, 25, 7, 60, 3, 12, 5, 9, 50, 30, 20, 4, 11, 18, 6, 4, 8, 5, 45, 35, 40, 15, 10, 6, 5]


def saved_step_folder(path) -> str:
    """The step folder a checkpoint folder's LATEST names."""
    with open(os.path.join(path, "LATEST")) as f:
        return os.path.join(path, f.read().strip())


def saved_model(path) -> dict:
    """The model state of a checkpoint saved by one process: the dense part from
    meta.pt, the tables (when stored by rows) from rank 0's file."""
    import torch

    step = saved_step_folder(path)
    meta = torch.load(os.path.join(step, "meta.pt"), weights_only=True)
    state = dict(meta["model"])
    if meta["plan"]:
        assert meta["world_size"] == 1, "one process's checkpoint"
        state["embeddings.weight"] = torch.load(os.path.join(step, "rank-00000.pt"), weights_only=True)["weight"]
    return state


def tiny_config(data_dir, tmp_path, **overrides) -> Config:
    """A small model on small data: seconds per run on 2 cores."""
    values = dict(embedding_dim=8, bottom_mlp=[13, 16, 8], top_mlp=[16, 1], batch_size=256,
                  eval_batch_size=1024, epochs=1, learning_rate=0.2, progress=False,
                  data_dir=str(data_dir), results_dir=str(tmp_path / "results"),
                  train_file="synthetic_train.bin", eval_file="synthetic_test.bin",
                  counts_file="synthetic_fea_count.npz", num_threads=1)
    values.update(overrides)
    cfg = Config()
    cfg.name = "tiny"
    cfg.update(values, origin="test")
    return cfg.validate()


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory):
    """Small synthetic data whose teacher leans on the dense features, so a tiny
    model passes AUC 0.8025 within an epoch."""
    out = tmp_path_factory.mktemp("easy_data")
    spec = SyntheticSpec(train_samples=5120, eval_samples=2048, table_sizes=SMALL_TABLES, seed=7,
                         dense_scale=1.2, id_effect_scale=0.3, pair_scale=0.2, chunk_rows=4096)
    generate(str(out), spec, log=lambda *a: None)
    return out


def save_like_the_seed(path, model):
    """What dlrm_s_pytorch.py --save-model writes: its module names and numpy scalars."""
    state = {}
    for t in range(model.embeddings.num_tables):
        state[f"emb_l.{t}.weight"] = model.embeddings.table(t).clone()
    for ours, theirs in (("bottom_mlp", "bot_l"), ("top_mlp", "top_l")):
        for key, value in getattr(model, ours).state_dict().items():
            state[f"{theirs}.{key}"] = value.clone()
    torch.save({"epoch": 0, "nepochs": 1, "nbatches": 20, "nbatches_test": 2, "iter": 20,
                "state_dict": state, "train_acc": np.float64(0.75), "train_loss": np.float32(0.5),
                "test_acc": np.float64(0.76), "test_loss": np.float64(0.49), "opt_state_dict": {}}, path)


@pytest.fixture
def fresh_build(monkeypatch):
    """The native kernels compile again under this test's environment, and again after it."""
    native_row_kernels.cache_clear()
    native_dot_kernels.cache_clear()
    dot_kernels._library.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    native_row_kernels.cache_clear()
    native_dot_kernels.cache_clear()
    dot_kernels._library.cache_clear()


def compiler_wrapper(folder, flags: str):
    """A C compiler in ``folder`` that runs this machine's with ``flags`` added, and a file it
    creates when it runs (so a test can tell its build from a cached one); skips without a
    compiler."""
    found = shutil.which(compiler())
    if found is None:
        pytest.skip("no C compiler")
    cc, used = folder / "cc", folder / "used"
    cc.write_text(f'#!/bin/sh\ntouch {shlex.quote(str(used))}\nexec {shlex.quote(found)} "$@" {flags}\n')
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    return cc, used


def compile_with(fresh_build, tmp_path, flag: str):
    """Under ``fresh_build``, the native kernels are compiled by the C compiler with ``flag``
    added (``-mno-...``: as for a CPU without that feature). Returns :func:`compiler_wrapper`'s
    wrapper and file."""
    cc, used = compiler_wrapper(tmp_path, flag)
    fresh_build.setenv("CC", str(cc))
    return cc, used
