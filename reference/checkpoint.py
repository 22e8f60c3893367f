"""Checkpoints: atomic save, safe load (no pickled code runs), and import of
checkpoints written by the original ``dlrm_s_pytorch.py --save-model``.

Tensors are streamed between the device and the file: a save lays the file
out with room for every tensor and then copies each into its place through a
shared memory map, and a load maps the file, so the MLPerf tables (90 GiB on a
GPU) never need as much host memory as they hold.
"""

from __future__ import annotations

import mmap
import os
import re
import zipfile

import numpy as np
import torch

from .embedding_factory import PLAIN, describe_layout, embedding_layout, layout_of
from .model import DLRM
from .training_state import TrainingState

FORMAT = "dlrm-mlperf-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    pass


class CheckpointPolicy:
    """When a run saves: every ``every`` steps (0: only at its end), never without a path."""

    def __init__(self, path: str | None, every: int):
        self.path, self.every = path, every

    def due(self, step: int) -> bool:
        return self.path is not None and self.every > 0 and step % self.every == 0

    @property
    def at_end(self) -> bool:
        return self.path is not None


def save(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, training: TrainingState, *,
         config: dict, table_sizes: list[int]) -> None:
    """Everything a resumed run needs: weights, optimiser state (row-wise
    accumulators included) and the training state (see TrainingState).
    Written to a temporary name and renamed, so a crash never leaves half a file."""
    state = {
        "format": FORMAT, "version": VERSION,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        **training.as_dict(),
        "config": config, "table_sizes": list(table_sizes),
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save_streamed(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_streamed(state, path: str) -> None:
    """``torch.save(state, path)`` without a host copy of the tensors: the
    file is written with the tensors' bytes left empty, mapped (shared), and
    each tensor copied into its place; the kernel writes the pages back as they
    fill, and fsync makes them durable before the caller renames the file."""
    with torch.serialization.skip_data():
        torch.save(state, path)
    with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
        placed = torch.load(path, mmap=True, map_location="cpu", weights_only=True)
    _copy_tensors(placed, state)
    del placed  # unmaps the file
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _copy_tensors(into, source) -> None:
    """Copy every tensor of ``source`` into its counterpart in ``into`` (the same structure)."""
    if isinstance(source, torch.Tensor):
        into.copy_(source.detach())
    elif isinstance(source, dict):
        for key, value in source.items():
            _copy_tensors(into[key], value)
    elif isinstance(source, (list, tuple)):
        for a, b in zip(into, source, strict=True):
            _copy_tensors(a, b)


def _numpy_scalar_globals() -> list:
    """What unpickling numpy scalars (as the seed's checkpoints hold) needs:
    the scalar constructor and dtype classes, allowed under both numpy 1 and 2
    module names. Nothing else is allowed, so no arbitrary code can run."""
    core = np._core if hasattr(np, "_core") else np.core
    scalar = core.multiarray.scalar
    allowed = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
               np.dtype]
    for name in dir(np.dtypes):
        cls = getattr(np.dtypes, name)
        if isinstance(cls, type) and name.endswith("DType"):
            allowed.append(cls)
    return allowed


def load_file(path: str, mapped: bool = False) -> dict:
    """The checkpoint's dictionary. ``mapped``: the tensors stay in the file
    (memory-mapped, copy-on-write) until something copies them, as loading into
    a model on a GPU does, instead of being read whole into host memory."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    mapped = mapped and zipfile.is_zipfile(path)  # the legacy (pre-1.6) format cannot be mapped
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except Exception as e:  # torch raises several types for malformed or unsafe files
        raise CheckpointError(f"{path}: cannot load as a weights-only checkpoint: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dictionary, got {type(data).__name__}")
    return data


def is_original(data: dict) -> bool:
    return data.get("format") != FORMAT and "state_dict" in data


_ORIGINAL_KEY = re.compile(r"^(emb_l|bot_l|top_l)\.(\d+)\.(weight|bias)$")


def convert_original(state_dict: dict, model: DLRM, path: str = "checkpoint") -> dict:
    """Map the seed's keys (``emb_l.N.weight``, ``bot_l.K.*``, ``top_l.K.*``)
    onto this model's: the tables are stacked into the fused embedding, and
    the MLP layer indices are the same by construction."""
    layout = layout_of(model.embeddings)
    if layout != PLAIN:
        raise CheckpointError(f"{path}: an original dlrm_s_pytorch.py checkpoint loads into ordinary tables only; "
                              f"this run's model has {describe_layout(layout)}")
    sizes = model.embeddings.table_sizes
    tables: dict[int, torch.Tensor] = {}
    out = {}
    for key, value in state_dict.items():
        match = _ORIGINAL_KEY.match(key)
        if not match:
            raise CheckpointError(f"{path}: unexpected key {key!r} in the original checkpoint's state_dict")
        kind, index, what = match.group(1), int(match.group(2)), match.group(3)
        if kind == "emb_l":
            tables[index] = value
        else:
            out[f"{'bottom_mlp' if kind == 'bot_l' else 'top_mlp'}.{index}.{what}"] = value
    if sorted(tables) != list(range(len(sizes))):
        raise CheckpointError(f"{path}: holds embedding tables {sorted(tables)}, the model has {len(sizes)}")
    for t, n in enumerate(sizes):
        expected = (n, model.embeddings.dim)
        if tuple(tables[t].shape) != expected:
            raise CheckpointError(f"{path}: emb_l.{t}.weight has shape {tuple(tables[t].shape)}, "
                                  f"the model expects {expected} (table_sizes / max_ind_range / embedding_dim?)")
    out["embeddings.weight"] = torch.cat([tables[t] for t in range(len(sizes))])
    return out


def load_weights(path: str, model: DLRM) -> dict:
    """Load model weights from one of our checkpoints or an original one;
    returns the whole checkpoint dictionary. Into a model on a GPU the file is
    mapped, not read: the weights go from the page cache to the GPU."""
    on_gpu = any(p.is_cuda for p in model.parameters())
    data = load_file(path, mapped=on_gpu)
    if is_original(data):
        state = convert_original(data["state_dict"], model, path)
    elif data.get("format") == FORMAT:
        state = data["model"]
        saved, mine = embedding_layout(data.get("config") or {}), layout_of(model.embeddings)
        if saved != mine:
            keys = sorted({k for k in (*saved, *mine) if k != "kind"}) or ["qr_threshold", "md_temperature"]
            raise CheckpointError(f"{path}: saved with {describe_layout(saved)}, but this run's model has "
                                  f"{describe_layout(mine)}; set the same {', '.join(keys)} as the run that "
                                  f"saved it")
    else:
        raise CheckpointError(f"{path}: neither a {FORMAT} nor an original dlrm_s_pytorch.py checkpoint "
                              f"(keys: {', '.join(map(str, data))})")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: does not match the model: missing {missing}, unexpected {extra}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, "
                                  f"the model expects {tuple(expected[key].shape)}")
    model.load_state_dict(state)
    return data


def resume(path: str, model: DLRM, optimizer: torch.optim.Optimizer, optimizer_name: str) -> TrainingState:
    """Load a checkpoint saved by :func:`save` into ``model`` and
    ``optimizer``; returns where the run it came from stood."""
    data = load_weights(path, model)
    if "optimizer" not in data:
        raise CheckpointError(f"{path}: the checkpoint has no optimiser state; it can initialise a model "
                              f"(load_checkpoint) but not resume a run")
    saved = data.get("config", {}).get("optimizer")
    if saved != optimizer_name:  # another optimiser's state may load without complaint, then fail or mislead
        raise CheckpointError(f"{path}: written by a run with optimizer={saved!r}; this run has "
                              f"optimizer={optimizer_name!r}")
    try:
        optimizer.load_state_dict(data["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimiser state does not match optimizer={optimizer_name!r}: {e}") from None
    try:
        return TrainingState.from_dict(data)
    except ValueError as e:
        raise CheckpointError(f"{path}: training state: {e}") from None
