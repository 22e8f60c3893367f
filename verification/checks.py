"""Checks of one result log that the official compliance checker does not make
(or makes with a message a reviewer cannot act on), under one round's rules.

Each check returns a Finding with one of these verdicts:
  fail  a rule of the round is broken: the result is invalid;
  warn  a deviation that the round's reviewers accepted, or that an official tool will flag;
  pass  the rule holds;  skip  the rule does not apply (with why);  info  a figure, not a verdict.
Every finding names the rule it applies and, where there is one, the log line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise

from .runlog import RunLog


@dataclass
class Finding:
    check: str
    verdict: str
    reason: str = ""
    line: int | None = None
    rule: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Claim:
    """The configuration a run claims: where it came from, and its values."""
    source: str
    values: dict


def rule_finding(name, rule):
    """The finding constructor of one check: every finding it makes carries the check's rule."""
    def make(verdict, reason="", line=None):
        return Finding(name, verdict, reason, line, rule)
    return make


def _epoch(epoch_num) -> str:
    return f"{epoch_num:.4f}" if isinstance(epoch_num, float) else repr(epoch_num)


def target_of(run: RunLog, rules: dict, claim: Claim | None) -> float:
    if claim is not None and claim.values.get("auc_threshold") is not None:
        return float(claim.values["auc_threshold"])
    return float(rules["target_auc"])


def check_log_readable(run, rules, claim):
    f = rule_finding("log_readable", "every MLLOG line is JSON with time_ms, key, value, metadata and event_type")
    v = run.variants
    warnings, notes = [], []
    if v.no_event_type:
        warnings.append(f"{len(v.no_event_type)} MLLOG lines without event_type (first: line {v.no_event_type[0]}); "
                        f"the official checker ignores the field, reviewers accepted such logs (Google v0.7)")
    if v.rank_repeats:
        warnings.append(f"rank prefixes [{min(v.ranks)}]..[{max(v.ranks)}]: {len(v.rank_repeats)} events repeated by "
                        f"other ranks were read once (first repeat: line {v.rank_repeats[0]}); the official checker "
                        f"counts every copy")
    elif v.ranks:
        notes.append(f"rank prefixes [{min(v.ranks)}]..[{max(v.ranks)}]")
    if v.crlf_lines:
        notes.append(f"{v.crlf_lines} lines end in CRLF")
    if v.other_lines:
        notes.append(f"{v.other_lines} lines that are not MLLOG (ignored)")
    reason = "; ".join(warnings + notes) or f"{len(run.events)} events"
    first = (v.no_event_type or v.rank_repeats or [None])[0]
    return f("warn", reason, first) if warnings else f("pass", reason)


def check_seed_logged(run, rules, claim):
    f = rule_finding("seed_logged", "the package checker's seed check (rounds 1.0.0 on, closed division) wants one "
                                    "integer seed per run; no round's compliance checker requires it")
    seeds = run.all("seed")
    # Where no seed check runs (0.7.0, the open division) a missing seed is only noted.
    level = "warn" if rules["seed_checker"] and run.division == "closed" else "info"
    if not seeds:
        if level == "info":
            return f(level, f"no 'seed' key; no seed check applies (training {rules['ruleset']}, "
                            f"division {run.division})")
        return f(level, "no 'seed' key: the package checker's seed check will flag this run (NVIDIA's accepted "
                        "logs have none)")
    if not isinstance(seeds[0].value, int) or isinstance(seeds[0].value, bool):
        return f(level, f"seed {seeds[0].value!r} is not an integer" +
                 (": the package checker's seed check will flag it" if level == "warn" else ""), seeds[0].line)
    return f("pass", f"seed {seeds[0].value}", seeds[0].line)


