"""Verify a set of result logs under one round's ruleset, and write the verdict as text and JSON."""

from __future__ import annotations

import json
import os
import tempfile

from reference import jsonfile
from reference.config import Config

from . import official, runsets, submission
from .checks import Claim, Finding, run_checks
from .rules import default_ruleset, load_rules, refusal
from .runlog import TOKEN, LogError, RunLog


def find_logs(paths: list) -> list:
    """Result logs named directly, or found under folders (results folders,
    submission packages): files with MLLOG lines named *.log or result_*.txt."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if name.endswith(".log") or (name.startswith("result_") and name.endswith(".txt")):
                        full = os.path.join(root, name)
                        with open(full, errors="replace") as f:
                            if TOKEN in f.read(1 << 16):
                                found.append(full)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def find_submissions(paths: list, benchmark: str) -> list:
    """Submission folders at or below the folders in ``paths`` (a folder with systems/ and results of ``benchmark``)."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            continue
        for root, dirs, _ in os.walk(path):
            dirs.sort()
            if submission.find_systems(root, benchmark):
                found.append(root)
                dirs[:] = []  # a submission's own folders are not submissions
    return found


def load_claim(config_path: str | None) -> Claim | None:
    if config_path is None:
        return None
    return Claim(config_path, Config.from_sources(config_path).as_dict())


def _verdict_of(findings: list) -> str:
    verdicts = {f["verdict"] for f in findings}
    return "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "pass"


def _check_file(path, rules, claim, reference, with_official) -> tuple:
    """(file entry, RunLog or None)."""
    try:
        run = RunLog.read(path)
    except LogError as e:
        finding = Finding("log_readable", "fail", str(e), None, "every MLLOG line is JSON with time_ms and key")
        return {"path": path, "findings": [finding.as_dict()]}, None
    named = run.first("submission_benchmark")  # a log without it fails submission_keys_before_init_stop
    refused = refusal(named.value, rules["ruleset"]) if named is not None else None
    if refused:
        finding = Finding("benchmark_round", "fail", refused, named.line if named else None,
                          "the log's submission_benchmark is the round's recommendation benchmark")
        return {"path": path, "findings": [finding.as_dict()]}, None
    if claim is None and run.config is not None:
        claim = Claim(f"the run's summary {os.path.splitext(path)[0]}.json", run.config)
    findings = []
    if with_official:
        rule = f"the official compliance checker (training {rules['ruleset']}, --werror) passes"
        result = official.compliance(path, rules["ruleset"])
        if result is None:
            findings.append(Finding("official_compliance", "warn", official.support(rules["ruleset"])["compliance"] +
                                    ": not run", None, rule))
        else:
            findings.append(Finding("official_compliance", "pass" if result.passed else "fail",
                                    "; ".join(result.reasons) or ("" if result.passed else "checker failed"),
                                    None, rule))
    findings += run_checks(run, rules, claim, reference)
    return {"path": path, "findings": [f.as_dict() for f in findings]}, run


def _on_criteo(file_entry: dict) -> bool:
    return any(f["check"] == "dataset_identity" and f["verdict"] != "fail" for f in file_entry["findings"])


def _compliant(file_entry: dict) -> bool:
    return all(f["verdict"] != "fail" for f in file_entry["findings"] if f["check"] == "official_compliance")


def _check_submission(folder, rules, runs_by_path, files_by_path, with_official, work_dir) -> dict:
    entry = {"folder": folder, "systems": []}
    benchmark = rules["benchmark"]
    for system in submission.find_systems(folder, benchmark):
        runs = [runs_by_path[p] for p in system.files if p in runs_by_path]
        findings = [submission.check_result_files(system, rules)]
        json_finding, desc = submission.check_systems_json(system, runs, rules)
        findings.append(json_finding)
        item = {"system": system.name, "results_dir": system.results_dir, "runs": len(system.files)}
        complete = len(system.files) == rules["result_count"]
        if with_official and desc is not None and complete:
            criteo = all(_on_criteo(files_by_path[p]) for p in system.files if p in files_by_path)
            checker, row = submission.official_package_checks(folder, system, rules, not criteo, work_dir)
            findings.append(checker)
            # As the summarizer: a run the compliance checker (or our reader) rejects is dropped.
            times = [(r.first("run_stop").time_ms - r.first("run_start").time_ms) / 60000 for r in runs
                     if _compliant(files_by_path[r.path]) and r.first("run_start") and r.first("run_stop")]
            factor = float(row.get(f"{benchmark}:rcp_scaling_factor") or 1.0)
            score, ours = submission.check_score(times, len(system.files) - len(times), factor, row, benchmark)
            findings.append(score)
            item.update(score_minutes=ours, summarizer=row)
        elif with_official and desc is not None:
            findings.append(Finding("package_checker", "skip", f"{len(system.files)} of {rules['result_count']} "
                                    f"result files: the package checker and the summarizer need a complete set",
                                    None, "the official package checker finds no error"))
        item["findings"] = [f.as_dict() for f in findings]
        entry["systems"].append(item)
    return entry


