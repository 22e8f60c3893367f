"""Checks of one result log that the official compliance checker does not make
(or makes with a message a reviewer cannot act on). Each check has a name and
returns a Finding: pass, fail (with the reason and the log line), skip (not
applicable, with why), or info (a figure, not a verdict)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from .runlog import RunLog


@dataclass
class Finding:
    check: str
    verdict: str  # pass | fail | skip | info
    reason: str = ""
    line: Optional[int] = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Claim:
    """The configuration a run claims: where it came from, and its values."""
    source: str
    values: dict


def _pass(name, reason=""):
    return Finding(name, "pass", reason)


def _fail(name, reason, line=None):
    return Finding(name, "fail", reason, line)


def target_of(run: RunLog, rules: dict, claim: Optional[Claim]) -> float:
    if claim is not None and claim.values.get("auc_threshold") is not None:
        return float(claim.values["auc_threshold"])
    return float(rules["target_auc"])


def check_seed_logged(run, rules, claim):
    seeds = run.all("seed")
    if not seeds:
        return _fail("seed_logged", "no 'seed' key: the package checker's seed check needs it in every run")
    if not isinstance(seeds[0].value, int) or isinstance(seeds[0].value, bool):
        return _fail("seed_logged", f"seed {seeds[0].value!r} is not an integer", seeds[0].line)
    return _pass("seed_logged", f"seed {seeds[0].value}")


def check_submission_keys_before_init_stop(run, rules, claim):
    init_stop = run.first("init_stop")
    limit = init_stop.line if init_stop else math.inf
    for key in rules["submission_keys"]:
        event = run.first(key)
        if event is None:
            return _fail("submission_keys_before_init_stop", f"'{key}' is missing")
        if event.line > limit:
            return _fail("submission_keys_before_init_stop",
                         f"'{key}' is logged after init_stop (line {init_stop.line}); the rules need every "
                         f"submission key before it", event.line)
    return _pass("submission_keys_before_init_stop")


def check_weights_initialization(run, rules, claim):
    if run.division != "closed":
        return Finding("weights_initialization_tensors", "skip", "open division: any architecture")
    logged = [e.metadata.get("tensor") for e in run.all("weights_initialization")]
    expected = rules["weights_initialization_tensors"]
    missing = [t for t in expected if t not in logged]
    extra = [t for t in logged if t not in expected]
    repeated = sorted({t for t in logged if logged.count(t) > 1})
    if missing or extra or repeated:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unexpected {', '.join(map(str, extra))}"] if extra else []) + \
                ([f"repeated {', '.join(repeated)}"] if repeated else [])
        return _fail("weights_initialization_tensors", "; ".join(parts))
    return _pass("weights_initialization_tensors", f"{len(expected)} tensors")


def check_monotonic_timestamps(run, rules, claim):
    for before, after in zip(run.events, run.events[1:]):
        if after.time_ms < before.time_ms:
            return _fail("timestamps_monotonic",
                         f"time goes backwards: '{after.key}' at {after.time_ms} ms comes after '{before.key}' "
                         f"at {before.time_ms} ms (line {before.line})", after.line)
    return _pass("timestamps_monotonic")


def check_init_time(run, rules, claim):
    starts, stop = run.all("init_start"), run.first("init_stop")
    if not starts or stop is None:
        return _fail("init_time", "init_start or init_stop is missing")
    minutes = (stop.time_ms - min(e.time_ms for e in starts)) / 60000
    if minutes > rules["max_init_minutes"]:
        return _fail("init_time", f"initialisation took {minutes:.1f} min, more than {rules['max_init_minutes']}",
                     stop.line)
    return _pass("init_time", f"{minutes * 60:.1f} s")


def check_target_reached(run, rules, claim):
    target = target_of(run, rules, claim)
    evals = run.evaluations()
    if not evals:
        return _fail("target_reached", "no eval_accuracy in the log")
    best = max(evals, key=lambda x: x[1])
    first = next((e for e in evals if e[1] >= target), None)
    if first is None:
        return _fail("target_reached", f"AUC never reached {target}: best {best[1]:.5f} at epoch {best[0]:.4f}",
                     best[2].line)
    return _pass("target_reached", f"AUC {first[1]:.5f} >= {target} at epoch {first[0]:.4f}")


def check_run_stop_status(run, rules, claim):
    stops = run.all("run_stop")
    if len(stops) != 1:
        return _fail("run_stop_status", f"expected one run_stop, found {len(stops)}")
    status = stops[0].metadata.get("status")
    target = target_of(run, rules, claim)
    evals = run.evaluations()
    reached = next((e for e in evals if e[1] >= target), None)
    if status == "success" and reached is None:
        return _fail("run_stop_status", f"status success, but no evaluation reached AUC {target}", stops[0].line)
    if status != "success" and reached is not None:
        return _fail("run_stop_status", f"status {status!r}, but AUC {reached[1]:.5f} >= {target} at epoch "
                                        f"{reached[0]:.4f} (line {reached[2].line})", stops[0].line)
    if reached is not None and reached[2] is not evals[-1][2]:
        return _fail("run_stop_status", f"the run went on after reaching the target at epoch {reached[0]:.4f} "
                                        f"(line {reached[2].line}); it must stop at the first such evaluation",
                     stops[0].line)
    return _pass("run_stop_status", f"status {status}")


def check_eval_cadence(run, rules, claim):
    every = rules["eval_every_epochs"]
    tol = rules["eval_spacing_tolerance"] * every
    evals = run.evaluations()
    if not evals:
        return _fail("eval_cadence", "no eval_accuracy in the log")
    previous = 1.0
    for epoch_num, _, event in evals:
        if not isinstance(epoch_num, (int, float)) or epoch_num <= 1.0:
            return _fail("eval_cadence", f"epoch_num {epoch_num!r} is not a 1-based fractional epoch (> 1.0)",
                         event.line)
        gap = epoch_num - previous
        at_epoch_end = abs(epoch_num - round(epoch_num)) < 1e-9
        if gap > every + tol or (gap < every - tol and not at_epoch_end):
            return _fail("eval_cadence", f"evaluation at epoch {epoch_num:.4f} comes {gap:.4f} epoch after the "
                                         f"previous one; expected every {every} epoch", event.line)
        previous = epoch_num
    for key in ("eval_start", "eval_stop"):
        if len(run.all(key)) != len(evals):
            return _fail("eval_cadence", f"{len(run.all(key))} {key} but {len(evals)} eval_accuracy")
    return _pass("eval_cadence", f"{len(evals)} evaluations every ~{every} epoch")


def _synthetic_source(run: RunLog, claim: Optional[Claim]) -> Optional[str]:
    config = run.config or (claim.values if claim else {})
    data_dir = config.get("data_dir")
    if data_dir and os.path.isfile(os.path.join(data_dir, "synthetic.json")):
        return data_dir
    if config.get("train_file", "").startswith("synthetic_"):
        return data_dir or "unknown folder"
    return None


def check_dataset_identity(run, rules, claim):
    expected = rules["criteo_1tb"]
    train, evals = run.value("train_samples"), run.value("eval_samples")
    if train == expected["train_samples"] and evals == expected["eval_samples"]:
        return _pass("dataset_identity", "Criteo 1TB sample counts")
    counts = (f"train_samples {train}, eval_samples {evals} are not Criteo 1TB's {expected['train_samples']} / "
              f"{expected['eval_samples']}")
    line = run.first("train_samples").line if run.first("train_samples") else None
    synthetic = _synthetic_source(run, claim)
    if synthetic is not None:
        return _fail("dataset_identity", f"synthetic data (from {synthetic}): {counts}; a valid run but not a "
                                         f"valid MLPerf submission", line)
    return _fail("dataset_identity", f"other data: {counts}; this run is not a valid MLPerf submission", line)


def check_hyperparameters_match_config(run, rules, claim):
    if claim is None:
        return Finding("hyperparameters_match_config", "skip",
                       "no claimed config: pass --config FILE, or keep the run's .json summary beside the log")
    mismatches = []
    for logged_key, config_key in rules["logged_hyperparameters"].items():
        if logged_key.startswith("sgd_") and claim.values.get("optimizer") != "sgd":
            continue
        event = run.first(logged_key)
        expected = claim.values.get(config_key)
        if event is None:
            mismatches.append((f"{logged_key} is not logged (config {config_key}={expected!r})", None))
        elif event.value != expected:
            mismatches.append((f"{logged_key} logged {event.value!r}, config {config_key}={expected!r}", event.line))
    if mismatches:
        reason = "; ".join(m for m, _ in mismatches) + f" ({claim.source})"
        return _fail("hyperparameters_match_config", reason, mismatches[0][1])
    return _pass("hyperparameters_match_config", f"equal to {claim.source}")


def check_closed_division_rules(run, rules, claim, reference: Optional[dict] = None):
    if run.division != "closed":
        return Finding("closed_division_rules", "skip", f"division {run.division!r}")
    closed = rules["closed_division"]
    problems = []
    opt = run.first("opt_name")
    if opt is not None and opt.value != closed["optimizer"]:
        problems.append((f"optimizer {opt.value!r}; the closed division requires {closed['optimizer']}", opt.line))
    power = run.first("sgd_opt_learning_rate_decay_poly_power")
    if power is None or power.value != closed["decay_power"]:
        problems.append((f"decay power {power.value if power else 'not logged'}; the closed division requires "
                         f"{closed['decay_power']}", power.line if power else None))
    accumulation = run.first("gradient_accumulation_steps")
    if accumulation is not None and accumulation.value != closed["gradient_accumulation_steps"]:
        problems.append((f"gradient_accumulation_steps {accumulation.value}", accumulation.line))
    if claim is not None and reference is not None:
        free = set(closed["may_differ"]) | set(closed["not_hyperparameters"])
        if run.value("train_samples") != rules["criteo_1tb"]["train_samples"]:
            free |= set(closed["dataset_keys"])  # other data has other tables: dataset_identity reports it
        for key, ref_value in reference.items():
            if key in free or key not in claim.values:
                continue
            if claim.values[key] != ref_value:
                problems.append((f"{key}={claim.values[key]!r} differs from the reference {ref_value!r}; only "
                                 f"{', '.join(closed['may_differ'])} may", None))
    if problems:
        return _fail("closed_division_rules", "; ".join(p for p, _ in problems),
                     next((line for _, line in problems if line), None))
    return _pass("closed_division_rules")


def epochs_to_target(run, rules, claim) -> Finding:
    target = target_of(run, rules, claim)
    first = next((e for e in run.evaluations() if e[1] >= target), None)
    if first is None:
        return Finding("epochs_to_target", "info", "target not reached")
    start, stop = run.first("run_start"), run.first("run_stop")
    minutes = (stop.time_ms - start.time_ms) / 60000 if start and stop else float("nan")
    return Finding("epochs_to_target", "info", f"{first[0] - 1:.4f} epochs (epoch_num {first[0]:.4f} in the "
                                               f"log); time to train {minutes:.2f} min", first[2].line)


CHECKS: list[Callable] = [
    check_submission_keys_before_init_stop, check_seed_logged, check_weights_initialization,
    check_monotonic_timestamps, check_init_time, check_target_reached, check_run_stop_status,
    check_eval_cadence, check_dataset_identity, check_hyperparameters_match_config,
]


def run_checks(run: RunLog, rules: dict, claim: Optional[Claim], reference: Optional[dict]) -> list:
    findings = [check(run, rules, claim) for check in CHECKS]
    findings.append(check_closed_division_rules(run, rules, claim, reference))
    findings.append(epochs_to_target(run, rules, claim))
    return findings