def check_submission_keys_before_init_stop(run, rules, claim):
    required = rules["submission_keys_before_init_stop"]
    why = ": its init-time limit depends on submission_division" if required else ""
    f = rule_finding("submission_keys_before_init_stop",
                     f"every submission_* key is logged{' before init_stop' if required else ''} (training "
                     f"{rules['ruleset']}{why})")
    init_stop = run.first("init_stop")
    limit = init_stop.line if init_stop else math.inf
    late = []
    for key in rules["submission_keys"]:
        event = run.first(key)
        if event is None:
            return f("fail", f"'{key}' is missing")
        if event.line > limit:
            late.append(event)
    if late:
        reason = (f"'{late[0].key}' is logged after init_stop (line {init_stop.line})" +
                  (f" and {len(late) - 1} more" if len(late) > 1 else ""))
        if required:
            return f("fail", reason + f"; training {rules['ruleset']} needs every submission key before it",
                     late[0].line)
        return f("warn", reason + f"; accepted under training {rules['ruleset']}, the 2.0.0 checker would fail it",
                 late[0].line)
    return f("pass")


def check_weights_initialization(run, rules, claim):
    f = rule_finding("weights_initialization_tensors",
                     f"closed division: weights_initialization once for each of the "
                     f"{len(rules['weights_initialization_tensors'])} tensors (dlrm, training 1.1.0 on)")
    if run.division != "closed":
        return f("skip", "open division: any architecture")
    logged = [e.metadata.get("tensor") for e in run.all("weights_initialization")]
    if not rules["weights_initialization_required"]:
        return f("skip", f"training {rules['ruleset']} does not require weights_initialization "
                         f"({len(logged)} logged)")
    expected = rules["weights_initialization_tensors"]
    missing = [t for t in expected if t not in logged]
    extra = [t for t in logged if t not in expected]
    repeated = sorted({t for t in logged if t is not None and logged.count(t) > 1})
    if missing or extra or repeated:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unexpected {', '.join(map(str, extra))}"] if extra else []) + \
                ([f"repeated {', '.join(repeated)}"] if repeated else [])
        first = run.first("weights_initialization")
        return f("fail", "; ".join(parts), first.line if first else None)
    return f("pass", f"{len(expected)} tensors")


def check_monotonic_timestamps(run, rules, claim):
    f = rule_finding("timestamps_monotonic", "time_ms does not go backwards (no round's checker tests it; time to "
                                             "train is run_stop - run_start)")
    backwards = [(b, a) for b, a in pairwise(run.events) if a.time_ms < b.time_ms]
    if not backwards:
        return f("pass")
    before, after = backwards[0]
    reason = (f"time goes backwards: '{after.key}' at {after.time_ms:.0f} ms comes after '{before.key}' at "
              f"{before.time_ms:.0f} ms (line {before.line})")
    if len(backwards) > 1:
        reason += f", and {len(backwards) - 1} more time{'s' if len(backwards) > 2 else ''}"
    return f("warn", reason + "; reviewers accepted such logs (post-processed logs stamp weights_initialization "
                              "before init_start, cache_clear after it)", after.line)


def check_init_time(run, rules, claim):
    division = run.division if run.division in ("closed", "open") else "closed"
    limit = rules["max_init_minutes"][division]
    f = rule_finding("init_time", f"init_stop at most {limit} min after the first init_start ({division} division, "
                                  f"training {rules['ruleset']})")
    starts, stop = run.all("init_start"), run.first("init_stop")
    if not starts or stop is None:
        return f("fail", "init_start or init_stop is missing")
    minutes = (stop.time_ms - min(e.time_ms for e in starts)) / 60000
    if minutes > limit:
        return f("fail", f"initialisation took {minutes:.1f} min, more than {limit}", stop.line)
    return f("pass", f"{minutes * 60:.1f} s", stop.line)


def check_time_to_train(run, rules, claim):
    f = rule_finding("time_to_train", "one run_start and one run_stop, run_stop not before run_start (the score is "
                                      "run_stop - run_start)")
    starts, stops = run.all("run_start"), run.all("run_stop")
    if len(starts) != 1 or len(stops) != 1:
        return f("fail", f"{len(starts)} run_start and {len(stops)} run_stop: time to train is not computable")
    minutes = (stops[0].time_ms - starts[0].time_ms) / 60000
    if minutes < 0:
        return f("fail", f"run_stop is {-minutes:.2f} min before run_start: time to train is not computable",
                 stops[0].line)
    return f("info", f"{minutes:.4f} min", stops[0].line)


