"""The verifier judges as the reviewers of each round did: a variant that accepted
submissions show is a WARN with its reason, a broken rule of the round a FAIL."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from mllog_builder import events, write_log
from verification.report import verify
from verification.rules import load_rules

CLOSED = os.path.join(ROOT, "configs", "mlperf_closed.yaml")


def check(path, ruleset="2.1.0", config=CLOSED):
    report = verify([str(path)], config, ruleset=ruleset)
    return {f["check"]: f for f in report["files"][0]["findings"]}, report


def verdicts(result, verdict):
    return {name: f["reason"] for name, f in result.items() if f["verdict"] == verdict}


@pytest.mark.parametrize("change, style, check_name, reason", [
    (dict(train_samples_after_stop=True), "plain", "dataset_identity",
     "is logged after run_stop as the samples trained (0.1500 epoch of Criteo 1TB"),
    (dict(weights_before_init=True), "plain", "timestamps_monotonic", "time goes backwards"),
    (dict(last_eval_stop_missing=True), "plain", "eval_cadence",
     "2 eval_stop for 3 eval_accuracy (the last evaluation has none); reviewers accepted it"),
    (dict(epochs_count_evals=True), "plain", "eval_cadence", "epoch_num counts evaluations (1..3), not epochs"),
    (dict(no_seed=True), "plain", "seed_logged", "no 'seed' key: the package checker's seed check will flag"),
    (dict(), "no_event_type", "log_readable", "MLLOG lines without event_type (first: line 1)"),
    (dict(), "ranks", "log_readable", "rank prefixes [0]..[3]:"),
])
def test_each_accepted_variant_is_a_warning_with_its_reason(tmp_path, change, style, check_name, reason):
    path = write_log(tmp_path / "run.log", events(**change), style=style, ranks=4)
    result, report = check(path)
    if change.get("weights_before_init"):
        # Post-processed logs stamp the tensors before init_start (time_ms from the original run).
        lines = open(path).read().splitlines()
        first, init = json.loads(lines[0][9:]), json.loads(lines[10][9:])
        assert first["key"] == "weights_initialization" and init["key"] == "init_start"
    wrong_time = dict(weights_before_init=True)  # the builder's times are in line order: make one go back
    if change == wrong_time:
        path = write_log(tmp_path / "run.log", events(**change), backwards_at=10)
        result, report = check(path)
    assert verdicts(result, "fail") == {}, verdicts(result, "fail")
    assert check_name in verdicts(result, "warn"), verdicts(result, "warn")
    assert reason in result[check_name]["reason"]
    assert report["passed"] and report["counts"]["warn"] >= 1


def test_rank_repeats_are_read_once(tmp_path):
    path = write_log(tmp_path / "run.log", events(), style="ranks", ranks=8)
    result, _ = check(path)
    assert "14 events repeated by other ranks were read once" in result["log_readable"]["reason"]
    assert result["eval_cadence"]["verdict"] == "pass"  # each evaluation counted once, not 8 times


def test_crlf_and_program_output_are_read(tmp_path):
    result, report = check(write_log(tmp_path / "run.log", events(), style="crlf_noise"))
    assert result["log_readable"]["verdict"] == "pass"
    assert "lines end in CRLF" in result["log_readable"]["reason"]
    assert "lines that are not MLLOG (ignored)" in result["log_readable"]["reason"]
    assert report["passed"]


def test_cache_clear_after_init_start_is_a_warning(tmp_path):
    triples = events()
    triples[0], triples[1] = triples[1], triples[0]  # init_start, then cache_clear ...
    path = write_log(tmp_path / "run.log", triples, backwards_at=1)  # ... stamped before it (Intel v1.0)
    result, report = check(path)
    assert "'cache_clear'" in verdicts(result, "warn")["timestamps_monotonic"] and report["passed"]


def test_unreadable_line_is_named(tmp_path):
    path = tmp_path / "run.log"
    good = open(write_log(tmp_path / "good.log", events())).read()
    path.write_text(good + ':::MLLOG {"time_ms": 1, "key": \n')
    result, report = check(path)
    assert result["log_readable"]["verdict"] == "fail" and not report["passed"]
    bad_line = good.count("\n") + 1
    assert f"{path}:{bad_line}: the MLLOG line is not JSON" in result["log_readable"]["reason"]
    path.write_text(':::MLLOG {"time_ms": "soon", "key": "run_start", "value": null}\n')
    assert "run.log:1: time_ms 'soon' is not a number" in check(path)[0]["log_readable"]["reason"]


def test_older_rounds_do_not_require_what_they_did_not_have(tmp_path):
    # v0.7: no gradient_accumulation_steps, no weights_initialization, submission keys after init_stop.
    old = write_log(tmp_path / "old.log", events(no_tensors=True, drop_key="gradient_accumulation_steps",
                                                 submission_late=True))
    result, report = check(old, "0.7.0")
    assert verdicts(result, "fail") == {} and report["passed"], verdicts(result, "fail")
    assert result["weights_initialization_tensors"]["verdict"] == "skip"
    assert "accepted under training 0.7.0" in verdicts(result, "warn")["submission_keys_before_init_stop"]
    assert report["rcp"] == [] and "RCPs began with 1.0.0" in report["support"]["rcp"]
    no_seed = write_log(tmp_path / "noseed.log", events(no_seed=True))
    assert check(no_seed, "0.7.0")[0]["seed_logged"]["verdict"] == "info"  # 0.7.0 had no seed checker
    assert check(no_seed, "1.0.0")[0]["seed_logged"]["verdict"] == "warn"
    # The same log under 2.1.0: the official checker and our checks fail it, each for its rule.
    result, _ = check(old, "2.1.0")
    assert {"official_compliance", "weights_initialization_tensors", "submission_keys_before_init_stop",
            "closed_division_rules"} <= set(verdicts(result, "fail"))
    # 1.0.0 wants gradient accumulation but not the tensors; 1.1.0 wants both.
    no_tensors = write_log(tmp_path / "v10.log", events(no_tensors=True))
    assert verdicts(check(no_tensors, "1.0.0")[0], "fail") == {}
    assert "missing embeddings" in verdicts(check(no_tensors, "1.1.0")[0], "fail")["weights_initialization_tensors"]
    assert "gradient_accumulation_steps" in check(write_log(tmp_path / "v10b.log", events(
        no_tensors=True, drop_key="gradient_accumulation_steps")), "1.0.0")[0]["official_compliance"]["reason"]


def test_init_time_limit_is_the_rounds(tmp_path):
    # 25 minutes of initialisation: within 30 (1.0.0 on), over 0.7.0's 20.
    triples = events()
    stop = next(i for i, t in enumerate(triples) if t[0] == "init_stop")
    path = tmp_path / "run.log"
    write_log(path, triples)
    lines = open(path).read().splitlines()
    shifted = []
    for i, line in enumerate(lines):
        d = json.loads(line[len(":::MLLOG "):])
        if i >= stop:
            d["time_ms"] += 25 * 60000
        shifted.append(":::MLLOG " + json.dumps(d))
    path.write_text("\n".join(shifted) + "\n")
    assert check(path, "2.1.0")[0]["init_time"]["verdict"] == "pass"
    assert "more than 20" in verdicts(check(path, "0.7.0")[0], "fail")["init_time"]


def test_unknown_ruleset_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="ruleset .7.0.0.: DLRM was benchmarked under 0.7.0, 1.0.0"):
        load_rules("7.0.0")
    proc = subprocess.run([sys.executable, "-m", "verification", write_log(tmp_path / "r.log", events()),
                           "--ruleset", "6.1.0"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: '6.1.0'" in proc.stderr


def test_exit_status_is_one_only_on_fail(tmp_path):
    warned = write_log(tmp_path / "warned.log", events(no_seed=True))
    proc = subprocess.run([sys.executable, "-m", "verification", warned, "--out", str(tmp_path / "out"),
                           "--no-plots"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    assert "WARN  seed_logged" in proc.stdout and "verdict: PASS with 1 warnings" in proc.stdout
    assert "        rule: the package checker's seed check" in proc.stdout


def test_train_samples_at_the_end_must_be_plausible(tmp_path):
    # More samples than the evaluations say were trained: not the HugeCTR variant, other data.
    triples = [t for t in events() if t[0] != "train_samples"]
    stop = next(i for i, t in enumerate(triples) if t[0] == "run_stop")
    triples.insert(stop + 1, ("train_samples", 3 * 4195197692, {}))
    result, report = check(write_log(tmp_path / "run.log", triples))
    assert "other data: train_samples 12585593076 is not Criteo 1TB's" in verdicts(result, "fail")["dataset_identity"]
    # The dataset size logged after run_start (reference-style loaders, Inspur v0.7) is simply Criteo's.
    triples = [t for t in events() if t[0] != "train_samples"]
    start = next(i for i, t in enumerate(triples) if t[0] == "run_start")
    triples.insert(start + 1, ("train_samples", 4195197692, {}))
    assert check(write_log(tmp_path / "ref.log", triples))[0]["dataset_identity"]["verdict"] == "pass"


def test_a_round_the_installed_tools_lack_is_said_not_pretended(tmp_path, monkeypatch):
    from verification import official
    monkeypatch.setattr(official, "_PACKAGE", str(tmp_path / "no-mlperf-logging"))
    result, report = check(write_log(tmp_path / "run.log", events()), "2.0.0")
    assert result["official_compliance"]["verdict"] == "warn"
    assert "the installed mlperf-logging has no training_2.0.0/closed_dlrm.yaml: not run" in \
        result["official_compliance"]["reason"]
    assert report["support"]["compliance"] and report["passed"]
