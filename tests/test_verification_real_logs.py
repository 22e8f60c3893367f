"""The verifier on real, accepted MLPerf DLRM submissions (../shared/data/mlperf-dlrm-logs,
v0.7 to v2.0; never copied into the repository): under its own round's ruleset no log
FAILs, the RCP verdict is the official checker's, and the NVIDIA v2.0 submission's score
is the official result summarizer's."""
import glob
import os

import pytest

from conftest import ROOT
from verification import official
from verification.report import verify

LOGS = os.path.join(os.path.dirname(ROOT), "shared", "data", "mlperf-dlrm-logs")
ROUNDS = {"v0.7": "0.7.0", "v1.0": "1.0.0", "v1.1": "1.1.0", "v2.0": "2.0.0"}

pytestmark = pytest.mark.skipif(not os.path.isdir(LOGS), reason=f"{LOGS} is absent (real logs are not in the "
                                                                f"repository; see ../shared/data/README.md)")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return {name: verify([os.path.join(LOGS, name)], ruleset=ruleset,
                         work_dir=str(tmp_path_factory.mktemp(name)))
            for name, ruleset in ROUNDS.items()}


@pytest.mark.parametrize("name", sorted(ROUNDS))
def test_no_accepted_log_fails_under_its_rounds_rules(reports, name):
    report = reports[name]
    logs = glob.glob(os.path.join(LOGS, name, "*", "*", "dlrm", "result_*.txt"))
    assert len(report["files"]) == len(logs) > 0
    failures = {f"{file['path']}: {f['check']}": f["reason"] for file in report["files"] for f in file["findings"]
                if f["verdict"] == "fail"}
    failures.update({f"rcp {r['folder']}": r["reason"] for r in report["rcp"] if r["verdict"] == "fail"})
    failures.update({f"{s['folder']} {system['system']}: {f['check']}": f["reason"] for s in report["submissions"]
                     for system in s["systems"] for f in system["findings"] if f["verdict"] == "fail"})
    assert failures == {} and report["passed"]
    assert all(f["verdict"] == "pass" for file in report["files"] for f in file["findings"]
               if f["check"] == "official_compliance")


def test_the_variants_are_reported_as_warnings(reports):
    def reason(name, fragment, check):
        return next(f["reason"] for file in reports[name]["files"] if fragment in file["path"]
                    for f in file["findings"] if f["check"] == check and f["verdict"] == "warn")
    assert "without event_type" in reason("v0.7", "Google", "log_readable")
    assert "epoch_num counts evaluations (1..18)" in reason("v0.7", "Google", "eval_cadence")
    assert "eval_samples 89,137,318" in reason("v2.0", "Google", "dataset_identity")
    assert "rank prefixes [0]..[31]" in reason("v1.0", "Intel", "log_readable")
    assert "3,775,334,400 is logged after run_stop" in reason("v2.0", "NVIDIA", "dataset_identity")
    assert "no 'seed' key" in reason("v2.0", "NVIDIA", "seed_logged")
    assert "17 eval_stop for 18 eval_accuracy" in reason("v2.0", "NVIDIA", "eval_cadence")
    assert "'init_start'" in reason("v2.0", "H3C", "timestamps_monotonic")
    assert "'cache_clear'" in reason("v1.0", "Intel", "timestamps_monotonic")


def test_rcp_verdict_equals_the_official_checkers_on_the_five_run_set(reports):
    folder = os.path.join(LOGS, "v2.0", "NVIDIA", "dgxa100_ngc22.04_merlin_hugectr", "dlrm")
    [rcp] = [r for r in reports["v2.0"]["rcp"] if r["folder"] == folder]
    tool = official.rcp(sorted(glob.glob(os.path.join(folder, "result_*.txt"))), "2.0.0")
    assert tool.passed and tool.message == "RCP Interpolation"
    assert rcp["verdict"] == "pass" and rcp["message"] == tool.message and rcp["records"] == [32768, 71680]
    assert "RCP mean 1.8974 epochs" in rcp["reason"] and "submission mean 1.9000" in rcp["reason"]


def test_package_mode_reproduces_the_official_summarizers_score(reports):
    [submission] = [s for s in reports["v2.0"]["submissions"] if s["folder"].endswith(os.path.join("v2.0", "NVIDIA"))]
    [system] = submission["systems"]
    found = {f["check"]: f for f in system["findings"]}
    assert system["summarizer"]["dlrm:time_to_train"] == pytest.approx(1.6970833333, abs=1e-9)
    assert abs(system["score_minutes"] - system["summarizer"]["dlrm:time_to_train"]) < 1e-6
    assert found["score"]["verdict"] == "pass" and system["summarizer"]["dlrm:RCP"] == "Pass"
    assert found["package_checker"]["verdict"] == "warn"  # only the seed checker's (accepted) error
    assert "NVIDIA's accepted logs have none" in found["package_checker"]["reason"]


def test_systems_json_mismatches_are_warnings(reports):
    [intel] = [system for s in reports["v1.0"]["submissions"] for system in s["systems"]
               if system["system"].startswith("4-nodes")]
    [finding] = [f for f in intel["findings"] if f["check"] == "systems_json"]
    assert finding["verdict"] == "warn"
    assert "submission_division 'closed', the JSON's division 'open'" in finding["reason"]