def check_target_reached(run, rules, claim):
    target = target_of(run, rules, claim)
    f = rule_finding("target_reached", f"an evaluation before run_stop reaches AUC {target}")
    evals = run.evaluations()
    if not evals:
        return f("fail", "no eval_accuracy in the log")
    scored = run.scored_evaluations()
    first = next((e for e in scored if e[1] >= target), None)
    if first is not None:
        return f("pass", f"AUC {first[1]:.5f} >= {target} at epoch {_epoch(first[0])}", first[2].line)
    late = next((e for e in evals if e[1] >= target), None)
    if late is not None:
        return f("fail", f"AUC {late[1]:.5f} >= {target} only at epoch {_epoch(late[0])}, after run_stop (line "
                         f"{run.run_stop_line()}): it does not count", late[2].line)
    best = max(evals, key=lambda x: x[1])
    return f("fail", f"AUC never reached {target}: best {best[1]:.5f} at epoch {_epoch(best[0])}", best[2].line)


def check_run_stop_status(run, rules, claim):
    target = target_of(run, rules, claim)
    f = rule_finding("run_stop_status", f"run_stop status success exactly when an evaluation reached AUC {target}, "
                                        f"and the run stops at the first such evaluation")
    stops = run.all("run_stop")
    if len(stops) != 1:
        return f("fail", f"expected one run_stop, found {len(stops)}")
    status = stops[0].metadata.get("status")
    evals = run.scored_evaluations()
    reached = next((e for e in evals if e[1] >= target), None)
    if status == "success" and reached is None:
        return f("fail", f"status success, but no evaluation reached AUC {target} before run_stop", stops[0].line)
    if status != "success" and reached is not None:
        return f("fail", f"status {status!r}, but AUC {reached[1]:.5f} >= {target} at epoch {_epoch(reached[0])} (line "
                         f"{reached[2].line})", stops[0].line)
    if reached is not None and reached[2] is not evals[-1][2]:
        return f("fail", f"the run went on after reaching the target at epoch {_epoch(reached[0])} (line "
                         f"{reached[2].line}); it must stop at the first such evaluation", stops[0].line)
    return f("pass", f"status {status}", stops[0].line)


def _counts_evaluations(epochs: list) -> bool:
    """Google v0.7 numbers its evaluations 1, 2, 3, ... in epoch_num."""
    return len(epochs) > 1 and all(isinstance(e, int) for e in epochs) and epochs == list(range(1, len(epochs) + 1))


def check_eval_cadence(run, rules, claim):
    every, first = rules["eval_every_epochs"], rules["first_epoch_num"]
    f = rule_finding("eval_cadence", f"an evaluation every {every} epoch (fractional epoch_num from {first}), each "
                                     f"with eval_start and eval_stop")
    tol = rules["eval_spacing_tolerance"] * every
    evals = run.scored_evaluations()
    if not evals:
        return f("fail", "no eval_accuracy before run_stop")
    warnings = []
    epochs = [e[0] for e in evals]
    if _counts_evaluations(epochs):
        warnings.append(f"epoch_num counts evaluations (1..{len(epochs)}), not epochs, so the spacing cannot be "
                        f"checked; reviewers accepted it (Google v0.7)")
    else:
        previous = float(first)
        for epoch_num, _, event in evals:
            if not isinstance(epoch_num, (int, float)) or epoch_num <= first:
                return f("fail", f"epoch_num {epoch_num!r} is not a fractional epoch counted from {first} "
                                 f"(> {first}; training {rules['ruleset']}, {rules['benchmark']})", event.line)
            gap = epoch_num - previous
            at_epoch_end = abs(epoch_num - round(epoch_num)) < 1e-9
            if gap > every + tol or (gap < every - tol and not at_epoch_end):
                return f("fail", f"evaluation at epoch {epoch_num:.4f} comes {gap:.4f} epoch after the previous one; "
                                 f"expected every {every} epoch", event.line)
            previous = epoch_num
    for key in ("eval_start", "eval_stop"):
        count = sum(e.line < run.run_stop_line() for e in run.all(key))
        if count == len(evals) - 1:
            warnings.append(f"{count} {key} for {len(evals)} eval_accuracy (the last evaluation has none); "
                            f"reviewers accepted it")
        elif count != len(evals):
            return f("fail", f"{count} {key} but {len(evals)} eval_accuracy")
    if warnings:
        return f("warn", "; ".join(warnings))
    return f("pass", f"{len(evals)} evaluations every ~{every} epoch")