def verify(paths: list, config_path: str | None = None, with_official: bool = True,
           claims: dict | None = None, ruleset: str | None = None, work_dir: str | None = None) -> dict:
    """Check every log under ``paths`` under ``ruleset`` (default: the latest
    round of the benchmark the first log names). The config a run claims
    is, in order: ``claims[path]``, the file named by ``config_path``, or the
    run's own .json summary beside its log. Submission folders among ``paths``
    are also checked as wholes (the official tools' logs go to ``work_dir``)."""
    logs = find_logs(paths)
    ruleset = ruleset or default_ruleset(_benchmark_of_first(logs))
    rules = load_rules(ruleset)
    # The dcnv2 reference config may not be in every checkout; the closed-division check says so.
    reference_path = rules["closed_division"]["reference_config"]
    reference = Config.from_sources(reference_path).as_dict() if os.path.isfile(reference_path) else None
    claimed = load_claim(config_path)
    files, runs = [], []
    for path in logs:
        entry, run = _check_file(path, rules, (claims or {}).get(path, claimed), reference, with_official)
        files.append(entry)
        if run is not None:
            runs.append(run)
    files_by_path = {f["path"]: f for f in files}
    runs_by_path = {r.path: r for r in runs}
    with tempfile.TemporaryDirectory() as tmp:
        submissions = [_check_submission(folder, rules, runs_by_path, files_by_path, with_official, work_dir or tmp)
                       for folder in find_submissions(paths, rules["benchmark"])]
    rcp = []
    if with_official:
        divisions = {}
        for entry in submissions:
            for system in entry["systems"]:
                desc_division = _json_division(os.path.join(entry["folder"], "systems", system["system"] + ".json"))
                divisions[os.path.abspath(system["results_dir"])] = desc_division
        for (folder, batch), members in runsets.group_runs(runs).items():
            if len(members) < 2 and os.path.abspath(folder) not in divisions:
                continue  # a lone log is no set
            # The package checker takes the division from the systems JSON; a plain folder, from the logs.
            division = divisions.get(os.path.abspath(folder)) or members[0].division
            criteo = all(_on_criteo(files_by_path[run.path]) for run in members)
            entry = runsets.rcp_verdict(members, batch, rules, division, criteo)
            if entry["verdict"] == "warn" and os.path.abspath(folder) in divisions:
                entry["verdict"] = "skip"  # the submission's result_files finding already warns of the count
            rcp.append({"folder": folder, **entry})
    all_findings = [f for file in files for f in file["findings"]] + rcp + \
        [f for s in submissions for system in s["systems"] for f in system["findings"]]
    counts = {v: sum(f["verdict"] == v for f in all_findings) for v in ("fail", "warn")}
    return {"ruleset": ruleset, "support": official.support(ruleset), "files": files, "rcp": rcp,
            "submissions": submissions, "counts": counts, "failed_checks": counts["fail"],
            "passed": counts["fail"] == 0 and bool(files), "runs": runs}


def _benchmark_of_first(logs: list) -> str | None:
    for path in logs:
        try:
            return RunLog.read(path).value("submission_benchmark")
        except LogError:
            continue  # reported as unreadable where it is checked
    return None


def _json_division(path: str) -> str | None:
    try:
        with open(path) as f:
            return json.load(f).get("division")
    except (OSError, ValueError, AttributeError):
        return None


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _lines(f: dict) -> list:
    where = f" (line {f['line']})" if f.get("line") else ""
    reason = f": {f['reason']}" if f["reason"] else ""
    lines = [f"  {f['verdict'].upper():<5} {f['check']}{reason}{where}"]
    if f["verdict"] in ("fail", "warn") and f.get("rule"):
        lines.append(f"        rule: {f['rule']}")
    return lines


def render_text(report: dict) -> str:
    """The verdict as text, with the rule under each FAIL and WARN."""
    lines = [f"ruleset: training {report['ruleset']}"]
    for why in report["support"].values():
        if why:
            lines.append(f"  note: {why}")
    for file in report["files"]:
        lines.append(f"{file['path']}: {_verdict_of(file['findings']).upper()}")
        for f in file["findings"]:
            lines += _lines(f)
    for r in report["rcp"]:
        lines.append(f"RCP check, {_runs(r['runs'])} at global batch {r['global_batch_size']} in {r['folder']}: "
                     f"{r['verdict'].upper()}: {r['reason']}")
        if r["verdict"] in ("fail", "warn"):
            lines.append(f"        rule: {r['rule']}")
        if r.get("supplied"):
            lines.append(f"  note: {r['supplied']}")
    for s in report["submissions"]:
        for system in s["systems"]:
            lines.append(f"submission {s['folder']}, system {system['system']} ({_runs(system['runs'])}): "
                         f"{_verdict_of(system['findings']).upper()}")
            for f in system["findings"]:
                lines += _lines(f)
    if not report["files"]:
        lines.append("no result logs found")
    counts = report["counts"]
    if counts["fail"]:
        verdict = f"FAIL ({counts['fail']} failed checks, {counts['warn']} warnings)"
    else:
        verdict = "PASS" + (f" with {counts['warn']} warnings (accepted deviations, see WARN)"
                            if counts["warn"] else "")
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)


def write_json(report: dict, path: str) -> None:
    jsonfile.write_json(path, {k: v for k, v in report.items() if k != "runs"})
