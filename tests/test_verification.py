"""The verifier, on logs built here: a good one passes; each defect is caught with its reason."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SMALL_TABLES
from verification.report import verify

CLOSED = os.path.join(ROOT, "configs", "mlperf_closed.yaml")
TENSORS = ["embeddings"] + [f"bottom_mlp_dense{i}" for i in (1, 2, 3)] + [f"top_mlp_dense{i}" for i in range(1, 6)]


def events(**change):
    """A closed-division DLRM log on Criteo 1TB that passes every check, as
    (key, value, metadata) triples; keyword arguments change it."""
    e = [("cache_clear", True, {}), ("init_start", None, {})]
    submission = [("submission_benchmark", "dlrm", {}), ("submission_org", "reference", {}),
                  ("submission_division", "closed", {}), ("submission_status", "onprem", {}),
                  ("submission_platform", "cpu", {})]
    if not change.get("submission_late"):
        e += submission
    e += [("weights_initialization", None, {"tensor": t}) for t in TENSORS if t != change.get("drop_tensor")]
    hyper = [("seed", 3, {}), ("global_batch_size", 2048, {}), ("gradient_accumulation_steps", 1, {}),
             ("train_samples", change.get("train_samples", 4195197692), {}), ("eval_samples", 89137319, {}),
             ("opt_name", "sgd", {}), ("opt_base_learning_rate", change.get("lr", 1.0), {}),
             ("opt_learning_rate_warmup_steps", 0, {}), ("lr_decay_start_steps", 0, {}),
             ("sgd_opt_base_learning_rate", change.get("lr", 1.0), {}), ("sgd_opt_learning_rate_decay_steps", 0, {}),
             ("sgd_opt_learning_rate_decay_poly_power", change.get("power", 2), {})]
    e += [h for h in hyper if h[0] != change.get("drop_key")]
    if change.get("duplicate"):
        e += [h for h in hyper if h[0] == change["duplicate"]]
    e += [("init_stop", None, {}), ("run_start", None, {})]
    if change.get("submission_late"):
        e += submission
    e += [("epoch_start", None, {"epoch_num": 1})]
    aucs = change.get("aucs", [0.79, 0.80, 0.8031])
    epochs = change.get("epochs", [1.05, 1.10, 1.15])
    start = 1.0
    for epoch, auc in zip(epochs, aucs):
        e += [("block_start", None, {"first_epoch_num": start, "epoch_count": round(epoch - start, 4)}),
              ("block_stop", None, {"first_epoch_num": start}), ("eval_start", None, {"epoch_num": epoch}),
              ("eval_stop", None, {"epoch_num": epoch}), ("eval_accuracy", auc, {"epoch_num": epoch})]
        start = epoch
    reached = any(a >= 0.8025 for a in aucs)
    e += [("run_stop", None, {"status": change.get("status", "success" if reached else "aborted")})]
    return e


def write_log(path, triples, backwards_at=None):
    kinds = {"init_start": "INTERVAL_START", "run_start": "INTERVAL_START", "epoch_start": "INTERVAL_START",
             "block_start": "INTERVAL_START", "eval_start": "INTERVAL_START", "init_stop": "INTERVAL_END",
             "run_stop": "INTERVAL_END", "epoch_stop": "INTERVAL_END", "block_stop": "INTERVAL_END",
             "eval_stop": "INTERVAL_END"}
    lines = []
    for i, (key, value, metadata) in enumerate(triples):
        t = 1_700_000_000_000 + 1000 * i - (5000 if backwards_at is not None and i == backwards_at else 0)
        d = {"namespace": "", "time_ms": t, "event_type": kinds.get(key, "POINT_IN_TIME"), "key": key,
             "value": value, "metadata": {"file": "reference/train.py", "lineno": 100 + i, **metadata}}
        lines.append(":::MLLOG " + json.dumps(d))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def findings(path, config=CLOSED):
    report = verify([path], config)
    return {f["check"]: f for f in report["files"][0]["findings"]}, report


def failed(result):
    return {name: f["reason"] for name, f in result.items() if f["verdict"] == "fail"}


def test_good_log_passes_every_check(tmp_path):
    result, report = findings(write_log(tmp_path / "good.log", events()))
    assert failed(result) == {}
    assert report["passed"]
    assert result["epochs_to_target"]["reason"].startswith("0.1500 epochs")


@pytest.mark.parametrize("change, check, reason", [
    (dict(drop_key="gradient_accumulation_steps"), "official_compliance",
     "Required EXACTLY_ONE occurrence of 'gradient_accumulation_steps' but found 0"),
    (dict(power=1), "closed_division_rules", "decay power 1; the closed division requires 2"),
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
    from reference.data.synthetic import SyntheticSpec, generate
    out = tmp_path_factory.mktemp("package_data")
    generate(str(out), SyntheticSpec(train_samples=5120, eval_samples=2048, table_sizes=SMALL_TABLES, seed=7,
                                     dense_scale=1.2, id_effect_scale=0.3, pair_scale=0.2, chunk_rows=4096),
             log=lambda *a: None)
    return out


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
    assert "official package checker (training 2.1.0, --rcp-bypass: the runs used other data" in proc.stdout
    assert "): PASS" in proc.stdout
    assert "result summarizer: dlrm time to train" in proc.stdout and "score: " in proc.stdout
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
