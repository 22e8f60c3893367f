"""python -m reference.export: ONNX (run in onnxruntime) and torch.export programs equal to the PyTorch model."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import save_like_the_seed, tiny_config
from reference import export, train

DEVNULL = open(os.devnull, "w")


@pytest.fixture(scope="module")
def trained(easy_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    path = str(tmp / "c.pt")
    train.run(tiny_config(easy_data, tmp, max_steps=5, checkpoint_path=path), out=DEVNULL)
    return path


def inputs(model, batch, seed):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch, 13, generator=g).mul_(5).log1p_()
    ids = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in model.embeddings.table_sizes], 1)
    return dense, ids


def onnx_outputs(path, dense, ids):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["dense", "ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    return session.run(None, {"dense": dense.numpy(), "ids": ids.numpy()})[0]


def test_onnx_in_onnxruntime_equals_pytorch_for_any_batch(trained, tmp_path, capsys):
    out = str(tmp_path / "m.onnx")
    assert export.main(["--checkpoint", trained, "--format", "onnx", "--out", out]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["m.onnx"]  # weights inside: far under 2 GB; nothing staged left behind
    model = export.model_from_checkpoint(trained)
    for batch in (1, 37, 300):
        dense, ids = inputs(model, batch, seed=batch)
        with torch.no_grad():
            expected = model(dense, ids).numpy()
        got = onnx_outputs(out, dense, ids)
        assert got.shape == (batch,)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_large_weights_go_to_external_data(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "PROTOBUF_LIMIT", 1)  # stands for a model over 2 GB
    out = str(tmp_path / "m.onnx")
    model = export.model_from_checkpoint(trained)
    files = export.export(model, "onnx", out)
    assert [os.path.basename(f) for f in files] == ["m.onnx.data", "m.onnx"]
    # onnx keeps tensors under 1 KB inline (its size_threshold); every larger weight is in the data file.
    stored = {t.name: t.data_location for t in onnx.load(out, load_external_data=False).graph.initializer}
    large = [name for name, p in model.named_parameters() if p.numel() * 4 >= 1024]
    assert "embeddings.weight" in large
    assert all(stored[name] == onnx.TensorProto.EXTERNAL for name in large)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for f in files:  # the model names its data file relative to itself
        os.replace(f, moved / os.path.basename(f))
    dense, ids = inputs(model, 64, seed=1)
    with torch.no_grad():
        expected = model(dense, ids).numpy()
    np.testing.assert_allclose(onnx_outputs(str(moved / "m.onnx"), dense, ids), expected, rtol=1e-5, atol=1e-5)


def test_torch_export_program_equals_pytorch(trained, tmp_path):
    out = str(tmp_path / "m.pt2")
    assert export.main(["--checkpoint", trained, "--format", "torch-export", "--out", out]) == 0
    program = torch.export.load(out)
    model = export.model_from_checkpoint(trained)
    dense, ids = inputs(model, 50, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(dense, ids), model(dense, ids), rtol=1e-6, atol=1e-6)


def test_qr_tables_export(easy_data, tmp_path):
    path = str(tmp_path / "qr.pt")
    train.run(tiny_config(easy_data, tmp_path, max_steps=3, checkpoint_path=path, qr_threshold=50,
                          qr_collisions=4, submission_division="open"), out=DEVNULL)
    model = export.model_from_checkpoint(path)
    assert type(model.embeddings).__name__ == "QREmbeddingBag"
    out = str(tmp_path / "qr.onnx")
    export.export(model, "onnx", out)
    dense, ids = inputs(model, 40, seed=4)
    with torch.no_grad():
        expected = model(dense, ids).numpy()
    np.testing.assert_allclose(onnx_outputs(out, dense, ids), expected, rtol=1e-5, atol=1e-5)


def test_the_original_codes_checkpoint_needs_its_config(easy_data, trained, tmp_path, capsys):
    source = export.model_from_checkpoint(trained)
    original = str(tmp_path / "seed.pt")
    save_like_the_seed(original, source)
    out = str(tmp_path / "m.pt2")
    assert export.main(["--checkpoint", original, "--format", "torch-export", "--out", out]) == 2
    assert "holds no config (an original dlrm_s_pytorch.py checkpoint?)" in capsys.readouterr().err
    cfg = tiny_config(easy_data, tmp_path)
    overrides = [f"embedding_dim={cfg.embedding_dim}", "bottom_mlp=13-16-8", "top_mlp=16-1"]
    assert export.main(["--checkpoint", original, "--format", "torch-export", "--out", out, *overrides,
                        "--config", "configs/synthetic.yaml"]) == 0
    dense, ids = inputs(source, 20, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(out).module()(dense, ids), source(dense, ids))


def test_bad_input_is_named(tmp_path, capsys):
    assert export.main(["--checkpoint", str(tmp_path / "none.pt"), "--format", "onnx",
                        "--out", str(tmp_path / "m.onnx")]) == 2
    assert "none.pt: checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export.main(["--checkpoint", "c.pt", "--format", "tflite", "--out", "m"])
    assert not (tmp_path / "m.onnx").exists()
