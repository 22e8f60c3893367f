"""Command line of the verifier.

    python -m verification PATH... [--config FILE] [--out DIR] [--no-plots]
    python -m verification package --config FILE --system NAME [--runs 5] [--org ORG] [--out DIR]
                                   [--data-dir DIR] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys

from .rules import load_rules


def check_main(argv) -> int:
    from .report import render_text, verify, write_json, write_plots

    p = argparse.ArgumentParser(
        prog="python -m verification",
        description="Check DLRM MLPerf result logs as a reviewer would: the official compliance checker "
                    "(training 2.1.0, --werror) on every log, the checks it misses, epochs to target, and "
                    "the official RCP checker over each set of runs. Exit status 1 on any failure.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="result log, results folder or submission package")
    p.add_argument("--config", help="the config the runs claim (default: each run's .json summary)")
    p.add_argument("--out", help="folder for report.json and the plots (default: <first PATH's folder>/verification)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = p.parse_args(argv)
    try:
        report = verify(args.paths, args.config)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render_text(report))
    first = args.paths[0]
    out = args.out or os.path.join(first if os.path.isdir(first) else os.path.dirname(first) or ".", "verification")
    os.makedirs(out, exist_ok=True)
    write_json(report, os.path.join(out, "report.json"))
    written = [os.path.join(out, "report.json")]
    if not args.no_plots and report["runs"]:
        written += write_plots(report["runs"], out, load_rules()["target_auc"])
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
