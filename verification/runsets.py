"""Sets of runs (same folder, same global batch size) and the official RCP
checker's verdict on each, read as the tool means it: pass when the RCP is
found or interpolated and the submission is not faster than it allows; fail
with the tool's reason otherwise."""

from __future__ import annotations

import os
from collections import defaultdict

from . import official

RULE = ("the mean epochs to converge (olympic: fastest and slowest dropped) is not faster than the round's "
        "RCP allows (official rcp_checker, pruned RCPs, as the package checker runs it)")


def group_runs(runs: list) -> dict:
    groups = defaultdict(list)
    for run in runs:
        groups[(os.path.dirname(run.path), run.value("global_batch_size"))].append(run)
    return dict(sorted(groups.items(), key=lambda x: str(x[0])))


def _figures(result: official.RcpResult) -> str:
    parts = []
    if result.rcp_mean is not None:
        used = " and ".join(str(bs) for bs in result.records)
        kind = "interpolated between the RCPs at batch " if len(result.records) > 1 else "the RCP at batch "
        parts.append(f"RCP mean {result.rcp_mean:.4f} epochs ({kind}{used})")
    if result.min_epochs is not None:
        parts.append(f"fastest accepted mean {result.min_epochs:.4f}")
    if result.submission_mean is not None:
        parts.append(f"submission mean {result.submission_mean:.4f}")
    parts.append(f"normalisation factor {result.norm_factor:.4f}")
    return ", ".join(parts)


def rcp_verdict(runs: list, batch, rules: dict, division: str, criteo: bool) -> dict:
    """The RCP verdict on one set, as a dict for the report. ``criteo``: every
    run is on Criteo 1TB (the RCPs were measured there; on other data none applies)."""
    ruleset = rules["ruleset"]
    entry = {"runs": len(runs), "global_batch_size": batch, "rule": RULE, "supplied": official.supplied(ruleset)}
    unsupported = official.support(ruleset)["rcp"] if rules["rcp_checker"] else \
        f"training {ruleset} has no RCP test (RCPs began with 1.0.0)"
    if unsupported:
        return {**entry, "verdict": "info", "reason": unsupported, "supplied": ""}
    if division != "closed":
        return {**entry, "verdict": "skip", "reason": f"division {division!r}: the RCP test is for the closed division",
                "supplied": ""}
    if not criteo:
        return {**entry, "verdict": "skip", "supplied": "",
                "reason": "runs on other data than Criteo 1TB (see dataset_identity): no RCP applies"}
    needed = rules["result_count"]
    if len(runs) < needed:
        return {**entry, "verdict": "warn", "supplied": "",
                "reason": f"{len(runs)} run{'s' if len(runs) > 1 else ''}, the RCP test needs the round's {needed} "
                          f"(olympic mean): not tested; "
                          f"an incomplete set is no submission"}
    result = official.rcp([run.path for run in runs], ruleset)
    figures = _figures(result)
    entry.update(message=result.message, rcp_mean=result.rcp_mean, submission_mean=result.submission_mean,
                 min_epochs=result.min_epochs, norm_factor=result.norm_factor, records=result.records)
    if result.passed:
        how = "by interpolation" if result.message == "RCP Interpolation" else \
            "direct match" if result.message == "RCP found" else result.message
        return {**entry, "verdict": "pass", "reason": f"{result.message}, RCP test PASSED ({how}): {figures}"}
    why = result.message
    if result.submission_mean is not None and result.min_epochs is not None:
        why += (f": the submission converges in {result.submission_mean:.4f} epochs on average, faster than the "
                f"{result.min_epochs:.4f} the RCP allows")
    return {**entry, "verdict": "fail", "reason": f"{why}; RCP test FAILED: {figures}"}