def _synthetic_source(run: RunLog, claim: Claim | None) -> str | None:
    config = run.config or (claim.values if claim else {})
    data_dir = config.get("data_dir")
    if data_dir and os.path.isfile(os.path.join(data_dir, "synthetic.json")):
        return data_dir
    if str(config.get("train_file", "")).startswith("synthetic_"):
        return data_dir or "unknown folder"
    return None


def _samples_trained(run: RunLog, train, expected: dict, first_epoch_num: int) -> str | None:
    """Why ``train`` reads as the samples trained (the HugeCTR-based logs' way), or None.
    They log it at the end of the run (v0.7: just before run_stop, later: after it); it
    cannot exceed the epochs the evaluations say were trained (with one evaluation
    interval of slack), and the evaluation set must be Criteo 1TB's."""
    event, run_start = run.first("train_samples"), run.first("run_start")
    if event is None or run_start is None or event.line < run_start.line:
        return None
    if not isinstance(train, int) or isinstance(train, bool) or train <= 0:
        return None
    evals = run.value("eval_samples")
    if evals != expected["eval_samples"] and evals not in expected["accepted_eval_samples"]:
        return None
    last = next((e[0] for e in reversed(run.scored_evaluations()) if isinstance(e[0], float)), None)
    epochs = train / expected["train_samples"]
    if last is None or epochs > last - first_epoch_num + 0.05:
        return None
    when = "after run_stop" if event.line > run.run_stop_line() else "at the end of the run"
    return (f"train_samples {train:,} is logged {when} as the samples trained ({epochs:.4f} epoch of Criteo 1TB; "
            f"the last evaluation is at epoch_num {last}), not the dataset size: accepted in HugeCTR-based logs")


def check_dataset_identity(run, rules, claim):
    expected = rules["criteo_1tb"]
    f = rule_finding("dataset_identity", f"Criteo 1TB: train_samples {expected['train_samples']:,} (the dataset size, "
                                         f"or the samples trained when logged at the end of the run), eval_samples "
                                         f"{expected['eval_samples']:,}")
    train_event, eval_event = run.first("train_samples"), run.first("eval_samples")
    train = train_event.value if train_event else None
    evals = eval_event.value if eval_event else None
    synthetic = _synthetic_source(run, claim)
    warnings, other = [], []
    trained = None if synthetic or train == expected["train_samples"] else \
        _samples_trained(run, train, expected, rules["first_epoch_num"])
    if trained:
        warnings.append(trained)
    elif train != expected["train_samples"]:
        other.append(f"train_samples {train}")
    if evals in expected["accepted_eval_samples"]:
        warnings.append(f"eval_samples {evals:,}: {expected['accepted_eval_samples'][evals]}")
    elif evals != expected["eval_samples"]:
        other.append(f"eval_samples {evals}")
    line = (train_event or eval_event).line if (train_event or eval_event) else None
    if other:
        counts = (f"{' and '.join(other)} {'is' if len(other) == 1 else 'are'} not Criteo 1TB's "
                  f"({expected['train_samples']} / {expected['eval_samples']})")
        if synthetic is not None:
            return f("fail", f"synthetic data (from {synthetic}): {counts}; a valid run but not a valid MLPerf "
                             f"submission", line)
        return f("fail", f"other data: {counts}; this run is not a valid MLPerf submission", line)
    if warnings:
        return f("warn", "; ".join(warnings), line)
    return f("pass", "Criteo 1TB sample counts", line)


def check_hyperparameters_match_config(run, rules, claim):
    f = rule_finding("hyperparameters_match_config", "each logged hyperparameter equals the config the run claims")
    if claim is None:
        return f("skip", "no claimed config: pass --config FILE, or keep the run's .json summary beside the log")
    mismatches = []
    for logged_key, config_key in rules["logged_hyperparameters"].items():
        if logged_key.startswith("sgd_") and claim.values.get("optimizer") != "sgd":  # dlrm logs them for sgd only
            continue
        event = run.first(logged_key)
        expected = claim.values.get(config_key)
        if event is None:
            mismatches.append((f"{logged_key} is not logged (config {config_key}={expected!r})", None))
        elif event.value != expected:
            mismatches.append((f"{logged_key} logged {event.value!r}, config {config_key}={expected!r}", event.line))
    if mismatches:
        reason = "; ".join(m for m, _ in mismatches) + f" ({claim.source})"
        return f("fail", reason, next((line for _, line in mismatches if line), None))
    return f("pass", f"equal to {claim.source}")


