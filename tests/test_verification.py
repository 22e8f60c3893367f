"""The verifier, on logs built here: a good one passes; each defect is caught with its reason."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SMALL_TABLES
from mllog_builder import events, write_log
from verification.report import verify

CLOSED = os.path.join(ROOT, "configs", "mlperf_closed.yaml")


def findings(path, config=CLOSED, ruleset="2.1.0"):
    report = verify([path], config, ruleset=ruleset)
    return {f["check"]: f for f in report["files"][0]["findings"]}, report


def failed(result):
    return {name: f["reason"] for name, f in result.items() if f["verdict"] == "fail"}


def test_good_log_passes_every_check(tmp_path):
    result, report = findings(write_log(tmp_path / "good.log", events()))
    assert failed(result) == {}
    assert report["passed"] and report["counts"] == {"fail": 0, "warn": 0}
    assert all(f["rule"] for f in result.values())  # every check states its rule
    assert result["epochs_to_target"]["reason"].startswith("0.1500 epochs")


@pytest.mark.parametrize("change, check, reason", [
    (dict(drop_key="gradient_accumulation_steps"), "official_compliance",
     "Required EXACTLY_ONE occurrence of 'gradient_accumulation_steps' but found 0"),
    (dict(power=1), "closed_division_rules",
     "sgd_opt_learning_rate_decay_poly_power 1; the closed division requires 2"),
    (dict(aucs=[0.79, 0.80, 0.801]), "target_reached", "AUC never reached 0.8025: best 0.80100"),
    (dict(aucs=[0.79, 0.80, 0.801], status="success"), "run_stop_status",
     "status success, but no evaluation reached AUC 0.8025"),
    (dict(status="aborted"), "run_stop_status", "status 'aborted', but AUC 0.80310 >= 0.8025 at epoch 1.1500"),
    (dict(submission_late=True), "submission_keys_before_init_stop",
     "'submission_benchmark' is logged after init_stop"),
    (dict(drop_tensor="top_mlp_dense5"), "weights_initialization_tensors", "missing top_mlp_dense5"),
    (dict(duplicate="global_batch_size"), "official_compliance",
     "Required EXACTLY_ONE occurrence of 'global_batch_size' but found 2"),
    (dict(epochs=[1.05, 1.20, 1.25]), "eval_cadence",
     "evaluation at epoch 1.2000 comes 0.1500 epoch after the previous one; expected every 0.05 epoch"),
    (dict(lr=2.0), "hyperparameters_match_config",
     "opt_base_learning_rate logged 2.0, config learning_rate=1.0"),
    (dict(aucs=[0.79, 0.80, 0.801], status="aborted", late_evals=[(1.20, 0.8030)]), "target_reached",
     "AUC 0.80300 >= 0.8025 only at epoch 1.2000, after run_stop"),
    (dict(optimizer="adagrad"), "closed_division_rules", "optimizer 'adagrad'; the closed division requires sgd"),
    (dict(train_samples=1000000), "dataset_identity",
     "other data: train_samples 1000000 is not Criteo 1TB's (4195197692 / 89137319)"),
])
def test_each_defect_is_caught_with_its_reason(tmp_path, change, check, reason):
    result, report = findings(write_log(tmp_path / "bad.log", events(**change)))
    assert check in failed(result), failed(result)
    assert reason in result[check]["reason"]
    assert not report["passed"]


def test_time_going_backwards_is_a_warning(tmp_path):
    # Accepted logs do it (post-processed stamps): reviewers let it pass, so the verifier warns.
    result, report = findings(write_log(tmp_path / "bad.log", events(), backwards_at=30))
    assert result["timestamps_monotonic"]["verdict"] == "warn"
    assert "time goes backwards" in result["timestamps_monotonic"]["reason"]
    assert result["timestamps_monotonic"]["line"] == 31 and report["passed"]


def test_config_claim_from_the_run_summary_and_skip_without_one(tmp_path):
    path = write_log(tmp_path / "run.log", events())
    result, _ = findings(path, config=None)
    assert result["hyperparameters_match_config"]["verdict"] == "skip"
    summary = {"config": dict(batch_size=2048, learning_rate=3.0, warmup_steps=0, decay_start_step=0,
                              decay_steps=0, decay_power=2, optimizer="sgd")}
    (tmp_path / "run.json").write_text(json.dumps(summary))
    result, _ = findings(path, config=None)
    assert "opt_base_learning_rate logged 1.0, config learning_rate=3.0 (the run's summary" in \
        failed(result)["hyperparameters_match_config"]


def test_closed_division_refuses_other_architecture(tmp_path):
    path = write_log(tmp_path / "run.log", events())
    other = tmp_path / "other.yaml"
    other.write_text(open(CLOSED).read().replace("embedding_dim: 128", "embedding_dim: 64")
                     .replace("13-512-256-128", "13-512-256-64"))
    result, _ = findings(path, config=str(other))
    assert "embedding_dim=64 differs from the reference 128" in failed(result)["closed_division_rules"]


def test_closed_division_leaves_numerics_and_kernels_to_the_submitter(tmp_path):
    path = write_log(tmp_path / "run.log", events())
    for name, settings in (("bf16", "precision: bf16\nprefetch_batches: 0\ndeterministic: false\n"),
                           ("kernel", "linear_kernel: aten\n")):
        chosen = tmp_path / f"{name}.yaml"
        chosen.write_text(open(CLOSED).read() + settings)
        result, _ = findings(path, config=str(chosen))
        assert result["closed_division_rules"]["verdict"] == "pass", result["closed_division_rules"]


def test_cli_writes_report_and_plots_and_exit_status(tmp_path):
    good = write_log(tmp_path / "good.log", events())
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "verification", good, "--config", CLOSED, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: PASS" in proc.stdout
    report = json.load(open(out / "report.json"))
    assert report["passed"] and report["files"][0]["path"] == good
    for png in ("auc.png", "throughput.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    bad = write_log(tmp_path / "bad.log", events(status="aborted"))
    proc = subprocess.run([sys.executable, "-m", "verification", bad, "--config", CLOSED, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "FAIL  run_stop_status" in proc.stdout
    missing = subprocess.run([sys.executable, "-m", "verification", str(tmp_path / "nope.log")], cwd=ROOT,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "nope.log: no such file or folder" in missing.stderr


def test_rcp_over_a_set_of_runs_supplies_the_missing_dlrm_count(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    for i in range(5):
        write_log(folder / f"r{i}.log", events())
    report = verify([str(folder)], CLOSED)
    assert len(report["files"]) == 5
    [rcp] = report["rcp"]
    assert rcp["runs"] == 5 and rcp["global_batch_size"] == 2048
    assert "supplied 5 runs" in rcp["supplied"]
    # 0.15 epochs at batch 2048 is far faster than any reference convergence point.
    assert rcp["verdict"] == "fail"
    assert rcp["reason"].startswith("Missing RCP, please submit RCP with BS = 2048: the submission converges in "
                                    "1.1500 epochs on average, faster than the 1.7228 the RCP allows"), rcp["reason"]
    assert "(the RCP at batch 32768)" in rcp["reason"] and rcp["records"] == [32768]


@pytest.fixture(scope="module")
def package_data(tmp_path_factory):
    from reference.synthetic import SyntheticSpec, generate
    out = tmp_path_factory.mktemp("package_data")
    generate(str(out), SyntheticSpec(train_samples=5120, eval_samples=2048, table_sizes=SMALL_TABLES, seed=7,
                                     dense_scale=1.2, id_effect_scale=0.3, pair_scale=0.2, chunk_rows=4096),
             log=lambda *a: None)
    return out


@pytest.mark.slow
def test_package_of_five_synthetic_runs_passes_the_official_package_checker(tmp_path, package_data):
    out = tmp_path / "pkg"
    proc = subprocess.run([sys.executable, "-m", "verification", "package", "--config", "configs/synthetic.yaml",
                           "--system", "test-cpu", "--org", "acme", "--out", str(out), "--data-dir", str(package_data),
                           "batch_size=64", "learning_rate=0.2", "epochs=2", "progress=false", "num_threads=1",
                           "train_file=synthetic_train.bin", "eval_file=synthetic_test.bin",
                           "counts_file=synthetic_fea_count.npz"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = out / "acme" / "results" / "test-cpu" / "dlrm"
    assert sorted(os.listdir(results)) == [f"result_{i}.txt" for i in range(5)]
    system = json.load(open(out / "acme" / "systems" / "test-cpu.json"))
    assert system["submitter"] == "acme" and system["division"] == "closed"
    assert system["framework"].startswith("PyTorch 2.13.0") and system["host_processor_model_name"]
    assert (out / "acme" / "benchmarks" / "dlrm" / "implementations" / "reference-pytorch" / "reference" /
            "train.py").is_file()
    assert "official package checker (training 2.1.0): PASS: no errors; --rcp-bypass: the runs are not on " \
           "Criteo 1TB, so no RCP applies" in proc.stdout
    assert "PASS  systems_json: submitter acme, division closed, status Available on-premise" in proc.stdout
    assert "runs on other data than Criteo 1TB (see dataset_identity): no RCP applies" in proc.stdout
    summarized = re.search(r"result summarizer: dlrm time to train ([0-9.]+) min", proc.stdout)
    assert summarized and f"score: PASS: {summarized.group(1)} min, equal to the official result summarizer's" \
        in proc.stdout
    assert "synthetic data (from" in proc.stdout  # and the verdict says why it is no submission
    again = subprocess.run([sys.executable, "-m", "verification", "package", "--config", "configs/synthetic.yaml",
                            "--system", "test-cpu", "--org", "acme", "--out", str(out), "--data-dir",
                            str(package_data)], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_package_with_bad_data_leaves_nothing_behind(tmp_path):
    out = tmp_path / "pkg"
    proc = subprocess.run([sys.executable, "-m", "verification", "package", "--config", "configs/synthetic.yaml",
                           "--system", "x", "--out", str(out), "--data-dir", str(tmp_path / "no-data")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error: " in proc.stderr and "no-data" in proc.stderr
    assert not (out / "reference").exists() and not (out / "reference.partial").exists()
