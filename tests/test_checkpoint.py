import os
import pickle
import shutil

import pytest
import torch

from conftest import save_like_the_seed, tiny_config
from reference import checkpoint, train
from reference.checkpoint import folder, rows
from reference.model import DLRM
from reference.train import resolve_table_sizes
from reference.trainer import Trainer
from reference.training_state import TrainingState

DEVNULL = open(os.devnull, "w")


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad", "adagrad"])
def test_resume_equals_uninterrupted(easy_data, tmp_path, optimizer):
    # A schedule that changes the lr at every step: a resumed run must follow it (the tables' step too).
    common = dict(optimizer=optimizer, epochs=2, eval_every=6, submission_division="open", learning_rate=0.1,
                  warmup_steps=10, decay_start_step=10, decay_steps=20)
    full = train.run(tiny_config(easy_data, tmp_path, **common), out=DEVNULL)
    ckpt = str(tmp_path / "ckpt")
    for stop_at in (7, 20):  # mid-epoch, and exactly at an epoch boundary
        first = train.run(tiny_config(easy_data, tmp_path, max_steps=stop_at, checkpoint_path=ckpt, **common),
                          out=DEVNULL)
        assert first.losses == full.losses[:stop_at]
        resumed = train.run(tiny_config(easy_data, tmp_path, resume=ckpt, **common), out=DEVNULL)
        assert resumed.losses == full.losses[stop_at:]
        assert resumed.final["auc"] == full.final["auc"]


