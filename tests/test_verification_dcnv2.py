"""The verifier on DLRMv2 (dlrm_dcnv2) logs, rounds 3.0.0 - 6.0.0: the builder's logs are first
checked by the official tools themselves, then the verifier must agree with them."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from mllog_builder import dcnv2_events, events, write_log
from verification import official
from verification.report import verify


def official_compliance(path, ruleset):
    proc = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
                           "--ruleset", ruleset, "--werror", str(path)], capture_output=True, text=True,
                          cwd=os.path.dirname(path))
    return proc.returncode, proc.stdout + proc.stderr


def official_rcp(folder, ruleset="6.0.0"):
    """The released rcp_checker's own command line (it knows dlrm_dcnv2's 10 runs itself)."""
    proc = subprocess.run([sys.executable, "-m", "mlperf_logging.rcp_checker", str(folder), "--rcp_usage", "training",
                           "--rcp_version", ruleset, "--log_output", os.path.join(str(folder), "..", "rcp.log")],
                          capture_output=True, text=True, cwd=str(folder))
    return proc.stdout + proc.stderr


def findings(report, index=0):
    return {f["check"]: f for f in report["files"][index]["findings"]}


def run_set(folder, finals, batch=65536):
    os.makedirs(folder)
    for i, final in enumerate(finals):
        write_log(os.path.join(folder, f"result_{i}.txt"), dcnv2_events(final, batch=batch, org="acme", seed=i + 1),
                  start_ms=1_700_000_000_000 + 10_000_000 * i)
    return folder


@pytest.mark.parametrize("ruleset", ["3.0.0", "4.1.0", "6.0.0"])
def test_a_good_log_passes_the_official_checker_and_every_check(tmp_path, ruleset):
    path = write_log(tmp_path / "run.log", dcnv2_events())
    code, output = official_compliance(path, ruleset)
    assert code == 0 and "SUCCESS" in output, output
    report = verify([path], ruleset=ruleset)
    found = findings(report)
    assert {name: f["reason"] for name, f in found.items() if f["verdict"] == "fail"} == {}
    assert found["official_compliance"]["verdict"] == "pass"
    assert found["target_reached"]["reason"] == "AUC 0.80280 >= 0.80275 at epoch 0.8000"
    assert found["eval_cadence"]["verdict"] == "pass" and "fractional epoch_num from 0" in found["eval_cadence"]["rule"]
    assert found["epochs_to_target"]["reason"].startswith("0.8000 epochs (epoch_num 0.8000 in the log)")
    assert found["weights_initialization_tensors"]["verdict"] == "skip"
    assert report["passed"]


def test_wrong_adagrad_values_fail_naming_the_key(tmp_path):
    path = write_log(tmp_path / "run.log", dcnv2_events(adagrad={"opt_adagrad_epsilon": 1e-10,
                                                                 "opt_learning_rate_warmup_steps": 100}))
    code, output = official_compliance(path, "6.0.0")
    assert code != 0 and re.findall(r"CHECK for '(\w+)' failed", output) == [
        "opt_adagrad_epsilon", "opt_learning_rate_warmup_steps"], output
    found = findings(verify([path], ruleset="6.0.0"))
    assert found["official_compliance"]["verdict"] == "fail"
    assert found["closed_division_rules"]["verdict"] == "fail"
    assert found["closed_division_rules"]["reason"] == (
        "opt_adagrad_epsilon 1e-10; the closed division requires 1e-08; "
        "opt_learning_rate_warmup_steps 100; the closed division requires 0")


def test_the_other_generation_is_refused_as_the_official_checker_refuses_it(tmp_path):
    v1 = write_log(tmp_path / "v1.log", events())
    v2 = write_log(tmp_path / "v2.log", dcnv2_events())
    for path, ruleset, benchmark in ((v1, "6.0.0", "dlrm"), (v2, "2.1.0", "dlrm_dcnv2")):
        code, output = official_compliance(path, ruleset)  # it looks for the round's rules of the benchmark
        assert code != 0 and f"No such file or directory: '{official._PACKAGE}/compliance_checker/" \
            f"training_{ruleset}/closed_{benchmark}.yaml'" in output, output
    [v1_found] = verify([v1], ruleset="6.0.0")["files"][0]["findings"]
    assert v1_found["verdict"] == "fail" and v1_found["check"] == "benchmark_round"
    assert v1_found["reason"] == (
        "submission_benchmark 'dlrm' under training 6.0.0, whose recommendation benchmark is dlrm_dcnv2 (its "
        "official checker has no rules for 'dlrm' and fails); dlrm was benchmarked in training 0.7.0 - 2.1.0: "
        "check it with --ruleset 2.1.0 (or another of its rounds)")
    [v2_found] = verify([v2], ruleset="2.1.0")["files"][0]["findings"]
    assert v2_found["check"] == "benchmark_round" and "dlrm_dcnv2 was benchmarked in training 3.0.0 - 6.0.0: " \
        "check it with --ruleset 6.0.0" in v2_found["reason"]
    # Without --ruleset the logs' benchmark chooses its latest round.
    proc = subprocess.run([sys.executable, "-m", "verification", v2, "--no-plots", "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("ruleset: training 6.0.0"), proc.stdout + proc.stderr


def test_rcp_verdicts_on_ten_run_sets_are_the_official_checkers(tmp_path):
    # The pruned RCPs (as the package checker uses them) leave 55296 and 160000 around batch 65536: ten
    # runs averaging 0.79 epochs pass, ten at 0.60 converge too fast.
    good = run_set(tmp_path / "good" / "dlrm_dcnv2", [0.8, 0.8, 0.75, 0.8, 0.85, 0.8, 0.8, 0.8, 0.75, 0.8])
    fast = run_set(tmp_path / "fast" / "dlrm_dcnv2", [0.6] * 10)
    good_cli, fast_cli = official_rcp(good), official_rcp(fast)
    assert "RCP Interpolation, RCP test PASSED" in good_cli and "Submission mean epochs: 0.7938" in good_cli
    assert "RCP Interpolation, RCP test FAILED" in fast_cli and "Submission mean epochs: 0.6000" in fast_cli
    tool_mean = float(re.findall(r"'RCP Mean': np.float64\(([0-9.]+)\)", good_cli)[-1])
    report = verify([str(tmp_path / "good"), str(tmp_path / "fast")], ruleset="6.0.0")
    assert all(f["verdict"] != "fail" for file in report["files"] for f in file["findings"])
    by_folder = {os.path.basename(os.path.dirname(r["folder"])): r for r in report["rcp"]}
    good_rcp, fast_rcp = by_folder["good"], by_folder["fast"]
    assert good_rcp["verdict"] == "pass" and good_rcp["message"] == "RCP Interpolation", good_rcp
    assert good_rcp["records"] == [55296, 160000] and good_rcp["runs"] == 10 and not good_rcp["supplied"]
    assert good_rcp["rcp_mean"] == pytest.approx(tool_mean, abs=1e-9)
    assert f"{good_rcp['submission_mean']:.4f}" == "0.7938"
    assert fast_rcp["verdict"] == "fail" and "converges in 0.6000 epochs on average, faster than the 0.7448" in \
        fast_rcp["reason"], fast_rcp
    assert not report["passed"]


def test_a_short_set_is_not_rcp_tested(tmp_path):
    run_set(tmp_path / "dlrm_dcnv2", [0.8] * 5)
    [rcp] = verify([str(tmp_path / "dlrm_dcnv2")], ruleset="6.0.0", with_official=True)["rcp"]
    assert rcp["verdict"] == "warn" and "5 runs, the RCP test needs the round's 10" in rcp["reason"]


def test_package_of_ten_dcnv2_runs_passes_the_official_package_checker(tmp_path, easy_data):
    # Open division: the closed one also needs eval_samples == 89137319, which synthetic data cannot log.
    out = tmp_path / "pkg"
    proc = subprocess.run([sys.executable, "-m", "verification", "package", "--config", "configs/synthetic.yaml",
                           "--system", "test-cpu", "--org", "acme", "--out", str(out), "--data-dir", str(easy_data),
                           "submission_benchmark=dlrm_dcnv2", "submission_division=open", "optimizer=adagrad",
                           "adagrad_eps=1.0e-8", "learning_rate=0.02", "auc_threshold=0.80275", "embedding_dim=8",
                           "bottom_mlp=13-16-8", "top_mlp=16-1", "batch_size=256", "epochs=1", "progress=false",
                           "num_threads=1", "train_file=synthetic_train.bin", "eval_file=synthetic_test.bin",
                           "counts_file=synthetic_fea_count.npz"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = out / "acme" / "results" / "test-cpu" / "dlrm_dcnv2"
    assert sorted(os.listdir(results)) == sorted(f"result_{i}.txt" for i in range(10))
    assert (out / "acme" / "benchmarks" / "dlrm_dcnv2" / "implementations" / "reference-pytorch").is_dir()
    assert "official package checker (training 6.0.0): PASS: no errors" in proc.stdout
    summarized = re.search(r"result summarizer: dlrm_dcnv2 time to train ([0-9.]+) min", proc.stdout)
    assert summarized and f"score: PASS: {summarized.group(1)} min, equal to the official result summarizer's" \
        in proc.stdout, proc.stdout[-3000:]
