"""The official mlperf_logging tools, run as they are released.

Each runs in a child process, so its logging set-up cannot leak into ours. In
mlperf-logging 4.1.68 the RCP checker's table of required run counts
(``rcp_checker.submission_runs``) lost ``dlrm``, and everything that reaches it
(the RCP checker, the package checker, the result summarizer) fails with
KeyError 'dlrm'. The child process supplies the count, 5 (the training rules of
2022 and the package's own ``benchmark_meta``), in memory before the tool runs;
no installed file is edited. Reports say so (``SUPPLIED``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

USAGE = "training"
RULESET = "2.1.0"
DLRM_RUNS = 5
SUPPLIED = (f"mlperf-logging's rcp_checker.submission_runs has no 'dlrm' (KeyError in 4.1.68); "
            f"supplied {DLRM_RUNS} runs, the count of the 2.1.0 rules, in memory")

_BOOTSTRAP = """
import runpy, sys
from mlperf_logging.rcp_checker import rcp_checker
rcp_checker.submission_runs.setdefault("training", {{}}).setdefault("dlrm", {runs})
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__")
"""


@dataclass
class ToolResult:
    passed: bool
    output: str
    reasons: list  # the tool's WARNING/ERROR lines


def _run(module: str, args: list, cwd: str, patch: bool) -> subprocess.CompletedProcess:
    if patch:
        command = [sys.executable, "-c", _BOOTSTRAP.format(runs=DLRM_RUNS), module] + args
    else:
        command = [sys.executable, "-m", module] + args
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def _reasons(output: str) -> list:
    lines = [line.strip() for line in output.splitlines()]
    return [line.split("-", 1)[1].strip() for line in lines
            if re.match(r"(WARNING|ERROR) -", line) and line.split("-", 1)[1].strip() != "FAILED"]


def _checker_messages(output: str) -> list:
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
        message = re.sub(r"\s+", " ", message).strip()
        cleaned.append(message if len(message) <= 400 else message[:400] + " ...")
    return cleaned


def compliance(path: str) -> ToolResult:
    """The official compliance checker (training 2.1.0, --werror) on one log."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = _run("mlperf_logging.compliance_checker",
                    ["--usage", USAGE, "--ruleset", RULESET, "--werror",
                     "--log_output", os.path.join(tmp, "checker.log"), os.path.abspath(path)], tmp, patch=False)
    output = proc.stdout + proc.stderr
    reasons = _checker_messages(output)
    return ToolResult(proc.returncode == 0 and "SUCCESS" in output, output, reasons)


def rcp(result_files: list) -> ToolResult:
    """The official RCP checker over a set of runs (copied as result_N.txt)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "dlrm")
        os.makedirs(folder)
        for i, path in enumerate(result_files):
            with open(path) as src, open(os.path.join(folder, f"result_{i}.txt"), "w") as dst:
                dst.write(src.read())
        proc = _run("mlperf_logging.rcp_checker",
                    [folder, "--rcp_usage", USAGE, "--rcp_version", RULESET, "--verbose",
                     "--log_output", os.path.join(tmp, "rcp.log")], tmp, patch=True)
    output = proc.stdout + proc.stderr
    return ToolResult(proc.returncode == 0 and "RCP Test Passed" in output, output, _reasons(output))


def package_checker(org_folder: str, rcp_bypass: bool, work_dir: str) -> ToolResult:
    """The official package checker; its log goes to work_dir."""
    args = [os.path.abspath(org_folder), USAGE, RULESET, "--log_output",
            os.path.join(os.path.abspath(work_dir), "package_checker.log")]
    if rcp_bypass:
        args.append("--rcp-bypass")
    proc = _run("mlperf_logging.package_checker", args, work_dir, patch=True)
    output = proc.stdout + proc.stderr
    return ToolResult(proc.returncode == 0 and "SUCCESS" in output, output, _reasons(output))


@dataclass
class Summary:
    passed: bool
    output: str
    row: dict  # the summarizer's row for this package (scores in minutes, RCP state)


def result_summarizer(org_folder: str, work_dir: str) -> Summary:
    """The official result summarizer; it writes its tables as JSON beside --csv
    (the detailed one holds time to train, batch size, epochs and RCP state)."""
    csv = os.path.join(os.path.abspath(work_dir), "summary.csv")
    proc = _run("mlperf_logging.result_summarizer", [os.path.abspath(org_folder), USAGE, RULESET, "--csv", csv],
                work_dir, patch=True)
    output = proc.stdout + proc.stderr
    row = {}
    json_path = csv.replace(".csv", "_detailed.json")
    if proc.returncode == 0 and os.path.isfile(json_path):
        with open(json_path) as f:
            rows = json.load(f)
        row = {k: v for k, v in rows[0].items() if k.startswith("dlrm:") or ":" not in k} if rows else {}
    return Summary(bool(row.get("dlrm:time_to_train")), output, row)
