"""The embeddings module a config asks for: ordinary tables (FusedEmbeddingBag,
the default and fast path), quotient-remainder tables (qr_threshold > 0) or
mixed-dimension tables (md_temperature > 0).

A *layout* names the embedding keys that change the tables' parameters; a
checkpoint's config gives the layout it was saved with, so loading it into a
model of another layout fails with a message naming those keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .embeddings import EmbeddingTables, FusedEmbeddingBag
from .md_embeddings import MDEmbeddingBag, table_dims
from .qr_embeddings import QREmbeddingBag

PLAIN = {"kind": "plain"}
QR_KEYS = ("qr_threshold", "qr_collisions", "qr_operation")
MD_KEYS = ("md_temperature", "md_threshold", "md_round_dims")
# The defaults of the keys (reference/config.py), for configs saved before they existed.
_DEFAULTS = {"qr_threshold": 0, "qr_collisions": 4, "qr_operation": "mult", "md_temperature": 0.0,
             "md_threshold": 0, "md_round_dims": False}


def embedding_layout(values: Mapping[str, Any]) -> dict:
    """The layout of a config (``Config`` or its ``as_dict()``, e.g. a checkpoint's)."""
    get = (lambda k: values.get(k, _DEFAULTS[k])) if isinstance(values, Mapping) else \
        (lambda k: getattr(values, k))
    if get("qr_threshold") > 0:
        return {"kind": "qr", **{k: get(k) for k in QR_KEYS}}
    if get("md_temperature") > 0:
        return {"kind": "md", **{k: get(k) for k in MD_KEYS}}
    return dict(PLAIN)


def describe_layout(layout: Mapping[str, Any]) -> str:
    if layout.get("kind") == "plain":
        return "ordinary tables (qr_threshold=0, md_temperature=0)"
    name = {"qr": "quotient-remainder", "md": "mixed-dimension"}.get(str(layout.get("kind")), str(layout.get("kind")))
    return f"{name} tables ({', '.join(f'{k}={v}' for k, v in layout.items() if k != 'kind')})"


def layout_of(module: EmbeddingTables) -> dict:
    """The layout of an embeddings module (ordinary tables unless it says otherwise)."""
    return dict(getattr(module, "layout", PLAIN))


def build_embeddings(cfg, table_sizes: list[int], device=None) -> EmbeddingTables:
    """The embeddings module for ``cfg`` (one process: several ranks shard
    ordinary tables, and the config refuses QR and MD with several ranks)."""
    layout = embedding_layout(cfg)
    if layout["kind"] == "qr":
        return QREmbeddingBag(table_sizes, cfg.embedding_dim, cfg.qr_threshold, cfg.qr_collisions, cfg.qr_operation,
                              seed=cfg.seed, device=device)
    if layout["kind"] == "md":
        dims = table_dims(table_sizes, cfg.embedding_dim, cfg.md_temperature, cfg.md_threshold, cfg.md_round_dims)
        return MDEmbeddingBag(table_sizes, cfg.embedding_dim, dims, seed=cfg.seed, device=device, layout=layout)
    return FusedEmbeddingBag(table_sizes, cfg.embedding_dim, seed=cfg.seed, device=device)
