import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_config
from reference import train


def run_tiny(easy_data, tmp_path, **overrides):
    return train.run(tiny_config(easy_data, tmp_path, **overrides), out=open("/dev/null", "w"))


def test_two_runs_with_one_seed_give_identical_losses(easy_data, tmp_path):
    a = run_tiny(easy_data, tmp_path, epochs=2, seed=3)
    b = run_tiny(easy_data, tmp_path, epochs=2, seed=3)
    c = run_tiny(easy_data, tmp_path, epochs=2, seed=4)
    assert len(a.losses) == 40 and a.losses == b.losses
    assert a.losses != c.losses
    assert a.final["auc"] == b.final["auc"]


def test_early_stop_at_first_evaluation_reaching_auc(easy_data, tmp_path):
    full = run_tiny(easy_data, tmp_path, epochs=2, eval_every=4)
    aucs = [e["auc"] for e in full.evaluations]
    threshold = sorted(aucs)[len(aucs) // 2]  # reached somewhere mid-run
    first = next(i for i, a in enumerate(aucs) if a >= threshold)
    stopped = run_tiny(easy_data, tmp_path, epochs=2, eval_every=4, auc_threshold=threshold)
    assert stopped.converged and stopped.status == "success"
    assert len(stopped.evaluations) == first + 1
    assert stopped.steps == full.evaluations[first]["step"]
    assert stopped.losses == full.losses[:stopped.steps]


def test_early_stop_on_accuracy(easy_data, tmp_path):
    full = run_tiny(easy_data, tmp_path, eval_every=5)
    accs = [e["accuracy"] for e in full.evaluations]
    first = next(i for i, a in enumerate(accs) if a >= max(accs))
    stopped = run_tiny(easy_data, tmp_path, eval_every=5, accuracy_threshold=max(accs))
    assert stopped.converged and len(stopped.evaluations) == first + 1


def test_unreached_target_runs_all_epochs_and_aborts(easy_data, tmp_path):
    result = run_tiny(easy_data, tmp_path, epochs=2, auc_threshold=0.9999)
    assert not result.converged and result.status == "aborted"
    assert result.steps == 40
    assert [e["epoch_num"] for e in result.evaluations] == [2.0, 3.0]  # 1-based, at each epoch end


def test_eval_cadence_in_epoch_fractions(easy_data, tmp_path):
    result = run_tiny(easy_data, tmp_path, eval_every_epochs=0.25)
    assert [e["epoch_num"] for e in result.evaluations] == [1.25, 1.5, 1.75, 2.0]
    assert [e["step"] for e in result.evaluations] == [5, 10, 15, 20]


def test_max_steps(easy_data, tmp_path):
    result = run_tiny(easy_data, tmp_path, epochs=3, max_steps=25)
    assert result.steps == 25 and len(result.losses) == 25


def test_summary_file(easy_data, tmp_path):
    result = run_tiny(easy_data, tmp_path, eval_every=10)
    summary = json.load(open(result.summary_path))
    assert summary["steps"] == 20 and len(summary["evaluations"]) == 2
    assert summary["config"]["batch_size"] == 256 and summary["mlperf_log"] == result.log_path


def test_logging_does_not_change_training(easy_data, tmp_path, monkeypatch):
    logged = run_tiny(easy_data, tmp_path, seed=5)
    monkeypatch.setattr(train, "output_paths", lambda cfg: (None, str(tmp_path / "s.json")))
    silent = run_tiny(easy_data, tmp_path, seed=5)
    assert logged.losses == silent.losses


def test_cli_help_lists_keys():
    out = subprocess.run([sys.executable, "-m", "reference.train", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for key in ("batch_size", "auc_threshold", "eval_every_epochs", "optimizer", "checkpoint_path"):
        assert key in out


def test_cli_reports_bad_config_and_missing_data(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "reference.train", "--config", "configs/synthetic.yaml",
                          "batch_size=-4"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "error: command line: batch_size: must be > 0, got -4" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "reference.train", "--config", "configs/synthetic.yaml",
                              f"data_dir={tmp_path}", f"results_dir={tmp_path}"], cwd=ROOT,
                             capture_output=True, text=True)
    assert missing.returncode == 2
    assert "day_fea_count.npz: counts file not found" in missing.stderr


def test_tables_too_large_for_memory_rejected_before_allocating(easy_data, tmp_path):
    from reference.config import ConfigError
    cfg = tiny_config(easy_data, tmp_path, table_sizes=[2 ** 40] * 26, optimizer="rowwise_adagrad",
                      submission_division="open")
    with pytest.raises(ConfigError, match=r"test: the embedding tables need .* GiB \(28,587,302,322,176 rows x 8 "
                                          r"x 4 B, plus rowwise_adagrad state\) but only .* GiB of memory is "
                                          r"available"):
        train.run(cfg, out=open("/dev/null", "w"))


def test_cli_accepts_overrides_before_and_after_options():
    from reference.train import config_from_args
    cfg, _ = config_from_args(["batch_size=64", "--seed", "3", "epochs=2", "--data-dir", "/d", "learning_rate=0.5"])
    assert (cfg.batch_size, cfg.seed, cfg.epochs, cfg.data_dir, cfg.learning_rate) == (64, 3, 2, "/d", 0.5)


def test_device_option_validated():
    from reference.config import Config, ConfigError
    with pytest.raises(ConfigError, match="device: must be cpu, cuda or cuda:N, got 'gpu'"):
        Config.from_sources(None, ["device=gpu"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device: 'cuda' asked for, but torch sees no CUDA device"):
            Config.from_sources(None, ["device=cuda"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path runs where torch sees one")
@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_cuda_training_follows_the_cpu_run(easy_data, tmp_path, optimizer):
    common = dict(optimizer=optimizer, submission_division="open", eval_every=10)
    cpu = run_tiny(easy_data, tmp_path, **common)
    gpu = run_tiny(easy_data, tmp_path, device="cuda", **common)
    assert len(gpu.losses) == len(cpu.losses)
    assert gpu.losses == pytest.approx(cpu.losses, rel=1e-3)
    assert gpu.final["auc"] == pytest.approx(cpu.final["auc"], abs=1e-3)
