"""A submission folder, checked as a whole: ORG/results/SYSTEM/BENCHMARK/result_*.txt
(BENCHMARK: dlrm or dlrm_dcnv2, the round's; numbered from 0 or 1;
ORG/SYSTEM/BENCHMARK also read, as some copies flatten results/) plus
ORG/systems/SYSTEM.json.

Per system: the result files and their count against the round's, the systems
JSON against the logs (organisation, division, status), the official package
checker and result summarizer (run on a staged copy in the canonical layout:
they write scaling.json into the folder they check, and the input is never
written to), and the olympic-mean score compared with the summarizer's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import tempfile
from dataclasses import dataclass

from . import official
from .checks import Finding, rule_finding

_RESULT = re.compile(r"^result_(\d+)\.txt$")


def _result_number(name: str) -> int:
    """N of a file named result_N.txt (only such names are passed)."""
    match = _RESULT.match(name)
    assert match is not None, name
    return int(match.group(1))


@dataclass
class System:
    name: str
    results_dir: str          # .../SYSTEM/BENCHMARK
    json_path: str            # ORG/systems/SYSTEM.json (may not exist)
    files: list               # result_N.txt paths, by N


def find_systems(folder: str, benchmark: str) -> list:
    """The systems of a submission folder with results of ``benchmark``; [] when ``folder`` is not one."""
    systems_dir = os.path.join(folder, "systems")
    if not os.path.isdir(systems_dir):
        return []
    found = []
    for parent in (os.path.join(folder, "results"), folder):
        if not os.path.isdir(parent):
            continue
        for name in sorted(os.listdir(parent)):
            results_dir = os.path.join(parent, name, benchmark)
            if name in ("systems", "results", "benchmarks") or not os.path.isdir(results_dir):
                continue
            files = sorted((f for f in os.listdir(results_dir) if _RESULT.match(f)),
                           key=_result_number)
            found.append(System(name, results_dir, os.path.join(systems_dir, name + ".json"),
                                [os.path.join(results_dir, f) for f in files]))
    return found


def olympic_mean(values: list, dropped: int = 0) -> float | None:
    """MLPerf's score: drop the fastest and the slowest, average the rest. A run
    already dropped (non-compliant) counts as the slowest; more than one leaves no score."""
    if dropped > 1:
        return None
    kept = sorted(values)[1:len(values) - (1 - dropped)]
    return statistics.mean(kept) if kept else None


def check_result_files(system: System, rules: dict) -> Finding:
    needed = rules["result_count"]
    f = rule_finding("result_files", f"exactly {needed} files result_N.txt, N numbered 0..{needed - 1} or "
                                         f"1..{needed} (training {rules['ruleset']})")
    numbers = [_result_number(os.path.basename(p)) for p in system.files]
    if len(numbers) > needed:
        return f("fail", f"{len(numbers)} result files, the round allows {needed}: runs may not be chosen")
    if len(numbers) < needed:
        return f("warn", f"{len(numbers)} result file{'s' if len(numbers) != 1 else ''} "
                         f"({', '.join(map(str, numbers))}), the round needs {needed}: "
                         f"an incomplete set (an excerpt of a submission?) has no score")
    problems = []
    if numbers not in (list(range(needed)), list(range(1, needed + 1))):
        problems.append(f"numbered {', '.join(map(str, numbers))}")
    others = sorted(set(os.listdir(system.results_dir)) - {os.path.basename(p) for p in system.files})
    if others:
        problems.append(f"other files beside them: {', '.join(others)} (the package checker warns)")
    if problems:
        return f("warn", "; ".join(problems))
    return f("pass", f"result_{numbers[0]}..{numbers[-1]}")


def check_systems_json(system: System, runs: list, rules: dict) -> tuple:
    """(finding, the JSON or None)."""
    f = rule_finding("systems_json", "systems/SYSTEM.json exists, and its submitter, division and status are the "
                                     "logs' submission_org, submission_division and submission_status")
    if not os.path.isfile(system.json_path):
        return f("fail", f"{system.json_path} is missing: the package checker needs it"), None
    try:
        with open(system.json_path, encoding="utf-8") as fh:
            desc = json.load(fh)
    except ValueError as e:
        return f("fail", f"{system.json_path} is not JSON: {e}"), None
    if not isinstance(desc, dict):
        return f("fail", f"{system.json_path} is not a JSON object"), None
    mismatches = []
    for run in runs:
        org, division, status = (run.value(k) for k in ("submission_org", "submission_division", "submission_status"))
        name = os.path.basename(run.path)
        if desc.get("submitter") != org:
            same = isinstance(org, str) and str(desc.get("submitter", "")).lower() == org.lower()
            mismatches.append(f"{name}: submission_org {org!r}, the JSON's submitter {desc.get('submitter')!r}"
                              + (" (case only)" if same else ""))
        if desc.get("division") != division:
            mismatches.append(f"{name}: submission_division {division!r}, the JSON's division "
                              f"{desc.get('division')!r}")
        if desc.get("status") not in rules["status_names"].get(status, []):
            mismatches.append(f"{name}: submission_status {status!r}, the JSON's status {desc.get('status')!r}")
    if mismatches:
        unique = list(dict.fromkeys(m.split(": ", 1)[1] for m in mismatches))
        return f("warn", "; ".join(unique) + " (the official tools read the JSON: its division decides whether the "
                                             "RCP and seed checks run)"), desc
    return f("pass", f"submitter {desc.get('submitter')}, division {desc.get('division')}, "
                     f"status {desc.get('status')}"), desc


def _stage(folder: str, system: System, staging: str, benchmark: str) -> str:
    """A copy of one system's submission in the canonical layout; returns the ORG folder."""
    org = os.path.join(staging, os.path.basename(os.path.abspath(folder)) or "org")
    target = os.path.join(org, "results", system.name, benchmark)
    os.makedirs(target)
    for path in system.files:
        shutil.copyfile(path, os.path.join(target, os.path.basename(path)))
    os.makedirs(os.path.join(org, "systems"))
    shutil.copyfile(system.json_path, os.path.join(org, "systems", system.name + ".json"))
    benchmarks = os.path.join(folder, "benchmarks", benchmark)
    if os.path.isdir(benchmarks):
        shutil.copytree(benchmarks, os.path.join(org, "benchmarks", benchmark))
    return org


