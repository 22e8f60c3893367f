"""The official mlperf_logging tools, run as they are released, under one round's ruleset.

Each runs in a child process, so its logging set-up cannot leak into ours. In
mlperf-logging 4.1.68 the RCP checker's table of required run counts
(``rcp_checker.submission_runs``) lost ``dlrm``, and everything that reaches it
(the RCP checker, the package checker, the result summarizer) fails with
KeyError 'dlrm'. The child process supplies the count, 5 (the training rules of
every DLRM round and the package's own ``benchmark_meta``), in memory before the
tool runs; no installed file is edited. Reports say so (``SUPPLIED``). The table
still has ``dlrm_dcnv2`` (10 runs): its rounds need nothing supplied.

The RCP checker is called through its own ``check_directory`` (what the package
checker calls), and the child records which RCP record the tool compared with
and the submission's mean, so the verdict is the tool's and the figures are its
own, not a re-computation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from .rules import benchmark_of

USAGE = "training"
DLRM_RUNS = 5
SUPPLIED = (f"mlperf-logging's rcp_checker.submission_runs has no 'dlrm' (KeyError in 4.1.68); "
            f"supplied {DLRM_RUNS} runs, the count of every DLRM round's rules, in memory")

_PATCH = """
from mlperf_logging.rcp_checker import rcp_checker
rcp_checker.submission_runs.setdefault("training", {{}}).setdefault("dlrm", {runs})
"""

_RUN_MODULE = _PATCH + """
import runpy, sys
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__")
"""

# Calls check_directory as the package checker does (pruned RCPs), and records
# the record(s) the tool used: the one it evaluated and, for an interpolation,
# the two it interpolated between.
_RCP = _PATCH + """
import json, logging, sys
import numpy as np
logging.basicConfig(level=logging.INFO, format="%(levelname)s - %(message)s")
seen = {{"evaluated": None, "between": None, "submission_mean": None}}
def plain(record):
    return {{k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in record.items()
             if k in ("BS", "RCP Mean", "RCP Stdev", "Max Speedup", "Min Epochs", "Hyperparams")}}
original_eval = rcp_checker.RCP_Checker._eval_submission_record
def evaluate(self, record, epochs, results_dir):
    result = original_eval(self, record, epochs, results_dir)
    seen["evaluated"] = plain(record)
    seen["submission_mean"] = float(np.mean(sorted(epochs)[1:-1]))
    return result
original_interp = rcp_checker.RCP_Checker._create_interp_rcp
def interpolate(self, bs, low, high):
    seen["between"] = [plain(low), plain(high)]
    return original_interp(self, bs, low, high)
original_init = rcp_checker.RCP_Checker.__init__
def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    seen["between"] = None  # pruning the RCPs interpolates too; only the submission's interpolation counts
rcp_checker.RCP_Checker._eval_submission_record = evaluate
rcp_checker.RCP_Checker._create_interp_rcp = interpolate
rcp_checker.RCP_Checker.__init__ = init
passed, message, norm = rcp_checker.check_directory(sys.argv[1], "training", sys.argv[2], False, False,
                                                    rcp_pass="pruned_rcps")
print("RCP_RESULT " + json.dumps({{"passed": bool(passed), "message": message, "norm": float(norm), **seen}}))
"""

_SPEC = importlib.util.find_spec("mlperf_logging")
_PACKAGE = os.path.dirname(_SPEC.origin) if _SPEC and _SPEC.origin else None


def supplied(ruleset: str) -> str:
    """The note on the run count this module supplies; empty where the tool has its own."""
    return SUPPLIED if benchmark_of(ruleset) == "dlrm" else ""


def support(ruleset: str) -> dict:
    """What the installed mlperf-logging ships for the round's benchmark (dlrm
    or dlrm_dcnv2) under ``ruleset``: for each tool, None when it is there, else why it is not."""
    if _PACKAGE is None:
        missing = "mlperf-logging is not installed"
        return {"compliance": missing, "rcp": missing}
    benchmark = benchmark_of(ruleset)
    compliance = os.path.join(_PACKAGE, "compliance_checker", f"{USAGE}_{ruleset}", f"closed_{benchmark}.yaml")
    rcps = os.path.join(_PACKAGE, "rcp_checker", f"{USAGE}_{ruleset}", f"rcps_{benchmark}.json")
    return {"compliance": None if os.path.isfile(compliance) else
            f"the installed mlperf-logging has no {USAGE}_{ruleset}/closed_{benchmark}.yaml",
            "rcp": None if os.path.isfile(rcps) else
            f"the installed mlperf-logging has no RCPs for {benchmark} under {USAGE} {ruleset} "
            f"(rcp_checker/{USAGE}_{ruleset}/rcps_{benchmark}.json; RCPs began with 1.0.0)"}


@dataclass
class ToolResult:
    passed: bool
    output: str
    reasons: list  # the tool's errors
    warnings: list = field(default_factory=list)  # its warnings, and for the package checker its RCP verdict


def _run(args: list, cwd: str, script: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", script.format(runs=DLRM_RUNS)] + args if script else [sys.executable, "-m"] + args
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def _levels(output: str, level: str) -> list:
    lines = [line.strip() for line in output.splitlines()]
    return [line.split("-", 1)[1].strip() for line in lines
            if re.match(rf"{level} -", line) and line.split("-", 1)[1].strip() not in ("FAILED", "")]


def _checker_messages(output: str, limit: int | None = 400) -> list:
    """The compliance checker's findings, one line each: a WARNING/ERROR line and
    its continuation lines (multi-line rules), without the quoted log line and
    the dump of the checker's state."""
    messages: list = []
    for line in output.splitlines():
        if re.match(r"(WARNING|ERROR|INFO) +-", line):
            text = line.split("-", 1)[1].strip()
            if not line.startswith("INFO") and text != "FAILED":
                messages.append(text)
            else:
                messages.append(None)  # ends the previous message
        elif line.startswith(("Required ", "Failed ")):
            messages.append(line.strip())
        elif messages and messages[-1] is not None and line.strip():
            messages[-1] += " " + line.strip()
    cleaned = []
    for message in filter(None, messages):
        message = re.sub(r":::MLLOG \{.*?\}\} ", "", message)
        message = re.split(r" current context\[s\]=", message)[0]
        message = re.sub(r"\s*-{10,}\s*", " ", message)
        message = re.sub(r"\s+", " ", message).strip()
        cleaned.append(message if limit is None or len(message) <= limit else message[:limit] + " ...")
    return cleaned


