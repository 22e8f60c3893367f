"""Export a trained model for serving: ONNX, or a ``torch.export`` program.

    python -m reference.export --checkpoint CKPT --format onnx --out model.onnx
    python -m reference.export --checkpoint CKPT --format torch-export --out model.pt2

The successors of the original code's ``--save-onnx`` (its other deployment
path, Caffe2, is gone from PyTorch 2). Inputs: ``dense`` (batch, 13) float32
and ``ids`` (batch, tables) int64, ids already taken modulo each table's
rows as the training data holds them; output: ``logits`` (batch,), a sigmoid
gives the click probability. The batch dimension is dynamic.

ONNX files are protobufs, limited to 2 GB: a model whose weights are larger
(the Criteo 1TB tables are about 90 GiB) is written with its weights as
external data, ``FILE.data`` beside ``FILE``, which onnxruntime reads from
there. Both files are written under temporary names and renamed, so an
interrupted export never leaves a file that looks complete.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import warnings

import torch

from . import checkpoint
from .checkpoint.restore import opened
from .config import Config, ConfigError
from .model import DLRM

FORMATS = ("onnx", "torch-export")
PROTOBUF_LIMIT = 2 * 1024 ** 3  # bytes: one protobuf message, which an ONNX file is
EXAMPLE_BATCH = 8


class ExportError(RuntimeError):
    pass


# What the exporters trace: fp32 on the CPU with torch's own GEMMs, whatever the run trained with.
TRACED = ["device=cpu", "precision=fp32", "linear_kernel=aten", "allow_tf32=false", "inference_only=false",
          "quantize_embeddings=0", "quantize_mlp=0", "resume=", "load_checkpoint="]


def model_from_checkpoint(path: str, config: str | None = None, overrides: list[str] | None = None) -> DLRM:
    """The model a checkpoint (a folder, a single file, or the original code's
    file) holds, ready to trace. Its architecture comes from the config the
    checkpoint saved, or from ``config`` (needed for the original code's
    checkpoints, which save none), plus ``overrides``."""
    settings = [*(overrides or []), *TRACED]
    with opened(path) as ckpt:
        if config is not None:
            cfg = Config.from_sources(config, settings)
        elif ckpt.config:
            cfg = Config.from_values(ckpt.config, f"{path} (its saved config)", settings)
        else:
            raise ConfigError(f"{path}: holds no config (an original dlrm_s_pytorch.py checkpoint?); name the one "
                              f"it was trained with: --config configs/FILE.yaml")
        saved_sizes = ckpt.values.get("table_sizes") or (ckpt.rows.table_sizes if ckpt.rows is not None else None)
    if cfg.table_sizes is not None:
        sizes = list(cfg.table_sizes)
    elif saved_sizes:
        sizes = [int(n) for n in saved_sizes]
    else:
        raise ConfigError(f"{path}: says nothing of its table sizes; set table_sizes")
    model = DLRM.from_config(cfg, sizes, linear_kernel="aten")
    checkpoint.load_weights(path, model)
    return model.eval()


def example_inputs(model: DLRM, batch: int = EXAMPLE_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    first = model.bottom_mlp[0]
    assert isinstance(first, torch.nn.Linear), "the bottom MLP starts with a linear layer"
    dense = torch.rand(batch, first.in_features, generator=generator)
    ids = torch.stack([torch.randint(0, n, (batch,), generator=generator) for n in model.embeddings.table_sizes], 1)
    return dense, ids


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def export(model: DLRM, fmt: str, out: str, external_data: bool | None = None) -> list[str]:
    """Write ``model`` to ``out`` in ``fmt``; returns the files written.
    ``external_data``: ONNX weights beside the file (default: when over protobuf's limit)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    batch = torch.export.Dim("batch")
    dynamic = ({0: batch}, {0: batch})
    inputs = example_inputs(model)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    # A temporary folder beside the target (same file system): an ONNX model names its external
    # data file, so both must be written under their final names and then moved.
    staging = tempfile.mkdtemp(prefix=".export-", dir=folder)
    try:
        staged = os.path.join(staging, os.path.basename(out))
        with torch.no_grad(), _exporter_notices_silenced():
            if fmt == "torch-export":
                program = torch.export.export(model, inputs, dynamic_shapes=dynamic)
                torch.export.save(program, staged)
            else:
                if external_data is None:
                    external_data = weight_bytes(model) >= PROTOBUF_LIMIT
                onnx_program = torch.onnx.export(model, inputs, dynamo=True, dynamic_shapes=dynamic,
                                                 input_names=["dense", "ids"], output_names=["logits"],
                                                 verbose=False)
                if onnx_program is None:
                    raise ExportError("torch.onnx.export returned no program")
                onnx_program.save(staged, external_data=external_data)
        written = sorted(os.listdir(staging), key=lambda name: name == os.path.basename(out))  # the model last
        for name in written:
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
        return [os.path.join(folder, name) for name in written]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _exporter_notices_silenced():
    """The exporter's notices about itself, not about the model (it skips torchvision's
    operators, which DLRM has none of; an internal deprecation; a dimension named twice
    because both inputs share the batch), would read as problems with the export."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: batch will not be used", category=UserWarning)
            yield
    finally:
        registration.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reference.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="ours, or the original dlrm_s_pytorch.py's (then --config)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="the file to write (ONNX: and FILE.data for large weights)")
    p.add_argument("--config", help="the YAML the model was trained with (default: the one the checkpoint saved)")
    p.add_argument("--external-data", action="store_true",
                   help="ONNX: weights in FILE.data even when under protobuf's 2 GB limit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a model key of the config")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        model = model_from_checkpoint(args.checkpoint, args.config, args.overrides)
        files = export(model, args.format, args.out, external_data=True if args.external_data else None)
    except (ConfigError, checkpoint.CheckpointError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in files:
        print(f"wrote {path} ({os.path.getsize(path):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
