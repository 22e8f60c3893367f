"""Verify a set of result logs and write the verdict: text, JSON and plots."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Optional

from reference.config import Config

from . import official
from .checks import Claim, Finding, run_checks
from .rules import load_rules
from .runlog import TOKEN, LogError, RunLog


def find_logs(paths: list) -> list:
    """Result logs named directly, or found under folders (results folders,
    submission packages): files with MLLOG lines named *.log or result_*.txt."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isdir(path):
            for root, _, files in sorted(os.walk(path)):
                for name in sorted(files):
                    if name.endswith(".log") or (name.startswith("result_") and name.endswith(".txt")):
                        full = os.path.join(root, name)
                        with open(full, errors="replace") as f:
                            if TOKEN in f.read(1 << 16):
                                found.append(full)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def load_claim(config_path: Optional[str]) -> Optional[Claim]:
    if config_path is None:
        return None
    return Claim(config_path, Config.from_sources(config_path).as_dict())


def verify(paths: list, config_path: Optional[str] = None, with_official: bool = True,
           claims: Optional[dict] = None) -> dict:
    """Check every log under ``paths``. The config a run claims is, in order:
    ``claims[path]``, the file named by ``config_path``, or the run's own
    .json summary beside its log."""
    rules = load_rules()
    reference = Config.from_sources(rules["closed_division"]["reference_config"]).as_dict()
    claimed = load_claim(config_path)
    files, runs = [], []
    for path in find_logs(paths):
        try:
            run = RunLog.read(path)
        except LogError as e:
            files.append({"path": path, "findings": [Finding("log_readable", "fail", str(e)).as_dict()]})
            continue
        claim = (claims or {}).get(path, claimed)
        if claim is None and run.config is not None:
            claim = Claim(f"the run's summary {os.path.splitext(path)[0]}.json", run.config)
        findings = []
        if with_official:
            result = official.compliance(path)
            findings.append(Finding("official_compliance", "pass" if result.passed else "fail",
                                    "; ".join(result.reasons) or ("" if result.passed else "checker failed")))
        findings += run_checks(run, rules, claim, reference)
        files.append({"path": path, "findings": [f.as_dict() for f in findings]})
        runs.append(run)
    rcp = []
    if with_official:
        groups = defaultdict(list)
        for run in runs:
            groups[(os.path.dirname(run.path), run.value("global_batch_size"))].append(run.path)
        for (folder, batch), members in sorted(groups.items(), key=lambda x: str(x[0])):
            if len(members) < 2:
                continue
            result = official.rcp(members)
            rcp.append({"folder": folder, "global_batch_size": batch, "runs": len(members),
                        "verdict": "pass" if result.passed else "fail", "reasons": result.reasons,
                        "supplied": official.SUPPLIED})
    failed = sum(f["verdict"] == "fail" for file in files for f in file["findings"]) + \
        sum(r["verdict"] == "fail" for r in rcp)
    return {"files": files, "rcp": rcp, "failed_checks": failed, "passed": failed == 0 and bool(files),
            "runs": runs}


def render_text(report: dict) -> str:
    lines = []
    for file in report["files"]:
        lines.append(file["path"])
        for f in file["findings"]:
            where = f" (line {f['line']})" if f.get("line") else ""
            reason = f": {f['reason']}" if f["reason"] else ""
            lines.append(f"  {f['verdict'].upper():<5} {f['check']}{reason}{where}")
    for r in report["rcp"]:
        lines.append(f"RCP check, {r['runs']} runs at global batch {r['global_batch_size']} in {r['folder']}: "
                     f"{r['verdict'].upper()}" + (f": {'; '.join(r['reasons'])}" if r["reasons"] else ""))
        lines.append(f"  note: {r['supplied']}")
    if not report["files"]:
        lines.append("no result logs found")
    verdict = "PASS" if report["passed"] else f"FAIL ({report['failed_checks']} failed checks)"
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)


def write_json(report: dict, path: str) -> None:
    data = {k: v for k, v in report.items() if k != "runs"}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def write_plots(runs: list, folder: str, target: float) -> list:
    """AUC against epoch (with the target), loss against iteration (from the
    run summaries), throughput per evaluation block. Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        path = os.path.join(folder, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    label = lambda run: os.path.basename(run.path)  # noqa: E731
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        evals = run.evaluations()
        ax.plot([e[0] for e in evals], [e[1] for e in evals], marker=".", label=label(run))
    ax.axhline(target, color="red", linestyle="--", label=f"target {target}")
    ax.set(xlabel="epoch (1-based, as logged)", ylabel="eval AUC", title="AUC against epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, "auc.png")

    with_loss = [run for run in runs if run.summary and run.summary.get("loss_curve")]
    if with_loss:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run in with_loss:
            curve = run.summary["loss_curve"]
            ax.plot([c[0] for c in curve], [c[1] for c in curve], label=label(run))
        ax.set(xlabel="iteration", ylabel="training loss (mean over log_every steps)", title="Loss against iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "loss.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        samples = run.value("train_samples") or 0
        points = []
        for start, stop in zip(run.all("block_start"), run.all("block_stop")):
            seconds = (stop.time_ms - start.time_ms) / 1000
            if seconds > 0:
                count = start.metadata.get("epoch_count", 0)
                points.append((start.metadata.get("first_epoch_num", 0) + count, count * samples / seconds))
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label(run))
    ax.set(xlabel="epoch (1-based, as logged)", ylabel="training samples/s (per evaluation block)",
           title="Throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, "throughput.png")
    return written
