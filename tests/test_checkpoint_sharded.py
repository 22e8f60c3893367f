"""Checkpoints of several ranks: save and resume at the same world size
(identical losses), re-sharding to another (3 -> 2, 2 -> 1, 1 -> 3, within
1e-5 of one process), each rank reading only its rows (ours and the original
format, --inference-only too), the folder staying loadable whatever point a
save is stopped at, and errors that name a bad file. Ranks are spawned
processes with gloo on localhost (as in test_distributed_units.py); one
end-to-end test kills a rank of a real launch and resumes it."""

import json
import os
import shutil
import signal
import time

import numpy as np
import pytest
import torch
from test_checkpoint import save_like_the_seed
from test_distributed import TABLES, free_port, start_ranks, write_config
from test_distributed_units import run_ranks

from conftest import tiny_config
from reference import checkpoint, train
from reference.checkpoint import folder, rows
from reference.distributed import runtime
from reference.distributed.launch import LaunchInfo
from reference.model import DLRM
from reference.synthetic import SyntheticSpec, generate
from reference.training_state import TrainingState

DEVNULL = open(os.devnull, "w")
STEPS, STOP = 14, 5  # the uninterrupted run, and where the interrupted one stops


def config(data, tmp, **values):
    common = dict(optimizer="rowwise_adagrad", learning_rate=0.1, batch_size=240, eval_batch_size=1000,
                  max_steps=STEPS, eval_every=7, log_every=1, submission_division="open", dist_timeout=30,
                  results_dir=str(tmp / "results"))
    return tiny_config(data, tmp, **{**common, **values})


def record_reads(log: list) -> None:
    """Every rows request of the checkpoint readers, as (key, table, lo, hi), into ``log``."""
    for cls in (rows.FileTables, rows.ShardFiles):
        def copy(self, key, table, lo, out, _copy=cls.copy):
            log.append((key, table, lo, lo + len(out)))
            _copy(self, key, table, lo, out)
        cls.copy = copy


def rank_runs(rank: int, world: int, port: int, data, tmp, jobs: list) -> None:
    """The ``jobs`` (name, config overrides) one after another on one gloo
    group; rank 0 writes each result, every rank what it read and held."""
    torch.set_num_threads(1)
    reads: list = []
    record_reads(reads)
    parallel = runtime.start(config(data, tmp), LaunchInfo("test", rank, world, rank, world, "127.0.0.1", port))
    for name, overrides in jobs:
        reads.clear()
        result = train.run(config(data, tmp, **overrides), out=DEVNULL, parallel=parallel)
        held = [[s.table, s.lo, s.hi] for s in parallel.plan.shards_of(rank)]
        with open(tmp / f"{name}.rank{rank}.json", "w") as f:
            json.dump({"losses": result.losses, "evaluations": result.evaluations, "held": held,
                       "reads": reads}, f)
    parallel.close()


