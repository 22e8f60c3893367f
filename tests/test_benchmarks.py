"""benchmarks/train_throughput: the paths it times side by side, its --before revision, its evaluation
timings, its verdict on auto; benchmarks/dcnv2_throughput: its paths, torch's row updates among them;
benchmarks/bag_throughput: its paths, and a lookup timing that leaves the tables alone."""
import argparse
import json
import os
import subprocess

import pytest
import torch

from benchmarks import bag_throughput, dcnv2_throughput, precision_convergence, train_throughput
from reference import trainer as trainer_module
from reference.data.random_batches import RandomDataset, RandomSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row(path, step_ms, optimizer="sgd"):
    return {"optimizer": optimizer, "path": path, "step_ms": step_ms}


def test_the_auto_verdict_compares_this_codes_fp32_paths_only():
    results = [row("fp32 aten", 100.0), row("fp32 onednn", 110.0), row("bf16", 40.0),
               row("fp32 aten @ abc123", 90.0), row("bf16 @ abc123", 39.0)]
    assert train_throughput.auto_verdicts(results, "aten") == [
        "sgd: linear_kernel=auto picks aten, the faster on this CPU"]
    assert train_throughput.auto_verdicts(results, "onednn") == [
        "sgd: linear_kernel=auto picks onednn, not the faster (fp32 aten is) on this CPU"]


def test_a_tiny_run_times_this_code_and_a_revision_beside_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # git archive reads this repository
    out = tmp_path / "t.json"
    assert train_throughput.main(["--steps", "2", "--warmup", "1", "--batch-size", "64", "--table-rows", "500",
                                  "--optimizers", "sgd", "--before", "HEAD", "--before-paths", "fp32 aten",
                                  "fp32 onednn", "--eval-batch-sizes", "64", "256",
                                  "--eval-passes", "1", "--phases", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["info"]["sparse_update_kernel_auto"].split()[0] in ("native", "torch")
    assert saved["info"]["interaction_kernel"] == "auto"
    assert saved["info"]["before_paths"] == ["fp32 aten", "fp32 onednn"]
    assert saved["info"]["interaction_kernel_auto_fp32"].startswith("torch (auto: fp32 keeps torch's ops")
    results = saved["results"]
    paths = [r["path"] for r in results]
    assert paths[0] == "fp32 aten" and "fp32 aten @ HEAD" in paths and "bf16 @ HEAD" not in paths
    assert ("fp32 onednn @ HEAD" in paths) == ("fp32 onednn" in paths)
    assert all(r["step_ms"] > 0 and 0 < r["mlp_only_ms"] for r in results)
    assert "fp32 aten @ HEAD" in capsys.readouterr().out
    evaluation = {(r["path"], r["eval_batch_size"]): r for r in saved["evaluation"]}
    assert {b for _, b in evaluation} == {64, 256} and evaluation[("fp32 aten", 256)]["vs_largest"] == 1.0
    assert all(r["samples_per_s"] > 0 for r in evaluation.values())
    # Every part of a step is timed, once: "rest" is the step's time less the others', never negative
    # (a part counted twice would make it so). Not compared with the step times above: those are
    # other steps, and a busy machine makes any two timings disagree.
    phases = saved["phases"]["fp32 aten"]
    assert list(phases) == list(train_throughput.PHASES) and all(ms >= 0 for ms in phases.values())


def test_the_interaction_kernel_option_sets_this_codes_paths():
    for kind in ("torch", "native"):
        args = argparse.Namespace(interaction_kernel=kind)
        assert train_throughput.path_settings("fp32 onednn", args) == dict(precision="fp32", linear_kernel="onednn",
                                                                         interaction_kernel=kind)
        assert train_throughput.path_settings("bf16", args) == dict(precision="bf16", interaction_kernel=kind)
    with pytest.raises(SystemExit):
        train_throughput.main(["--interaction-kernel", "amx"])


def test_an_unknown_revision_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit, match="--before no-such-rev: git archive failed"):
        train_throughput.import_before("no-such-rev", str(tmp_path))


def test_a_tiny_dcnv2_run_times_the_native_and_torchs_row_updates(tmp_path, capsys):
    out = tmp_path / "d.json"
    assert dcnv2_throughput.main(["--steps", "1", "--warmup", "0", "--batch-size", "32", "--table-rows", "200",
                                  "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    paths = [r["path"] for r in saved["results"]]
    assert paths[:2] == ["dcnv2 fp32", "dcnv2 fp32, torch rows"] and paths[-1] == "dot (v1) fp32"
    assert all(r["step_ms"] > 0 for r in saved["results"])
    assert saved["info"]["sparse_update_kernel_auto"].split()[0] in ("native", "torch")
    assert "dcnv2 fp32, torch rows" in capsys.readouterr().out


def test_a_tiny_bag_run_times_one_id_and_bags(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bag_throughput.main(["--steps", "1", "--warmup", "0", "--batch-size", "32", "--table-rows", "200",
                                "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert [r["path"] for r in saved["results"]] == ["one id (B, T)", "bags of 1 (jagged)", "bags of 4", "bags of 10"]
    assert all(r["step_ms"] > 0 for r in saved["results"])  # a lookup of 32 samples may round to 0.0 ms


def test_the_lookup_timing_leaves_the_tables_alone():
    """The native lookup of one id steps the tables in its backward; timed on its own, it must not
    (the bags' lookup does not), and the trainer keeps its update afterwards."""
    sizes = [50] * 26
    data = RandomDataset(RandomSpec(sizes, 13), 32, 2, seed=0, split="train")
    trainer = bag_throughput.make_trainer(trainer_module, sizes, 32, data)
    tables = trainer.model.embeddings
    update, before = tables.update, tables.weight.detach().clone()
    bag_throughput.embedding_step(trainer, data.batch(0), torch.randn(32, 26, 128))
    assert torch.equal(tables.weight, before) and tables.weight.grad.is_sparse
    assert tables.update is update


def test_precision_convergence_runs_the_real_command_with_the_overrides(tmp_path, monkeypatch):
    """Each run is ``python -m reference.train`` on the embedded default with the run's precision,
    seed and optimiser, then ``--set``'s overrides; a run already in the folder is reused."""
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        name = next(a.split("=", 1)[1] for a in command if a.startswith("run_name="))
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "converged": True, "steps": 24, "run_seconds": 1.5, "linear_kernel": "aten",
            "interaction_kernel": "native", "evaluations": [{"epoch_num": 1.05, "auc": 0.81}]}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(precision_convergence.subprocess, "run", run)
    got = precision_convergence.train("data", str(tmp_path), "fp32", 3, "rowwise_adagrad", 0.02,
                                      ("interaction_kernel=native",))
    assert commands[0][1:] == ["-m", "reference.train", "--config", "configs/synthetic.yaml", "--data-dir", "data",
                               "--results-dir", str(tmp_path), "precision=fp32", "seed=3",
                               "run_name=rowwise_adagrad-fp32-seed3-lr0.02", "progress=false",
                               "optimizer=rowwise_adagrad", "learning_rate=0.02", "submission_division=open",
                               "interaction_kernel=native"]
    assert got["steps"] == 24 and got["interaction_kernel"] == "native" and got["curve"] == [(1.05, 0.81)]
    precision_convergence.train("data", str(tmp_path), "fp32", 3, "rowwise_adagrad", 0.02)
    assert len(commands) == 1  # reused
