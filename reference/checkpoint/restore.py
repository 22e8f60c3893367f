"""Loading a checkpoint into a model (and an optimiser) of any placement.

Three kinds load: a checkpoint folder (folder.py, any world size), a
single file of this trainer's format version 1 (written before folders),
and the original dlrm_s_pytorch.py's file. Each is opened as the dense
state plus the tables' rows by (table, row); every process then copies the
rows it holds (placement.py), so a run re-shards while loading and reads
only its rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..embedding_factory import PLAIN, describe_layout, embedding_layout, layout_of
from ..model import DLRM
from ..training_state import TrainingState
from . import folder
from .files import FORMAT, CheckpointError, load_file
from .original import is_original, split_original
from .placement import TABLE_KEY, slots_of, table_weight
from .rows import FileTables, ShardFiles, TableRows


@dataclass
class Checkpoint:
    path: str
    model: dict                     # the model's tensors but the tables' rows (all of them for QR and MD tables)
    rows: TableRows | None          # the tables' rows, read on demand
    optimizer: dict | None = None   # param_groups, and state by parameter index without the tables' per-row state
    table_param: int | None = None  # the tables' parameter index in the optimiser
    config: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)  # the training state's fields
    original: bool = False


@contextmanager
def opened(path: str) -> Iterator[Checkpoint]:
    """The checkpoint at ``path``, its files unmapped on leaving (so no copy
    of the tables outlives the load)."""
    ckpt = open_checkpoint(path)
    try:
        yield ckpt
    finally:
        if ckpt.rows is not None:
            ckpt.rows.close()


def open_checkpoint(path: str) -> Checkpoint:
    if os.path.isdir(path):
        return _open_folder(folder.find(path))
    data = load_file(path)
    if is_original(data):
        if not isinstance(data["state_dict"], dict):
            raise CheckpointError(f"{path}: state_dict is a {type(data['state_dict']).__name__}, not a dictionary")
        dense, rows = split_original(path, data["state_dict"], mapped=True)
        return Checkpoint(path, dense, rows, original=True)
    if data.get("format") == FORMAT and data.get("version") == 1:
        return _open_single_file(path, data)
    if data.get("format") == FORMAT:
        raise CheckpointError(f"{path}: a {FORMAT} file of version {data.get('version')!r}: a single file is "
                              f"version 1; a folder's files are read through the folder")
    raise CheckpointError(f"{path}: not a checkpoint: neither a {FORMAT} nor an original dlrm_s_pytorch.py "
                          f"checkpoint (keys: {', '.join(map(str, list(data)[:20]))})")


def _open_folder(step_folder: str) -> Checkpoint:
    path = os.path.join(step_folder, folder.META)
    meta = load_file(path)
    if meta.get("format") != FORMAT or meta.get("version") != folder.VERSION:
        raise CheckpointError(f"{path}: not the meta file of a version-{folder.VERSION} {FORMAT} folder (format "
                              f"{meta.get('format')!r}, version {meta.get('version')!r})")
    missing = [k for k in ("plan", "table_sizes", "dim", "model", "optimizer", "row_state", "config") if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: incomplete: no {', '.join(missing)}")
    rows = ShardFiles(step_folder, meta, folder.rank_file, folder.VERSION) if meta["plan"] else None
    return Checkpoint(step_folder, meta["model"], rows, meta["optimizer"], meta["table_param"], meta["config"], meta)


def _open_single_file(path: str, data: dict) -> Checkpoint:
    """Version 1: one file, the tables fused in ``embeddings.weight`` (and its optimiser state) by table."""
    model = dict(data.get("model") or {})
    optimizer = data.get("optimizer")
    if TABLE_KEY not in model:  # QR or MD tables: no rows to address
        return Checkpoint(path, model, None, optimizer, None, data.get("config") or {}, data)
    table_param = list(model).index(TABLE_KEY)  # parameters are the state dict's keys, in order
    fused = model.pop(TABLE_KEY)
    sizes = [int(n) for n in data.get("table_sizes") or []]
    if sum(sizes) != fused.shape[0]:
        raise CheckpointError(f"{path}: table_sizes {sizes} do not add up to the {fused.shape[0]} rows of "
                              f"{TABLE_KEY}")

    def by_table(tensor: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(tensor, sizes))

    tables = {"weight": by_table(fused)}
    row_state = {}
    if optimizer is not None:
        state = {i: dict(s) for i, s in optimizer.get("state", {}).items()}
        for key, value in list(state.get(table_param, {}).items()):
            if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == fused.shape[0]:
                tables[f"state.{key}"] = by_table(state[table_param].pop(key))
                row_state[key] = (list(value.shape[1:]), value.dtype)
        optimizer = {"param_groups": optimizer.get("param_groups"), "state": state}
    rows = FileTables(path, tables, True, row_state, lambda t: f"{TABLE_KEY} rows of table {t}")
    return Checkpoint(path, model, rows, optimizer, table_param, data.get("config") or {}, data)


def _check_layout(ckpt: Checkpoint, model: DLRM) -> None:
    mine = layout_of(model.embeddings)
    if ckpt.original:
        if mine != PLAIN:
            raise CheckpointError(f"{ckpt.path}: an original dlrm_s_pytorch.py checkpoint loads into ordinary "
                                  f"tables only; this run's model has {describe_layout(mine)}")
        return
    saved = embedding_layout(ckpt.config)
    if saved != mine:
        keys = sorted({k for k in (*saved, *mine) if k != "kind"}) or ["qr_threshold", "md_temperature"]
        raise CheckpointError(f"{ckpt.path}: saved with {describe_layout(saved)}, but this run's model has "
                              f"{describe_layout(mine)}; set the same {', '.join(keys)} as the run that saved it")


def _load_model(ckpt: Checkpoint, model: DLRM) -> None:
    _check_layout(ckpt, model)
    slots = slots_of(model.embeddings)
    expected = model.state_dict()
    if slots is not None:
        del expected[TABLE_KEY]  # copied by rows below
        assert ckpt.rows is not None, "ordinary tables in the model and the checkpoint (layouts checked)"
        rows = ckpt.rows
        sizes, dim = model.embeddings.table_sizes, model.embeddings.dim
        if len(rows.table_sizes) != len(sizes):
            raise CheckpointError(f"{ckpt.path}: holds {len(rows.table_sizes)} embedding tables, the model has "
                                  f"{len(sizes)}")
        for t, n in enumerate(sizes):
            if (rows.table_sizes[t], rows.dim) != (n, dim):
                raise CheckpointError(f"{ckpt.path}: {rows.describe(t)} has shape {(rows.table_sizes[t], rows.dim)}, "
                                      f"the model expects {(n, dim)} (table_sizes / max_ind_range / embedding_dim?)")
    missing = sorted(set(expected) - set(ckpt.model))
    extra = sorted(set(ckpt.model) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{ckpt.path}: does not match the model: missing {missing}, unexpected {extra}")
    for key, value in ckpt.model.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{ckpt.path}: {key} has shape {tuple(value.shape)}, "
                                  f"the model expects {tuple(expected[key].shape)}")
    model.load_state_dict(ckpt.model, strict=slots is None)
    if slots is not None:
        _copy_slots(rows, "weight", slots, table_weight(model.embeddings))


def _copy_slots(rows: TableRows, key: str, slots, out: torch.Tensor) -> None:
    with torch.no_grad():
        for s in slots:
            rows.copy(key, s.table, s.lo, out[s.offset:s.offset + s.rows])


def load_weights(path: str, model: DLRM) -> None:
    """Load the model weights of any checkpoint (ours, any world size, or an original one)."""
    with opened(path) as ckpt:
        _load_model(ckpt, model)


def resume(path: str, model: DLRM, optimizer: torch.optim.Optimizer, optimizer_name: str) -> TrainingState:
    """Load a checkpoint saved by :func:`save` into ``model`` and
    ``optimizer``; returns where the run it came from stood."""
    with opened(path) as ckpt:
        if ckpt.optimizer is None:
            raise CheckpointError(f"{ckpt.path}: the checkpoint has no optimiser state; it can initialise a model "
                                  f"(load_checkpoint) but not resume a run")
        saved = ckpt.config.get("optimizer")
        if saved != optimizer_name:  # another optimiser's state may load without complaint, then fail or mislead
            raise CheckpointError(f"{ckpt.path}: written by a run with optimizer={saved!r}; this run has "
                                  f"optimizer={optimizer_name!r}")
        try:
            training = TrainingState.from_dict(ckpt.values)
        except ValueError as e:
            raise CheckpointError(f"{ckpt.path}: training state: {e}") from None
        _load_model(ckpt, model)
        _load_optimizer(ckpt, model, optimizer, optimizer_name)
        return training


def _load_optimizer(ckpt: Checkpoint, model: DLRM, optimizer: torch.optim.Optimizer, name: str) -> None:
    assert ckpt.optimizer is not None, "resume() checked"
    state = {int(i): dict(s) for i, s in ckpt.optimizer.get("state", {}).items()}
    slots = slots_of(model.embeddings)
    if slots is not None and ckpt.rows is not None and ckpt.rows.row_state:
        names = [n for n, _ in model.named_parameters()]
        if ckpt.table_param is None or names.index(TABLE_KEY) != ckpt.table_param:
            raise CheckpointError(f"{ckpt.path}: the tables are parameter {ckpt.table_param} of the saved "
                                  f"optimiser, {names.index(TABLE_KEY)} of this model's")
        weight = table_weight(model.embeddings)
        for key, (shape, dtype) in ckpt.rows.row_state.items():
            values = torch.empty((weight.shape[0], *shape), dtype=dtype, device=weight.device)
            _copy_slots(ckpt.rows, f"state.{key}", slots, values)
            state.setdefault(ckpt.table_param, {})[key] = values
    try:
        optimizer.load_state_dict({"state": state, "param_groups": ckpt.optimizer["param_groups"]})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path}: optimiser state does not match optimizer={name!r}: {e}") from None
