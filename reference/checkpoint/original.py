"""Checkpoints of the original ``dlrm_s_pytorch.py --save-model``: its keys
(``emb_l.N.weight``, ``bot_l.K.*``, ``top_l.K.*``) mapped onto this model's.
The MLP layer indices are the same by construction; each table is read by
rows, so every rank reads only the rows it owns."""

from __future__ import annotations

import re

import torch

from .files import FORMAT, CheckpointError
from .rows import FileTables

_KEY = re.compile(r"^(emb_l|bot_l|top_l)\.(\d+)\.(weight|bias)$")


def is_original(data: dict) -> bool:
    return data.get("format") != FORMAT and "state_dict" in data


def split_original(path: str, state_dict: dict, mapped: bool) -> tuple[dict, FileTables]:
    """(this model's dense state, the tables' rows) of an original state_dict."""
    tables: dict[int, torch.Tensor] = {}
    dense = {}
    for key, value in state_dict.items():
        match = _KEY.match(key)
        if not match:
            raise CheckpointError(f"{path}: unexpected key {key!r} in the original checkpoint's state_dict")
        kind, index, what = match.group(1), int(match.group(2)), match.group(3)
        if kind == "emb_l":
            tables[index] = value
        else:
            dense[f"{'bottom_mlp' if kind == 'bot_l' else 'top_mlp'}.{index}.{what}"] = value
    if sorted(tables) != list(range(len(tables))) or not tables:
        raise CheckpointError(f"{path}: holds embedding tables {sorted(tables)}, not 0..N-1")
    weights = [tables[t] for t in range(len(tables))]
    return dense, FileTables(path, {"weight": weights}, mapped, {}, lambda t: f"emb_l.{t}.weight")
