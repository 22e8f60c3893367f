"""Sets of runs and submission folders: the RCP verdict is the official tool's (direct
or by interpolation, with its figures), and a submission's score is the result summarizer's."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from mllog_builder import events, write_log
from verification import official
from verification.report import verify


def run_set(folder, batch, final_epochs, first=0, seed=1):
    """Runs at ``batch`` that reach the target at each of ``final_epochs`` (evaluations every 0.05 epoch)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, final in enumerate(final_epochs):
        epochs = [round(1 + 0.05 * k, 2) for k in range(1, int(round((final - 1) / 0.05)) + 1)]
        aucs = [0.79] * (len(epochs) - 1) + [0.8027]
        paths.append(write_log(os.path.join(folder, f"result_{first + i}.txt"),
                               events(batch=batch, epochs=epochs, aucs=aucs, org="acme", seed=seed + i),
                               start_ms=1_700_000_000_000 + 10_000_000 * i))
    return paths


def official_cli(folder, ruleset="2.1.0"):
    """The released rcp_checker's own command line, with the dlrm run count supplied as the verifier does."""
    proc = subprocess.run([sys.executable, "-c", official._RUN_MODULE.format(runs=official.DLRM_RUNS),
                           "mlperf_logging.rcp_checker", str(folder), "--rcp_usage", "training", "--rcp_version",
                           ruleset, "--log_output", os.path.join(str(folder), "..", "rcp.log")],
                          capture_output=True, text=True, cwd=str(folder))
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("batch, finals, verdict, message", [
    (45000, [1.85, 1.85, 1.85, 1.9, 1.85], "pass", "RCP Interpolation"),     # between the RCPs at 32768 and 71680
    (45000, [1.5, 1.5, 1.55, 1.5, 1.5], "fail", "RCP Interpolation"),       # far faster than the RCP allows
    (55296, [1.9, 1.9, 1.9, 1.9, 1.9], "pass", "RCP Interpolation"),        # 55296 is pruned: NVIDIA's v2.0/v2.1 case
    (71680, [2.0, 2.0, 2.05, 2.0, 2.0], "pass", "RCP found"),               # a direct match
])
def test_rcp_verdict_is_the_official_checkers(tmp_path, batch, finals, verdict, message):
    folder = tmp_path / "dlrm"
    run_set(folder, batch, finals)
    report = verify([str(folder)], ruleset="2.1.0")
    [rcp] = report["rcp"]
    cli = official_cli(folder)
    assert f"{message}, RCP test {'PASSED' if verdict == 'pass' else 'FAILED'}" in cli, cli
    assert rcp["verdict"] == verdict and rcp["message"] == message, rcp
    tool = re.search(r"'RCP Mean': np.float64\(([0-9.]+)\)", cli)
    subm = re.search(r"Submission mean epochs: ([0-9.]+)", cli)
    assert abs(rcp["rcp_mean"] - float(tool.group(1))) < 1e-9 and f"{rcp['submission_mean']:.4f}" == subm.group(1)
    assert rcp["records"] == ([batch] if message == "RCP found" else [32768, 71680])
    assert f"RCP mean {rcp['rcp_mean']:.4f} epochs" in rcp["reason"] and "normalisation factor" in rcp["reason"]
    if verdict == "fail":
        assert "faster than the" in rcp["reason"] and not report["passed"]


def test_rcp_verdict_under_each_rounds_table(tmp_path):
    folder = tmp_path / "dlrm"
    run_set(folder, 55296, [1.9] * 5)
    for ruleset in ("1.0.0", "1.1.0", "2.0.0"):
        [rcp] = verify([str(folder)], ruleset=ruleset)["rcp"]
        assert rcp["verdict"] == "pass" and "RCP test PASSED" in official_cli(folder, ruleset), ruleset
    [rcp] = verify([str(folder)], ruleset="0.7.0")["rcp"]
    assert rcp["verdict"] == "info" and "no RCP test" in rcp["reason"]


def test_too_few_runs_are_not_rcp_tested(tmp_path):
    run_set(tmp_path / "dlrm", 55296, [1.9, 1.9])
    [rcp] = verify([str(tmp_path / "dlrm")])["rcp"]
    assert rcp["verdict"] == "warn" and "2 runs, the RCP test needs the round's 5" in rcp["reason"]


def submission(tmp_path, finals, org_in_json="acme", first=1, status="Available on-premise"):
    org = tmp_path / "acme"
    run_set(org / "results" / "box" / "dlrm", 55296, finals, first=first)
    os.makedirs(org / "systems")
    template = open(os.path.join(ROOT, "logging", "system_description_template.json")).read()
    values = {"submitter": org_in_json, "division": "closed", "status": status, "system_name": "box"}
    filled = re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "1"), template)
    (org / "systems" / "box.json").write_text(filled)
    return org


