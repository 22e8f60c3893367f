"""Plots of a set of runs: AUC against epoch, loss against iteration, throughput."""

from __future__ import annotations

import os


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
        fig.savefig(path + ".tmp", dpi=110, format="png")  # a reader never sees half a file
        plt.close(fig)
        os.replace(path + ".tmp", path)
        written.append(path)

    label = lambda run: os.path.basename(run.path)  # noqa: E731
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        evals = run.evaluations()
        ax.plot([e[0] for e in evals], [e[1] for e in evals], marker=".", label=label(run))
    ax.axhline(target, color="red", linestyle="--", label=f"target {target}")
    ax.set(xlabel="epoch_num (as logged: from 1 for dlrm, from 0 for dlrm_dcnv2)", ylabel="eval AUC",
           title="AUC against epoch")
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
        # A run that stopped inside a block logged one start more than stops: that block has no time.
        for start, stop in zip(run.all("block_start"), run.all("block_stop"), strict=False):
            seconds = (stop.time_ms - start.time_ms) / 1000
            if seconds > 0:
                count = start.metadata.get("epoch_count", 0)
                points.append((start.metadata.get("first_epoch_num", 0) + count, count * samples / seconds))
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label(run))
    ax.set(xlabel="epoch_num (as logged)", ylabel="training samples/s (per evaluation block)",
           title="Throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, "throughput.png")
    return written