def read(tmp, name: str, rank: int = 0) -> dict:
    with open(tmp / f"{name}.rank{rank}.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Table 0 (2,000 rows) is split by rows over 2 and 3 ranks; 21 batches of 240, the last of 200."""
    out = tmp_path_factory.mktemp("data")
    spec = SyntheticSpec(train_samples=5000, eval_samples=2000, table_sizes=TABLES, seed=7, dense_scale=1.2,
                         id_effect_scale=0.3, pair_scale=0.2, chunk_rows=4096)
    generate(str(out), spec, log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """One process, then 3 ranks, then 2 ranks, each saving, resuming its own
    checkpoint and resuming the previous world size's; then one process
    resuming the 2 ranks' checkpoint. Also an original-format file into 2 ranks."""
    tmp = tmp_path_factory.mktemp("runs")
    ckpt = {n: str(tmp / f"ckpt{n}") for n in (1, 2, 3)}
    out = {"tmp": tmp}
    out["single"] = train.run(config(data, tmp), out=DEVNULL)
    train.run(config(data, tmp, max_steps=STOP, checkpoint_path=ckpt[1]), out=DEVNULL)
    cfg = config(data, tmp)
    original = str(tmp / "original.pt")
    save_like_the_seed(original, DLRM.from_config(cfg, TABLES))
    out["original_single"] = train.run(config(data, tmp, load_checkpoint=original, inference_only=True),
                                       out=DEVNULL)
    for world, previous in ((3, 1), (2, 3)):
        run_ranks(rank_runs, world, data, tmp, [
            (f"full{world}", {}),
            (f"first{world}", {"max_steps": STOP, "checkpoint_path": ckpt[world]}),
            (f"resumed{world}", {"resume": ckpt[world]}),
            (f"from{previous}to{world}", {"resume": ckpt[previous]}),
        ] + ([("original2", {"load_checkpoint": original, "inference_only": True})] if world == 2 else []))
        out[f"from{world}to1"] = train.run(config(data, tmp, resume=ckpt[world]), out=DEVNULL)
    out["ckpt"] = ckpt
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_resume_with_the_losses_of_the_uninterrupted_run(runs, world):
    tmp = runs["tmp"]
    full, first, resumed = (read(tmp, f"{n}{world}") for n in ("full", "first", "resumed"))
    assert len(full["losses"]) == STEPS and first["losses"] == full["losses"][:STOP]
    assert resumed["losses"] == full["losses"][STOP:]  # bit for bit: the same ranks, the same reductions
    assert resumed["evaluations"][-1]["auc"] == full["evaluations"][-1]["auc"]
    assert sorted(os.listdir(runs["ckpt"][world])) == ["LATEST", f"step-{STOP:08d}"]
    assert sorted(os.listdir(os.path.join(runs["ckpt"][world], f"step-{STOP:08d}"))) == \
        ["meta.pt"] + [f"rank-{r:05d}.pt" for r in range(world)]


def losses_and_auc(runs, name: str) -> tuple[list[float], float]:
    if name in runs:  # one process
        return runs[name].losses, runs[name].final["auc"]
    result = read(runs["tmp"], name)
    return result["losses"], result["evaluations"][-1]["auc"]


@pytest.mark.parametrize("saved, loaded", [(3, 2), (2, 1), (1, 3)])
def test_resharding_follows_the_single_process_run(runs, saved, loaded):
    """A checkpoint of ``saved`` ranks resumed on ``loaded`` follows one process
    resumed from it (the ranks' 1e-5; from the start, N ranks and one process
    part by more: row-wise Adagrad's first steps amplify rounding differences)."""
    tmp = runs["tmp"]
    name = f"from{saved}to{loaded}"
    losses, auc = losses_and_auc(runs, name)
    # One process from the same checkpoint (for saved=1: the uninterrupted single run); for
    # loaded=1, the other way round: the saved world size resumed from it.
    reference = "single" if saved == 1 else (f"resumed{saved}" if loaded == 1 else f"from{saved}to1")
    ref_losses, ref_auc = losses_and_auc(runs, reference)
    if saved == 1:
        ref_losses = ref_losses[STOP:]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=0)
    assert auc == pytest.approx(ref_auc, abs=5e-6)
    for rank in range(loaded if loaded > 1 else 0):  # each rank asked for the rows it holds, and only those
        mine = read(tmp, name, rank)
        asked = sorted([t, lo, hi] for key, t, lo, hi in mine["reads"] if key == "weight")
        assert asked == sorted(mine["held"]) and len(mine["held"]) < len(TABLES)
        assert {key for key, *_ in mine["reads"]} == {"weight", "state.sum"}


def test_the_original_format_loads_into_ranks_each_reading_its_rows(runs):
    tmp = runs["tmp"]
    expected = runs["original_single"].final
    for world in (2,):
        held = set()
        for rank in range(world):
            mine = read(tmp, f"original{world}", rank)
            assert sorted([t, lo, hi] for _, t, lo, hi in mine["reads"]) == sorted(mine["held"])
            held |= {tuple(s) for s in mine["held"]}
            assert mine["evaluations"][-1]["auc"] == pytest.approx(expected["auc"], abs=5e-6)
        assert 0 in {t for t, lo, hi in held if hi - lo < TABLES[t]}  # table 0 was read in parts


# --- a save stopped at any point ----------------------------------------------------------------


def small_model():
    model = DLRM([5, 3], 4, [13, 4], [4, 1])
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


class Stop(Exception):
    """Where a kill would end the save: folder.write has no clean-up to run."""


@pytest.mark.parametrize("stop_in, survivor", [("save_streamed", 1), ("rename", 1), ("replace", 1), ("rmtree", 2)])
def test_a_save_stopped_anywhere_leaves_a_loadable_checkpoint(tmp_path, monkeypatch, stop_in, survivor):
    model, sgd = small_model()
    ckpt = str(tmp_path / "ckpt")
    checkpoint.save(ckpt, model, sgd, TrainingState(step=1), config={"optimizer": "sgd"}, table_sizes=[5, 3])
    with monkeypatch.context() as m:
        target = folder if stop_in == "save_streamed" else (folder.shutil if stop_in == "rmtree" else folder.os)

        def stop(*args, **kwargs):
            raise Stop(stop_in)
        if stop_in == "rmtree":  # past the staging folder's clean-up: the old step folder's removal
            rmtree = shutil.rmtree

            def stop(path, *args, **kwargs):
                if str(path).endswith(".partial"):
                    return rmtree(path, *args, **kwargs)
                raise Stop(stop_in)
        m.setattr(target, stop_in, stop)
        with pytest.raises(Stop):
            checkpoint.save(ckpt, model, sgd, TrainingState(step=2), config={"optimizer": "sgd"}, table_sizes=[5, 3])
    assert checkpoint.resume(ckpt, model, sgd, "sgd").step == survivor
    # The next save clears what the stopped one left.
    checkpoint.save(ckpt, model, sgd, TrainingState(step=3), config={"optimizer": "sgd"}, table_sizes=[5, 3])
    assert sorted(os.listdir(ckpt)) == ["LATEST", "step-00000003"]


# --- files that are not checkpoints ------------------------------------------------------------


def test_corrupt_truncated_and_foreign_files_are_named(tmp_path):
    model, sgd = small_model()
    ckpt = tmp_path / "ckpt"
    checkpoint.save(str(ckpt), model, sgd, TrainingState(step=4), config={"optimizer": "sgd"}, table_sizes=[5, 3])
    step = ckpt / "step-00000004"
    meta, tables = step / "meta.pt", step / "rank-00000.pt"
    random = tmp_path / "random.pt"
    random.write_bytes(np.random.default_rng(0).bytes(5000))
    cases = [(str(random), "random.pt: not a checkpoint: neither a torch.save zip archive nor a legacy torch file")]
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.resume(str(random), model, sgd, "sgd")
    assert "weights_only=False" not in str(e.value)
    whole = tables.read_bytes()
    tables.write_bytes(whole[:len(whole) // 2])
    cases.append((str(ckpt), "rank-00000.pt: truncated or corrupt: it starts as a torch.save zip archive"))
    for path, message in cases:
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.resume(path, model, sgd, "sgd")
    tables.write_bytes(whole)
    shutil.copy(meta, tmp_path / "meta.bak")
    meta.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(checkpoint.CheckpointError, match="meta.pt: truncated or corrupt"):
        checkpoint.load_weights(str(ckpt), model)
    torch.save({"model": {}, "something": 1}, meta)  # a torch file of another program
    with pytest.raises(checkpoint.CheckpointError, match="meta.pt: not the meta file of a version-2 "):
        checkpoint.load_weights(str(ckpt), model)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(checkpoint.CheckpointError, match="tensor.pt: not a checkpoint: expected a dictionary"):
        checkpoint.load_weights(str(tmp_path / "tensor.pt"), model)
    (ckpt / "LATEST").write_text("step-00000009\n")
    with pytest.raises(checkpoint.CheckpointError, match="LATEST: names step-00000009, but .* is missing"):
        checkpoint.load_weights(str(ckpt), model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="empty: a folder with neither LATEST nor meta.pt"):
        checkpoint.load_weights(str(tmp_path / "empty"), model)


def test_a_version_1_single_file_still_resumes(tmp_path):
    """What checkpoint_path wrote before folders: everything in one file, the tables fused."""
    model, _ = small_model()
    adagrad = torch.optim.Adagrad(model.parameters(), lr=0.1)
    model(torch.randn(4, 13), torch.tensor([[1, 2]] * 4)).sum().backward()
    adagrad.step()
    path = str(tmp_path / "old.pt")
    torch.save({"format": checkpoint.FORMAT, "version": 1, "model": model.state_dict(),
                "optimizer": adagrad.state_dict(), "step": 1, "epoch": 0, "batch_in_epoch": 1,
                "config": {"optimizer": "adagrad"}, "table_sizes": [5, 3]}, path)
    other, _ = small_model()
    torch.nn.init.zeros_(other.embeddings.weight)
    again = torch.optim.Adagrad(other.parameters(), lr=0.1)
    assert checkpoint.resume(path, other, again, "adagrad") == TrainingState(step=1, batch_in_epoch=1)
    assert torch.equal(other.embeddings.weight, model.embeddings.weight)
    assert torch.equal(again.state_dict()["state"][2]["sum"], adagrad.state_dict()["state"][2]["sum"])


# --- a rank killed, the job resumed -------------------------------------------------------------


def wait_all(procs, limit: float = 180) -> list[str]:
    return [p.communicate(timeout=limit)[0] for p in procs]


@pytest.mark.slow
@pytest.mark.parametrize("world, optimizer", [(2, "sgd"), (3, "rowwise_adagrad")])
def test_a_killed_rank_then_resume_reaches_the_uninterrupted_auc(data, tmp_path, world, optimizer):
    common = dict(optimizer=optimizer, learning_rate=0.1, epochs=100, max_steps=48, eval_every=24, dist_timeout=10)
    full_cfg = write_config(tmp_path / "full.yaml", data, results_dir=str(tmp_path / "full"), **common)
    ckpt = tmp_path / "ckpt"
    cfg = write_config(tmp_path / "c.yaml", data, results_dir=str(tmp_path / "r"), checkpoint_path=str(ckpt),
                       checkpoint_every=4, **common)
    full = start_ranks(full_cfg, world, world, free_port())
    outs = wait_all(full)
    assert all(p.returncode in (0, 1) for p in full), outs
    procs = start_ranks(cfg, world, world, free_port())
    try:
        t0 = time.time()
        while not (ckpt / "LATEST").exists():
            assert all(p.poll() is None for p in procs) and time.time() - t0 < 120, wait_all(procs)
            time.sleep(0.01)
        os.kill(procs[1].pid, signal.SIGKILL)
        outs = wait_all(procs)
        assert all(p.returncode != 0 for p in procs), outs  # the job ended, naming the rank
        assert "rank(s) 1 stopped answering" in outs[0] or "rank 1" in outs[0], outs[0]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    killed_at = int((ckpt / "LATEST").read_text().split("-")[1].split(".")[0])
    assert 0 < killed_at < 48
    again = ["--resume", str(ckpt), f"results_dir={tmp_path / 'resumed'}"]  # the same command, resumed
    resumed = start_ranks(cfg, world, world, free_port(), extra={r: again for r in range(world)})
    outs = wait_all(resumed)
    assert all(p.returncode in (0, 1) for p in resumed), outs
    with open(tmp_path / "full" / "run.json") as f:
        uninterrupted = json.load(f)
    with open(tmp_path / "resumed" / "run.json") as f:
        after = json.load(f)
    assert after["steps"] == uninterrupted["steps"] == 48
    assert after["evaluations"][-1]["auc"] == uninterrupted["evaluations"][-1]["auc"]
    later = [loss for step, loss in uninterrupted["loss_curve"] if step > killed_at]
    assert [loss for _, loss in after["loss_curve"]] == later