def test_submission_folder_score_equals_the_summarizers_with_the_rcp_factor(tmp_path):
    # Mean 1.8833 epochs: faster than the interpolated RCP mean (1.8974) but within its speed-up, so the
    # official tools normalise the score by 1.8974 / 1.8833.
    org = submission(tmp_path, [1.85, 1.9, 1.85, 1.9, 1.9])
    before = sorted(os.listdir(org / "results" / "box" / "dlrm"))
    report = verify([str(org)], work_dir=str(tmp_path / "work"))
    [system] = report["submissions"][0]["systems"]
    found = {f["check"]: f for f in system["findings"]}
    assert found["result_files"]["verdict"] == "pass" and found["result_files"]["reason"] == "result_1..5"
    assert found["systems_json"]["verdict"] == "pass"
    assert found["package_checker"]["verdict"] == "pass", found["package_checker"]
    row = system["summarizer"]
    assert row["dlrm:RCP"] == "Pass" and row["dlrm:rcp_scaling_factor"] > 1.0
    assert found["score"]["verdict"] == "pass", found["score"]
    assert abs(system["score_minutes"] - row["dlrm:time_to_train"]) < 1e-6
    assert f"x normalisation factor {row['dlrm:rcp_scaling_factor']:.4f}" in found["score"]["reason"]
    assert sorted(os.listdir(org / "results" / "box" / "dlrm")) == before  # no scaling.json written into the input


def test_submission_folder_mismatches_and_bad_counts(tmp_path):
    org = submission(tmp_path, [1.9] * 4, org_in_json="Acme Corp", first=0, status="cloud")
    report = verify([str(org)])
    [system] = report["submissions"][0]["systems"]
    found = {f["check"]: f for f in system["findings"]}
    assert found["result_files"]["verdict"] == "warn" and "4 result files (0, 1, 2, 3), the round needs 5" in \
        found["result_files"]["reason"]
    assert found["systems_json"]["verdict"] == "warn"
    assert "submission_org 'acme', the JSON's submitter 'Acme Corp'" in found["systems_json"]["reason"]
    assert "submission_status 'onprem', the JSON's status 'cloud'" in found["systems_json"]["reason"]
    assert found["package_checker"]["verdict"] == "skip"
    run_set(org / "results" / "box" / "dlrm", 55296, [1.9, 1.9], first=4)  # now 6 files: 0..5
    [system] = verify([str(org)], with_official=False)["submissions"][0]["systems"]
    assert "6 result files, the round allows 5" in system["findings"][0]["reason"]
    assert system["findings"][0]["verdict"] == "fail"
    os.remove(org / "systems" / "box.json")
    [system] = verify([str(org)], with_official=False)["submissions"][0]["systems"]
    assert system["findings"][1]["verdict"] == "fail" and "box.json is missing" in system["findings"][1]["reason"]


def test_submission_seed_checks(tmp_path):
    # No seed anywhere (NVIDIA's accepted logs): the package checker's error is reported as accepted.
    org = submission(tmp_path, [1.9] * 5)
    for path in (org / "results" / "box" / "dlrm").iterdir():
        path.write_text("".join(line for line in open(path) if '"key": "seed"' not in line))
    [system] = verify([str(org)])["submissions"][0]["systems"]
    found = {f["check"]: f for f in system["findings"]}
    assert found["package_checker"]["verdict"] == "warn", found["package_checker"]
    assert "the seed checker needs a 'seed' key in every run" in found["package_checker"]["reason"]
    # The same seed on the same line in every run is a broken rule.
    org = submission(tmp_path / "dup", [1.9] * 5)
    for path in (org / "results" / "box" / "dlrm").iterdir():
        path.write_text(re.sub(r'"key": "seed", "value": \d+', '"key": "seed", "value": 7', open(path).read()))
    [system] = verify([str(org)])["submissions"][0]["systems"]
    found = {f["check"]: f for f in system["findings"]}
    assert found["package_checker"]["verdict"] == "fail" and "already logs the same seed" in \
        found["package_checker"]["reason"], found["package_checker"]


def test_a_non_compliant_run_is_dropped_as_the_summarizer_drops_it(tmp_path):
    org = submission(tmp_path, [1.85, 1.9, 1.9, 1.95, 1.9])
    bad = org / "results" / "box" / "dlrm" / "result_3.txt"
    bad.write_text("".join(line for line in open(bad) if '"key": "eval_samples"' not in line))
    report = verify([str(org)], work_dir=str(tmp_path / "work"))
    [system] = report["submissions"][0]["systems"]
    found = {f["check"]: f for f in system["findings"]}
    assert found["score"]["verdict"] == "pass", found["score"]
    assert abs(system["score_minutes"] - system["summarizer"]["dlrm:time_to_train"]) < 1e-6
    assert "1 file does not comply" not in found["package_checker"]["reason"]  # a warning, not an error