def official_package_checks(folder: str, system: System, rules: dict, rcp_bypass: bool, work_dir: str) -> tuple:
    """The package checker's finding and the summarizer's row for this system."""
    ruleset, benchmark = rules["ruleset"], rules["benchmark"]
    f = rule_finding("package_checker", f"the official package checker (training {ruleset}) finds no error")
    work_dir = os.path.join(work_dir, "official", f"{os.path.basename(os.path.abspath(folder))}-{system.name}")
    os.makedirs(work_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        org = _stage(folder, system, staging, benchmark)
        checker = official.package_checker(org, ruleset, rcp_bypass, work_dir)
        # The summarizer after the checker: the checker's RCP step writes scaling.json, which the summarizer reads.
        summary = official.result_summarizer(org, ruleset, work_dir)
    staged = os.path.join(org, "results", system.name, benchmark)
    accepted: dict[str, list[str]] = {}
    broken = []
    for reason in (r.replace(staged, system.results_dir) for r in checker.reasons):
        why = next((a["why"] for a in rules["accepted_package_checker_errors"]
                    if re.fullmatch(a["pattern"], reason.strip())), None)
        if why:
            accepted.setdefault(why, []).append(reason)
        elif not re.search(r"PACKAGE CHECKER FOUND ERRORS", reason):
            broken.append(reason if len(reason) <= 400 else reason[:400] + " ...")
    bypass = "; --rcp-bypass: the runs are not on Criteo 1TB, so no RCP applies" if rcp_bypass else ""
    bypass += "".join(f"; {w}" for w in checker.warnings if w.startswith("RCP Test"))
    if broken:
        finding = f("fail", "; ".join(broken) + bypass)
    elif accepted:
        finding = f("warn", "only errors that reviewers accepted: " + "; ".join(
            f"{why} ({lines[0][:200]})" for why, lines in accepted.items()) + bypass)
    elif checker.passed:
        finding = f("pass", "no errors" + bypass)
    else:
        tail = " | ".join(checker.output.strip().splitlines()[-3:])
        finding = f("fail", f"the package checker did not finish: {tail}")
    return finding, summary.rows.get(system.name, {})


def check_score(times: list, dropped: int, rcp_factor: float, row: dict, benchmark: str) -> tuple:
    """(finding, our score in minutes or None). ``times``: of the compliant runs;
    ``dropped``: how many runs were not."""
    f = rule_finding("score", "the olympic mean of the times to train (run_stop - run_start, minutes; fastest "
                              "and slowest dropped, a non-compliant run counting as the slowest) times the RCP "
                              "normalisation factor, as the result summarizer computes it")
    ours = olympic_mean(times, dropped)
    theirs = row.get(f"{benchmark}:time_to_train")
    if ours is None and theirs is None:
        return f("fail", f"{len(times)} compliant runs ({dropped} not): time to train is not computable"), None
    if ours is not None:
        ours *= rcp_factor
    factor = f" (x normalisation factor {rcp_factor:.4f})" if rcp_factor != 1.0 else ""
    if theirs is None:
        return f("warn", f"{ours:.4f} min{factor}; the official summarizer gave no score"), ours
    if ours is None or abs(ours - theirs) > 1e-6:
        shown = "none" if ours is None else f"{ours:.6f}"
        return f("warn", f"ours {shown} min{factor}, the official summarizer's {theirs:.6f} min differ"), ours
    return f("pass", f"{ours:.4f} min{factor}, equal to the official result summarizer's {theirs:.4f} min "
                     f"(RCP: {row.get(f'{benchmark}:RCP') or 'not run'})"), ours