def test_checkpoint_folder_holds_the_latest_step_only_and_loads_weights_only(easy_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    train.run(tiny_config(easy_data, tmp_path, checkpoint_path=str(ckpt), checkpoint_every=5), out=DEVNULL)
    assert sorted(os.listdir(ckpt)) == ["LATEST", "step-00000020"]  # older steps removed once it was complete
    assert sorted(os.listdir(ckpt / "step-00000020")) == ["meta.pt", "rank-00000.pt"]
    meta = torch.load(ckpt / "step-00000020" / "meta.pt", weights_only=True)
    assert meta["format"] == checkpoint.FORMAT and meta["step"] == 20 and meta["world_size"] == 1
    # Saved in the loop after the epoch's last batch; the end of the run had nothing new to save.
    assert meta["epoch"] == 0 and meta["batch_in_epoch"] == 20
    assert "embeddings.weight" not in meta["model"]
    tables = torch.load(ckpt / "step-00000020" / "rank-00000.pt", weights_only=True)
    assert tables["weight"].shape == (sum(resolve_table_sizes(tiny_config(easy_data, tmp_path))), 8)


def test_inference_only_evaluates_the_checkpoint(easy_data, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    trained = train.run(tiny_config(easy_data, tmp_path, checkpoint_path=ckpt), out=DEVNULL)
    result = train.run(tiny_config(easy_data, tmp_path, load_checkpoint=ckpt, inference_only=True), out=DEVNULL)
    assert result.final["auc"] == trained.final["auc"]


def test_loads_the_original_checkpoint_format(easy_data, tmp_path):
    cfg = tiny_config(easy_data, tmp_path, seed=11)
    source = DLRM.from_config(cfg, resolve_table_sizes(cfg))
    path = str(tmp_path / "seed.pt")
    save_like_the_seed(path, source)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # plain weights_only refuses numpy scalars
    target = DLRM.from_config(tiny_config(easy_data, tmp_path, seed=12), resolve_table_sizes(cfg))
    checkpoint.load_weights(path, target)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_original_checkpoint_with_wrong_table_shape(easy_data, tmp_path):
    cfg = tiny_config(easy_data, tmp_path)
    sizes = resolve_table_sizes(cfg)
    model = DLRM.from_config(cfg, sizes)
    path = str(tmp_path / "seed.pt")
    save_like_the_seed(path, model)
    other = DLRM.from_config(cfg, [n + 1 for n in sizes])
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"emb_l.0.weight has shape \(40, 8\), the model expects \(41, 8\)"):
        checkpoint.load_weights(path, other)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_never_run(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="cannot load as a weights-only checkpoint"):
        checkpoint.load_file(path)


def test_streamed_save_writes_what_torch_save_writes(tmp_path):
    big = torch.randn(1000, 16)
    state = {"model": {"w": big, "view": big[10:20].t(), "ids": torch.arange(7)},
             "optimizer": {"state": {0: {"step": torch.tensor(3.0), "sum": torch.rand(1000)}},
                           "param_groups": [{"lr": 0.1, "params": [0]}]},
             "rng": torch.get_rng_state(), "step": 5, "config": {"seed": 1}}
    torch.save(state, tmp_path / "plain.pt")
    checkpoint.save_streamed(state, str(tmp_path / "streamed.pt"))
    plain = torch.load(tmp_path / "plain.pt", weights_only=True)
    for mapped in (False, True):
        streamed = checkpoint.load_file(str(tmp_path / "streamed.pt"), mapped=mapped)
        assert torch.equal(streamed["model"]["w"], plain["model"]["w"])
        assert torch.equal(streamed["model"]["view"], big[10:20].t())
        assert torch.equal(streamed["model"]["ids"], plain["model"]["ids"])
        assert torch.equal(streamed["optimizer"]["state"][0]["sum"], plain["optimizer"]["state"][0]["sum"])
        assert torch.equal(streamed["rng"], plain["rng"])
        assert (streamed["step"], streamed["config"], streamed["optimizer"]["param_groups"]) == \
               (5, {"seed": 1}, [{"lr": 0.1, "params": [0]}])


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = DLRM([5, 3], 4, [13, 4], [4, 1])
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = str(tmp_path / "ckpt")
    checkpoint.save(ckpt, model, sgd, TrainingState(step=1, batch_in_epoch=1), config={"optimizer": "sgd"},
                    table_sizes=[5, 3])

    def broken(state, path):
        open(path, "w").close()
        raise OSError("disk full")
    monkeypatch.setattr(folder, "save_streamed", broken)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(ckpt, model, sgd, TrainingState(step=2, batch_in_epoch=2), config={"optimizer": "sgd"},
                        table_sizes=[5, 3])
    assert checkpoint.resume(ckpt, model, sgd, "sgd") == TrainingState(step=1, batch_in_epoch=1)


def test_the_loaded_checkpoint_is_released_before_training(easy_data, tmp_path, monkeypatch):
    import gc
    import weakref
    ckpt = str(tmp_path / "ckpt")
    train.run(tiny_config(easy_data, tmp_path, max_steps=5, checkpoint_path=ckpt), out=DEVNULL)
    refs, alive = [], []
    load = rows.load_file

    def tracked(path):
        data = load(path)
        refs.append(weakref.ref(data["weight"]))
        return data

    fit = Trainer.fit

    def checked(self):
        gc.collect()
        alive.append(refs[0]() is not None)
        return fit(self)

    monkeypatch.setattr(rows, "load_file", tracked)
    monkeypatch.setattr(Trainer, "fit", checked)
    train.run(tiny_config(easy_data, tmp_path, resume=ckpt, max_steps=8), out=DEVNULL)
    assert len(refs) == 1 and alive == [False]  # the tables' file is unmapped once training starts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch sees no GPU here")
def test_a_model_on_the_gpu_is_saved_and_loaded_streamed(tmp_path):
    model = DLRM([5000, 3], 8, [13, 8], [8, 1]).cuda()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    path = str(tmp_path / "ckpt")
    checkpoint.save(path, model, opt, TrainingState(step=1, batch_in_epoch=1), config={}, table_sizes=[5000, 3])
    other = DLRM([5000, 3], 8, [13, 8], [8, 1], seed=1).cuda()
    checkpoint.load_weights(path, other)
    assert torch.equal(other.embeddings.weight, model.embeddings.weight)


def test_resume_refuses_what_cannot_continue_a_run(tmp_path):
    model = DLRM([5, 3], 4, [13, 4], [4, 1])
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    good = str(tmp_path / "ckpt")
    checkpoint.save(good, model, sgd, TrainingState(step=9, epoch=1, batch_in_epoch=2),
                    config={"optimizer": "sgd"}, table_sizes=[5, 3])
    assert checkpoint.resume(good, model, sgd, "sgd") == TrainingState(step=9, epoch=1, batch_in_epoch=2)
    adagrad = torch.optim.Adagrad(model.parameters(), lr=0.1)
    with pytest.raises(checkpoint.CheckpointError, match="ckpt/step-00000009: written by a run with "
                                                         "optimizer='sgd'; this run has optimizer='adagrad'"):
        checkpoint.resume(good, model, adagrad, "adagrad")
    original = str(tmp_path / "seed.pt")
    save_like_the_seed(original, model)
    with pytest.raises(checkpoint.CheckpointError, match="seed.pt: the checkpoint has no optimiser state"):
        checkpoint.resume(original, model, sgd, "sgd")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    meta = bad / "step-00000009" / "meta.pt"
    data = torch.load(meta, weights_only=True)
    data["step"] = -3
    torch.save(data, meta)
    with pytest.raises(checkpoint.CheckpointError,
                       match="bad/step-00000009: training state: step must be an integer >= 0"):
        checkpoint.resume(str(bad), model, sgd, "sgd")
