import subprocess
import sys

import pytest
import torch

from conftest import ROOT, saved_model, tiny_config
from reference import precision, train
from reference.config import ConfigError
from reference.distributed import runtime
from reference.interaction import DotInteraction
from reference.mlperf_log import MLPerfLogger
from reference.precision import PrecisionError, build_precision, cpu_bf16_support
from reference.trainer import Trainer

needs_bf16 = pytest.mark.skipif(cpu_bf16_support() is not None,
                                reason=f"this CPU lacks native bf16: {cpu_bf16_support()}")


def run_tiny(easy_data, tmp_path, **overrides):
    return train.run(tiny_config(easy_data, tmp_path, **overrides), out=open("/dev/null", "w"))


def test_bf16_refused_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "avx512_bf16 and amx_bf16 (simulated)")
    with pytest.raises(PrecisionError, match="bf16 on this CPU needs avx512_bf16 and amx_bf16.*use precision=fp32"):
        build_precision("bf16", torch.device("cpu"))
    assert build_precision("fp32", torch.device("cpu")).name == "fp32"


def test_the_refusal_names_the_config_key(easy_data, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "avx512_bf16 and amx_bf16 (simulated)")
    with pytest.raises(ConfigError, match="^test: precision: bf16 on this CPU needs avx512_bf16"):
        runtime.SingleProcess(tiny_config(easy_data, tmp_path, precision="bf16"))


def test_cli_exits_2_with_the_reason(tmp_path):
    # The real command line, on a CPU made to lack bf16: refused before any data is read.
    code = ("import sys; from reference import precision, train; "
            "precision.cpu_bf16_support = lambda: 'avx512_bf16 and amx_bf16 (simulated)'; "
            f"sys.exit(train.main(['precision=bf16', 'data_dir={tmp_path}']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == ("error: command line: precision: bf16 on this CPU needs avx512_bf16 and amx_bf16 "
                           "(simulated); use precision=fp32\n")


def test_unknown_precision():
    with pytest.raises(PrecisionError, match="unknown precision 'fp16': expected fp32, bf16"):
        build_precision("fp16", torch.device("cpu"))


@needs_bf16
def test_interaction_under_autocast_computes_in_bf16_and_returns_fp32_gradients():
    torch.manual_seed(0)
    interaction = DotInteraction(4)
    dense = torch.randn(32, 8, requires_grad=True)
    sparse = torch.randn(32, 3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = interaction(dense.bfloat16(), sparse)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert sparse.grad.dtype == torch.float32 and dense.grad.dtype == torch.float32
    reference_dense = dense.detach().clone().requires_grad_()
    reference_sparse = sparse.detach().clone().requires_grad_()
    DotInteraction(4)(reference_dense, reference_sparse).sum().backward()
    assert torch.allclose(sparse.grad, reference_sparse.grad, rtol=0.05, atol=0.05)


@needs_bf16
def test_bf16_training_is_finite_and_close_to_fp32(easy_data, tmp_path):
    fp32 = run_tiny(easy_data, tmp_path, max_steps=20, seed=2)
    bf16 = run_tiny(easy_data, tmp_path, max_steps=20, seed=2, precision="bf16")
    assert len(bf16.losses) == 20 and all(map(lambda v: v == v and abs(v) < 10, bf16.losses))
    assert bf16.losses != fp32.losses  # it did compute in another precision
    assert bf16.losses == pytest.approx(fp32.losses, rel=0.02)
    assert bf16.final["auc"] == pytest.approx(fp32.final["auc"], abs=0.01)


@needs_bf16
def test_bf16_logits_and_weights_stay_fp32(easy_data, tmp_path):
    cfg = tiny_config(easy_data, tmp_path, precision="bf16")
    parallel = runtime.SingleProcess(cfg)
    model = parallel.build_model(cfg, train.resolve_table_sizes(cfg))
    data = train.open_split(cfg, cfg.eval_file, 64, model.embeddings.table_sizes)
    trainer = Trainer(cfg, model, data, data, MLPerfLogger(None), parallel=parallel)
    assert trainer.forward(data.batch(0)).dtype == torch.float32
    trainer.train_step(data.batch(0))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@needs_bf16
@pytest.mark.parametrize("first,second", [("bf16", "fp32"), ("fp32", "bf16")])
def test_checkpoints_move_between_precisions(easy_data, tmp_path, first, second):
    path = str(tmp_path / "ckpt")
    run_tiny(easy_data, tmp_path, max_steps=6, precision=first, checkpoint_path=path)
    assert {v.dtype for v in saved_model(path).values()} == {torch.float32}
    resumed = run_tiny(easy_data, tmp_path, max_steps=12, precision=second, resume=path)
    assert resumed.steps == 12 and len(resumed.losses) == 6
    uninterrupted = run_tiny(easy_data, tmp_path, max_steps=12, precision=second)
    assert resumed.losses == pytest.approx(uninterrupted.losses[6:], rel=0.05)


def test_the_run_says_how_it_computes(easy_data, tmp_path):
    fp32 = train.describe_dense_compute(tiny_config(easy_data, tmp_path, linear_kernel="aten"), "aten",
                                        "set by linear_kernel")
    assert fp32 == "dense compute: precision fp32, MLP GEMMs on aten (set by linear_kernel)"
    bf16 = train.describe_dense_compute(tiny_config(easy_data, tmp_path, precision="bf16"), "aten", "")
    assert bf16.startswith("dense compute: precision bf16 (autocast: bf16 GEMMs accumulating in fp32")
