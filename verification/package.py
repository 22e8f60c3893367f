"""Build an MLPerf Training submission package from N seeded runs and check it
with the official package checker and result summarizer.

Layout (BENCHMARK: the config's submission_benchmark, dlrm for 0.7.0 - 2.1.0, dlrm_dcnv2 for 3.0.0 - 6.0.0):
    OUT/ORG/results/SYSTEM/BENCHMARK/result_0.txt ... result_{N-1}.txt
    OUT/ORG/systems/SYSTEM.json          (logging/system_description_template.json, filled from this machine)
    OUT/ORG/benchmarks/BENCHMARK/implementations/reference-pytorch/   (the code that produced the runs)
    OUT/runs/                            (each run's own log and .json summary, for plots)
The package is assembled under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys

from reference.cpuinfo import cpu_info

from . import official
from .checks import Claim
from .plots import write_plots
from .report import render_text, verify, write_json
from .rules import ROOT, RULESETS, default_ruleset, load_rules, refusal
from .runlog import RunLog

STATUS_NAMES = {"onprem": "Available on-premise", "cloud": "Available cloud", "preview": "Preview",
                "research": "Research, Development, or Internal (RDI)"}
IMPLEMENTATION_FILES = ["reference", "configs", "scripts", "logging", "run_and_time.sh", "requirements.txt",
                        "README.md", "Dockerfile"]


def _memory_gb() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.0f} GB"
    except OSError:
        pass
    return "N/A"


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"') + f" (kernel {platform.release()})"
    except OSError:
        pass
    return platform.platform()


def system_description(cfg, system: str, org: str) -> dict:
    """The system description, from the template in logging/ and this machine."""
    import mlperf_logging
    import numpy
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    facts = {
        "submitter": org, "division": cfg.submission_division,
        "status": STATUS_NAMES[cfg.submission_status], "system_name": system,
        "number_of_nodes": "1", "host_processors_per_node": "1",
        "host_processor_model_name": cpu_info().model,
        "host_processor_core_count": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                         else os.cpu_count()),
        "host_processor_vcpu_count": str(os.cpu_count()), "host_processor_frequency": "N/A",
        "host_memory_capacity": _memory_gb(),
        "host_storage_capacity": f"{shutil.disk_usage(ROOT).total / 1e9:.0f} GB",
        "accelerators_per_node": str(gpus),
        "accelerator_model_name": torch.cuda.get_device_name(0) if gpus else "N/A",
        "accelerator_memory_capacity": (f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GB"
                                        if gpus else "N/A"),
        "hw_notes": f"device={cfg.device}, torch threads={torch.get_num_threads()}",
        "framework": f"PyTorch {torch.__version__}",
        "other_software_stack": f"Python {platform.python_version()}, NumPy {numpy.__version__}, "
                                f"mlperf-logging {getattr(mlperf_logging, '__version__', '4.1.68')}",
        "operating_system": _os_name(),
        "sw_notes": f"config {cfg.name}; reference trainer of this repository",
    }
    with open(os.path.join(ROOT, "logging", "system_description_template.json")) as f:
        template = json.load(f)
    filled = {}
    for key, value in template.items():
        filled[key] = re.sub(r"\{(\w+)\}", lambda m: facts[m.group(1)], value)
    return filled


def _copy_implementation(target: str) -> None:
    os.makedirs(target)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in IMPLEMENTATION_FILES:
        source = os.path.join(ROOT, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(target, name), ignore=ignore)
        elif os.path.isfile(source):
            shutil.copy2(source, target)


def build_package(cfg, system: str, org: str, runs: int, out: str, seed_base: int, log=print) -> dict:
    from reference import train

    package = os.path.join(out, org)
    if os.path.exists(package):
        raise FileExistsError(f"{package} already exists; choose another --out or remove it")
    staging = package + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    runs_dir = os.path.join(out, "runs")
    benchmark = cfg.submission_benchmark
    results = os.path.join(staging, "results", system, benchmark)
    os.makedirs(results)
    os.makedirs(runs_dir, exist_ok=True)
    times, logs = [], []
    try:
        for i in range(runs):
            run_cfg = cfg.replace("package", seed=seed_base + i, results_dir=runs_dir,
                                  run_name=f"{system}-seed{seed_base + i}")
            log(f"run {i + 1}/{runs} (seed {run_cfg.seed})")
            result = train.run(run_cfg)
            log(f"  status={result.status} steps={result.steps} auc={result.final.get('auc', float('nan')):.5f} "
                f"time_to_train={result.run_seconds:.1f} s")
            assert result.log_path is not None, "a training run on one process writes its MLPerf log"
            shutil.copy(result.log_path, os.path.join(results, f"result_{i}.txt"))
            times.append(result.run_seconds)
            logs.append(result.log_path)
        os.makedirs(os.path.join(staging, "systems"))
        with open(os.path.join(staging, "systems", f"{system}.json"), "w") as f:
            json.dump(system_description(cfg, system, org), f, indent=2)
        _copy_implementation(os.path.join(staging, "benchmarks", benchmark, "implementations", "reference-pytorch"))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # no half-built package is left to be mistaken for one
        raise
    os.replace(staging, package)
    return {"package": package, "runs_dir": runs_dir, "logs": logs, "times": times}


def package_main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m verification package",
                                description="Run N seeded training runs, lay them out as an MLPerf submission "
                                            "package, and check it with the official package checker and "
                                            "result summarizer.")
    p.add_argument("--config", required=True, help="training config (configs/*.yaml)")
    p.add_argument("--system", required=True, help="system name (results/<system>, systems/<system>.json)")
    p.add_argument("--runs", type=int, help="number of runs (default: the round's, 5 for dlrm, 10 for dlrm_dcnv2)")
    p.add_argument("--org", help="submitting organisation (default: the config's submission_org)")
    p.add_argument("--out", default=os.path.join("results", "package"), help="output folder")
    p.add_argument("--data-dir", help="data folder (default for synthetic: .cache/synthetic, made if missing)")
    p.add_argument("--seed-base", type=int, default=1, help="seeds are seed-base .. seed-base + runs - 1")
    p.add_argument("--ruleset", choices=RULESETS,
                   help="the round whose rules and official tools check the package (default: the latest round of "
                        "the config's submission_benchmark: 2.1.0 for dlrm, 6.0.0 for dlrm_dcnv2)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_intermixed_args(argv)
    if args.runs is not None and args.runs < 1:
        p.error("--runs must be >= 1")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.system):
        p.error(f"--system {args.system!r}: use letters, digits, '.', '_' and '-' (it names files)")

    from reference import synthetic
    from reference.config import Config, ConfigError

    # The logs must name the organisation and system that the package and its systems JSON name.
    overrides = list(args.overrides) + [f"submission_platform={args.system}"] + \
        ([f"submission_org={args.org}"] if args.org else [])
    data_dir = args.data_dir
    try:
        cfg = Config.from_sources(args.config, overrides + ([f"data_dir={data_dir}"] if data_dir else []))
        if cfg.data_dir is None and cfg.name == "synthetic":  # as ./run_and_time.sh does
            data_dir = os.path.join(os.environ.get("DLRM_CACHE_DIR", os.path.join(ROOT, ".cache")), "synthetic")
            synthetic.ensure(data_dir, synthetic.SyntheticSpec(), via_raw=True)
            cfg = Config.from_sources(args.config, overrides + [f"data_dir={data_dir}"])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ruleset = args.ruleset or default_ruleset(cfg.submission_benchmark)
    refused = refusal(cfg.submission_benchmark, ruleset)
    if refused:
        print(f"error: {args.config}: {refused}", file=sys.stderr)
        return 2
    runs = args.runs or load_rules(ruleset)["result_count"]
    org = args.org or cfg.submission_org
    try:
        built = build_package(cfg, args.system, org, runs, args.out, args.seed_base)
    except (FileExistsError, ValueError) as e:  # ConfigError, DataError and CheckpointError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2

    return check_package(built, args.system, os.path.join(args.out, "verification"), ruleset)


def check_package(built: dict, system: str, out: str, ruleset: str) -> int:
    """Our checks on every run and on the package as a whole (result files,
    systems JSON, the official package checker and summarizer, the score);
    report and plots into ``out``. Returns the exit status: that of the
    official package checker and summarizer (the per-run verdict says whether
    the runs make a valid submission: runs on synthetic data never do)."""
    os.makedirs(out, exist_ok=True)
    benchmark = load_rules(ruleset)["benchmark"]
    results_dir = os.path.join(built["package"], "results", system, benchmark)
    claims = {}
    for i, log_path in enumerate(built["logs"]):
        summary = RunLog.read(log_path).summary
        assert summary is not None, "reference.train writes a run summary beside each log"
        claims[os.path.join(results_dir, f"result_{i}.txt")] = Claim(
            f"run summary {os.path.splitext(log_path)[0]}.json", summary["config"])
    report = verify([built["package"]], claims=claims, ruleset=ruleset, work_dir=out)
    print(render_text(report))
    [entry] = [s for s in report["submissions"][0]["systems"] if s["system"] == system]
    findings = {f["check"]: f for f in entry["findings"]}
    checker, score = findings["package_checker"], findings.get("score")
    print(f"official package checker (training {ruleset}): {checker['verdict'].upper()}: {checker['reason']}")
    if official.supplied(ruleset):
        print(f"  note: {official.supplied(ruleset)}")
    row = entry.get("summarizer") or {}
    if row.get(f"{benchmark}:time_to_train") is not None:
        print(f"result summarizer: {benchmark} time to train {row[f'{benchmark}:time_to_train']:.4f} min (RCP: "
              f"{row.get(f'{benchmark}:RCP')}, epochs to converge {row.get(f'{benchmark}:samples_to_converge')})")
    else:
        print("result summarizer: no score")
    if score is not None:
        print(f"score: {score['verdict'].upper()}: {score['reason']}")
    write_json(report, os.path.join(out, "report.json"))
    # Plot from the runs' own logs: their .json summaries beside them carry the loss curves.
    plotted = write_plots([RunLog.read(path) for path in built["logs"]], out, load_rules(ruleset)["target_auc"])
    print(f"package: {built['package']}; report and plots: {', '.join([os.path.join(out, 'report.json')] + plotted)}")
    passed = checker is not None and checker["verdict"] != "fail" and score is not None and score["verdict"] != "fail"
    return 0 if passed else 1
