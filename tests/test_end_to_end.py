"""The real command lines, as a user runs them."""
import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from reference.config import Config


@pytest.mark.slow
def test_run_and_time_embedded_default_converges_with_a_compliant_log(tmp_path):
    env = dict(os.environ, DLRM_CACHE_DIR=str(tmp_path / "cache"), DLRM_PYTHON=sys.executable)
    proc = subprocess.run(["./run_and_time.sh", "--results-dir", str(tmp_path / "results")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "best achievable AUC" in proc.stdout + proc.stderr
    result = re.search(r"RESULT: status=success converged=True .* auc=([0-9.]+) time_to_train_s=([0-9.]+)",
                       proc.stdout)
    assert result and float(result.group(1)) >= 0.8025
    logs = glob.glob(str(tmp_path / "results" / "*.log"))
    assert len(logs) == 1
    checked = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
                              "--ruleset", "2.1.0", "--werror", logs[0]], capture_output=True, text=True,
                             cwd=str(tmp_path))  # it writes compliance_checker.log to its cwd
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The verifier: every check passes but the dataset identity, which names the synthetic data.
    verified = subprocess.run([sys.executable, "-m", "verification", str(tmp_path / "results"), "--out",
                               str(tmp_path / "verification")], cwd=ROOT, capture_output=True, text=True)
    assert verified.returncode == 1
    failures = [line for line in verified.stdout.splitlines() if line.strip().startswith("FAIL")]
    assert len(failures) == 1 and "dataset_identity: synthetic data (from" in failures[0], verified.stdout
    assert "PASS  official_compliance" in verified.stdout and "PASS  run_stop_status" in verified.stdout
    assert "PASS  hyperparameters_match_config: equal to the run's summary" in verified.stdout
    for png in ("auc.png", "loss.png", "throughput.png"):
        assert (tmp_path / "verification" / png).is_file()
    # A second call finds the generated data up to date instead of writing it again.
    again = subprocess.run(["./run_and_time.sh", "--results-dir", str(tmp_path / "results"), "max_steps=1"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "is up to date" in again.stdout
    assert again.returncode == 1  # one step does not reach the target: not converged
    # NPROC=2: the data is made (here: found) once, then two ranks train under torchrun.
    two = subprocess.run(["./run_and_time.sh", "--results-dir", str(tmp_path / "results2"), "max_steps=2"],
                         cwd=ROOT, env=dict(env, NPROC="2"), capture_output=True, text=True, timeout=300)
    assert two.returncode == 1 and "ranks=2" in two.stdout, two.stdout + two.stderr
    assert "torch.distributed.run --nproc-per-node 2" in two.stderr
    assert len(list((tmp_path / "results2").glob("*.log"))) == 1  # one log, by rank 0


def test_run_and_time_rejects_bad_input(tmp_path):
    env = dict(os.environ, DLRM_PYTHON=sys.executable)
    unknown = subprocess.run(["./run_and_time.sh", "--bogus"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown argument '--bogus'" in unknown.stderr
    no_data = subprocess.run(["./run_and_time.sh", "--config", "configs/mlperf_closed.yaml"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    assert no_data.returncode == 2 and "--data-dir (or DATA_DIR) is required" in no_data.stderr
    bad_nproc = subprocess.run(["./run_and_time.sh", "--nproc", "two"], cwd=ROOT, env=env, capture_output=True,
                               text=True)
    assert bad_nproc.returncode == 2 and "NPROC (--nproc) must be a whole number >= 1, got 'two'" in bad_nproc.stderr


def test_readme_documents_every_config_key_and_file():
    readme = open(os.path.join(ROOT, "README.md")).read()
    for f in Config.keys():
        assert f"`{f.name}`" in readme, f.name
    for path in glob.glob(os.path.join(ROOT, "configs", "*.yaml")):
        assert os.path.basename(path) in readme


def test_logging_folder_never_shadows_the_standard_library():
    assert not os.path.exists(os.path.join(ROOT, "logging", "__init__.py"))
    assert not os.path.exists(os.path.join(ROOT, "logging.py"))