def compliance(path: str, ruleset: str) -> ToolResult | None:
    """The official compliance checker (``--werror``) on one log; None when the
    installed package lacks the round's DLRM rules."""
    if support(ruleset)["compliance"]:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        proc = _run(["mlperf_logging.compliance_checker", "--usage", USAGE, "--ruleset", ruleset, "--werror",
                     "--log_output", os.path.join(tmp, "checker.log"), os.path.abspath(path)], tmp)
    output = proc.stdout + proc.stderr
    return ToolResult(proc.returncode == 0 and "SUCCESS" in output, output, _checker_messages(output))


@dataclass
class RcpResult:
    passed: bool
    message: str                  # the tool's own: 'RCP found', 'RCP Interpolation', 'Missing RCP, ...'
    norm_factor: float
    rcp_mean: float | None     # of the record the tool compared with
    min_epochs: float | None   # the fastest mean the tool accepts
    submission_mean: float | None
    records: list                 # batch sizes of the RCP(s) used
    output: str


def rcp(result_files: list, ruleset: str) -> RcpResult:
    """The official RCP checker over a set of runs (copied as result_N.txt)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, benchmark_of(ruleset))
        os.makedirs(folder)
        for i, path in enumerate(result_files):
            shutil.copyfile(path, os.path.join(folder, f"result_{i}.txt"))
        proc = _run([folder, ruleset], tmp, script=_RCP)
    output = proc.stdout + proc.stderr
    line = next((s for s in proc.stdout.splitlines() if s.startswith("RCP_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = " | ".join(output.strip().splitlines()[-3:])
        return RcpResult(False, f"the RCP checker failed: {tail}", 1.0, None, None, None, [], output)
    d = json.loads(line[len("RCP_RESULT "):])
    record = d["evaluated"] or {}
    used = [r["BS"] for r in d["between"]] if d["between"] else ([record["BS"]] if record else [])
    return RcpResult(d["passed"], d["message"], d["norm"], record.get("RCP Mean"), record.get("Min Epochs"),
                     d["submission_mean"], used, output)


def package_checker(org_folder: str, ruleset: str, rcp_bypass: bool, work_dir: str) -> ToolResult:
    """The official package checker; its log goes to work_dir."""
    args = ["mlperf_logging.package_checker", os.path.abspath(org_folder), USAGE, ruleset, "--log_output",
            os.path.join(os.path.abspath(work_dir), "package_checker.log")]
    if rcp_bypass:
        args.append("--rcp-bypass")
    proc = _run(args, work_dir, script=_RUN_MODULE)
    output = proc.stdout + proc.stderr
    # Whole messages (not cut short): the verdict matches them against the accepted errors.
    errors = _checker_messages("\n".join(s for s in output.splitlines() if not s.startswith("WARNING")), None)
    # Its RCP step's verdict is an INFO line when it passes: keep it with the warnings.
    rcp_lines = [m.group(0).strip() for m in re.finditer(r"RCP Test (?:Passed|Failed): .*", output)]
    return ToolResult(proc.returncode == 0 and "FOUND NO ERRORS" in output, output, errors,
                      list(dict.fromkeys(rcp_lines + _levels(output, "WARNING"))))


@dataclass
class Summary:
    output: str
    rows: dict  # system -> the summarizer's row (BENCHMARK:time_to_train in minutes, BENCHMARK:RCP, ...)


def result_summarizer(org_folder: str, ruleset: str, work_dir: str) -> Summary:
    """The official result summarizer; it writes its tables as JSON beside --csv
    (the detailed one holds time to train, batch size, epochs and RCP state)."""
    csv = os.path.join(os.path.abspath(work_dir), "summary.csv")
    proc = _run(["mlperf_logging.result_summarizer", os.path.abspath(org_folder), USAGE, ruleset, "--csv", csv],
                work_dir, script=_RUN_MODULE)
    output = proc.stdout + proc.stderr
    rows = []
    json_path = csv.replace(".csv", "_detailed.json")
    if proc.returncode == 0 and os.path.isfile(json_path):
        with open(json_path) as f:
            rows = json.load(f)
    prefix = benchmark_of(ruleset) + ":"
    return Summary(output, {row["system"]: {k: v for k, v in row.items() if k.startswith(prefix) or ":" not in k}
                            for row in rows})
