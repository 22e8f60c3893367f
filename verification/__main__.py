"""Command line of the verifier.

    python -m verification PATH... [--ruleset X.Y.Z] [--config FILE] [--out DIR] [--no-plots]
    python -m verification package --config FILE --system NAME [--ruleset X.Y.Z] [--runs 5] [--org ORG]
                                   [--out DIR] [--data-dir DIR] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys

from .rules import RULESETS, load_rules


def check_main(argv) -> int:
    from .plots import write_plots
    from .report import render_text, verify, write_json

    p = argparse.ArgumentParser(
        prog="python -m verification",
        description="Check DLRM (dlrm) and DLRMv2 (dlrm_dcnv2) MLPerf result logs as a reviewer of their round "
                    "would: the official compliance checker under the round's ruleset, the checks it misses, "
                    "epochs to target, the official RCP checker over each set of runs, and submission folders as "
                    "wholes (result count, systems JSON, package checker, score against the result summarizer's). "
                    "FAIL: a rule of the round is broken; WARN: a deviation the round's reviewers accepted or an "
                    "official tool will flag. Exit status 1 on any FAIL, 2 on bad input.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="result log, results folder or submission folder (ORG with systems/)")
    p.add_argument("--ruleset", choices=RULESETS,
                   help="the round's rules: 0.7.0 - 2.1.0 for dlrm, 3.0.0 - 6.0.0 for dlrm_dcnv2 (default: the "
                        "latest round of the benchmark the first log names: 2.1.0 or 6.0.0)")
    p.add_argument("--config", help="the config the runs claim (default: each run's .json summary)")
    p.add_argument("--out", help="folder for report.json, the plots and the official tools' logs "
                                 "(default: <first PATH's folder>/verification)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = p.parse_args(argv)
    first = args.paths[0]
    out = args.out or os.path.join(first if os.path.isdir(first) else os.path.dirname(first) or ".", "verification")
    try:
        os.makedirs(out, exist_ok=True)
        report = verify(args.paths, args.config, ruleset=args.ruleset, work_dir=out)
    except (OSError, ValueError) as e:  # LogError, ConfigError and a bad rules file are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render_text(report))
    write_json(report, os.path.join(out, "report.json"))
    written = [os.path.join(out, "report.json")]
    if not args.no_plots and report["runs"]:
        written += write_plots(report["runs"], out, load_rules(report["ruleset"])["target_auc"])
    print("written: " + ", ".join(written))
    return 0 if report["passed"] else 1


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "package":
        from .package import package_main
        return package_main(argv[1:])
    return check_main(argv)


if __name__ == "__main__":
    sys.exit(main())