def check_closed_division_rules(run, rules, claim, reference: dict | None = None):
    closed = rules["closed_division"]
    fixed = ", ".join(f"{k} {v}" for k, v in closed["fixed"].items())
    f = rule_finding("closed_division_rules",
                     f"closed division: optimizer {closed['optimizer']}, {fixed}, no gradient accumulation, and only "
                     f"{', '.join(closed['may_differ'])} may differ from the reference")
    if run.division != "closed":
        return f("skip", f"division {run.division!r}")
    problems = []
    opt = run.first("opt_name")
    if opt is not None and str(opt.value).lower() != closed["optimizer"]:
        problems.append((f"optimizer {opt.value!r}; the closed division requires {closed['optimizer']}", opt.line))
    for key, required in closed["fixed"].items():
        event = run.first(key)
        if event is None or event.value != required:
            problems.append((f"{key} {event.value if event else 'not logged'}; the closed division requires "
                             f"{required}", event.line if event else None))
    accumulation = run.first("gradient_accumulation_steps")
    if accumulation is None and rules["gradient_accumulation_required"]:
        problems.append((f"gradient_accumulation_steps is not logged (training {rules['ruleset']} requires it)", None))
    elif accumulation is not None and accumulation.value != closed["gradient_accumulation_steps"]:
        problems.append((f"gradient_accumulation_steps {accumulation.value}", accumulation.line))
    if claim is not None and reference is not None:
        free = set(closed["may_differ"]) | set(closed["not_hyperparameters"]) | set(closed["implementation_choices"])
        if run.value("train_samples") != rules["criteo_1tb"]["train_samples"]:
            free |= set(closed["dataset_keys"])  # other data has other tables: dataset_identity reports it
        for key, ref_value in reference.items():
            if key in free or key not in claim.values:
                continue
            if claim.values[key] != ref_value:
                problems.append((f"{key}={claim.values[key]!r} differs from the reference {ref_value!r}; only "
                                 f"{', '.join(closed['may_differ'])} may", None))
    if problems:
        return f("fail", "; ".join(p for p, _ in problems), next((line for _, line in problems if line), None))
    if claim is not None and reference is None:
        return f("pass", f"{os.path.basename(closed['reference_config'])} is not in this checkout: the other "
                         f"hyperparameters are not compared with the reference")
    return f("pass")


def epochs_to_target(run, rules, claim) -> Finding:
    target = target_of(run, rules, claim)
    f = rule_finding("epochs_to_target", "a figure: epochs to the first evaluation at the target, and time to train")
    first = next((e for e in run.scored_evaluations() if e[1] >= target), None)
    if first is None:
        return f("info", "target not reached")
    start, stop = run.first("run_start"), run.first("run_stop")
    minutes = (stop.time_ms - start.time_ms) / 60000 if start and stop else float("nan")
    epochs = (f"{first[0] - rules['first_epoch_num']:.4f} epochs (epoch_num {first[0]:.4f} in the log)"
              if isinstance(first[0], float) else f"epoch_num {first[0]} in the log")
    return f("info", f"{epochs}; time to train {minutes:.2f} min", first[2].line)


CHECKS: list[Callable] = [
    check_log_readable, check_submission_keys_before_init_stop, check_seed_logged, check_weights_initialization,
    check_monotonic_timestamps, check_init_time, check_time_to_train, check_target_reached, check_run_stop_status,
    check_eval_cadence, check_dataset_identity, check_hyperparameters_match_config,
]


def run_checks(run: RunLog, rules: dict, claim: Claim | None, reference: dict | None) -> list:
    findings = [check(run, rules, claim) for check in CHECKS]
    findings.append(check_closed_division_rules(run, rules, claim, reference))
    findings.append(epochs_to_target(run, rules, claim))
    return findings
