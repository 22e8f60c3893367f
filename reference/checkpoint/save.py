"""What a checkpoint holds: the model and optimiser split into the tables'
rows (every rank its own, by table and row) and the rest (one copy, rank 0)."""

from __future__ import annotations

import torch

from ..model import DLRM
from ..training_state import TrainingState
from . import folder
from .files import FORMAT
from .placement import TABLE_KEY, plan_of, slots_of, table_weight


def save(path: str, model: DLRM, optimizer: torch.optim.Optimizer, training: TrainingState, *,
         config: dict, table_sizes: list[int], group: folder.Group | None = None) -> None:
    """Everything a resumed run needs, into the checkpoint folder ``path``
    (folder.py): weights, optimiser state (row-wise accumulators included),
    the training state (see TrainingState) and the placement plan. Every
    process of ``group`` (default: this one alone) calls it."""
    group = group if group is not None else folder.Alone()
    embeddings = model.embeddings
    slots = slots_of(embeddings)
    names = [name for name, _ in model.named_parameters()]
    table_param = names.index(TABLE_KEY) if slots is not None else None
    saved = optimizer.state_dict()
    state = saved["state"]
    rank_state, row_state = None, {}
    if slots is not None:
        weight = table_weight(embeddings)
        rank_state = {"format": FORMAT, "version": folder.VERSION, "rank": group.rank,
                      "shards": [[s.table, s.lo, s.hi, s.offset] for s in slots], "weight": weight}
        for key, value in state.get(table_param, {}).items():
            # One value per row (the row-wise accumulator, Adagrad's sums) goes with the rows; scalars
            # (the step count) are the same on every rank and go with the dense state.
            if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == weight.shape[0]:
                rank_state[f"state.{key}"] = value
                row_state[key] = {"shape": list(value.shape[1:]), "dtype": str(value.dtype).removeprefix("torch.")}
    meta = None
    if group.rank == 0:
        dense = {k: v for k, v in model.state_dict().items() if not (slots is not None and k == TABLE_KEY)}
        dense_state = {i: {k: v for k, v in s.items() if not (i == table_param and k in row_state)}
                       for i, s in state.items()}
        meta = {"format": FORMAT, "version": folder.VERSION, "world_size": group.world_size,
                "plan": plan_of(embeddings), "table_sizes": list(table_sizes),
                "dim": embeddings.dim, **training.as_dict(), "config": config,
                "model": dense, "optimizer": {"param_groups": saved["param_groups"], "state": dense_state},
                "table_param": table_param, "row_state": row_state}
    folder.write(path, training.step, group, rank_state, meta)
