"""DLRM: bottom MLP over dense features, embeddings over categorical ids,
a feature interaction, and a top MLP that outputs one click logit."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from .config import MLP_INITS
from .data.jagged import Ids
from .dcn import DCNInteraction
from .embedding_factory import build_embeddings
from .embeddings import EmbeddingTables, FusedEmbeddingBag
from .interaction import DotInteraction, build_interaction
from .linear import MLP, Linear, resolve_kernel


def resolve_mlp_init(mlp_init: str, interaction: str) -> str:
    """``auto``: each generation's own reference. DLRM v1's seed draws normal
    weights; DLRMv2's (the one with ``dcn``) keeps ``nn.Linear``'s default,
    uniform. Anything else is taken as given."""
    if mlp_init == "auto":
        return "uniform" if interaction == "dcn" else "normal"
    if mlp_init not in MLP_INITS:
        raise ValueError(f"unknown mlp_init {mlp_init!r}: expected {', '.join(MLP_INITS)}")
    return mlp_init


def mlp(widths: list[int], final_relu: bool, generator: torch.Generator, kernel: str = "aten",
        init: str = "normal") -> MLP:
    """Linear/ReLU pairs, laid out like the seed's ``create_mlp`` so layer
    ``k`` of the seed's checkpoints is index ``2k`` here too. ``init``
    (resolved, see :func:`resolve_mlp_init`), drawn from ``generator``:
    normal, as in the seed: weights N(0, sqrt(2/(fan_in+fan_out))), biases
    N(0, sqrt(1/fan_out)); uniform, ``nn.Linear``'s default: weights and biases
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    Without the final ReLU the last layer outputs the logits: it stays fp32 under autocast."""
    if init not in ("normal", "uniform"):
        raise ValueError(f"mlp init must be normal or uniform (auto is resolved first), got {init!r}")
    layers: list[nn.Module] = []
    count = len(widths) - 1
    for i, (fan_in, fan_out) in enumerate(pairwise(widths)):
        linear = Linear(fan_in, fan_out, kernel, fp32_output=not final_relu and i == count - 1)
        with torch.no_grad():
            if init == "normal":
                linear.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
                linear.bias.normal_(0.0, math.sqrt(1.0 / fan_out), generator=generator)
            else:
                bound = 1.0 / math.sqrt(fan_in)
                linear.weight.uniform_(-bound, bound, generator=generator)
                linear.bias.uniform_(-bound, bound, generator=generator)
        layers.append(linear)
        if i < len(widths) - 2 or final_relu:
            layers.append(nn.ReLU())
    return MLP(*layers)


class DLRM(nn.Module):
    """The model, whatever the distribution: ``embeddings`` holds every table
    (:class:`FusedEmbeddingBag`) or one rank's shards with their all-to-all
    (distributed/sharded.py), and the MLPs are the same either way."""

    embeddings: EmbeddingTables

    def __init__(self, table_sizes: list[int], embedding_dim: int, bottom_mlp: list[int],
                 top_mlp: list[int], interaction: str = "dot", self_interaction: bool = False,
                 seed: int = 0, embeddings: EmbeddingTables | None = None, linear_kernel: str = "aten",
                 device=None, dcn_num_layers: int = 3, dcn_low_rank_dim: int = 512, mlp_init: str = "auto"):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        init = resolve_mlp_init(mlp_init, interaction)
        self.bottom_mlp = mlp(bottom_mlp, final_relu=True, generator=generator, kernel=linear_kernel, init=init)
        # The tables (or this rank's shards of them) draw from their own streams, so the
        # MLPs start from the same weights whichever embeddings module is used.
        self.embeddings = embeddings if embeddings is not None else FusedEmbeddingBag(table_sizes, embedding_dim,
                                                                                      seed=seed, device=device)
        # Drawn between the two MLPs: the interactions without parameters draw nothing,
        # so their models keep the weights they had before dcn existed.
        self.interaction, width = build_interaction(interaction, len(table_sizes), embedding_dim, bottom_mlp[-1],
                                                    self_interaction, dcn_num_layers=dcn_num_layers,
                                                    dcn_low_rank_dim=dcn_low_rank_dim, generator=generator,
                                                    kernel=linear_kernel)
        self.top_mlp = mlp([width] + list(top_mlp), final_relu=False, generator=generator, kernel=linear_kernel,
                           init=init)
        if isinstance(self.embeddings, FusedEmbeddingBag) and isinstance(self.interaction, DotInteraction):
            self.embeddings.lookup_output = self.interaction.stack_lookup()

    @classmethod
    def from_config(cls, cfg, table_sizes: list[int], linear_kernel: str | None = None, device=None,
                    embeddings: EmbeddingTables | None = None) -> DLRM:
        """``linear_kernel``: one already resolved (:func:`resolve_linear_kernel`); default: cfg's, resolved now.
        ``embeddings``: the tables module, when not all tables are here (one rank's shards);
        default: :func:`build_embeddings`'s (ordinary tables unless cfg asks for QR or MD), built on
        ``device`` (the MLPs are built on the host, then moved)."""
        kernel = linear_kernel or resolve_linear_kernel(cfg)[0]
        if embeddings is None:
            embeddings = build_embeddings(cfg, table_sizes, device)
        return cls(table_sizes, cfg.embedding_dim, cfg.bottom_mlp, cfg.top_mlp, cfg.interaction,
                   cfg.self_interaction, cfg.seed, embeddings=embeddings, linear_kernel=kernel, device=device,
                   dcn_num_layers=cfg.dcn_num_layers, dcn_low_rank_dim=cfg.dcn_low_rank_dim, mlp_init=cfg.mlp_init)

    def forward(self, dense: torch.Tensor, ids: Ids) -> torch.Tensor:
        """Click logits of shape (B,) for the B samples of ``dense``; sigmoid gives
        probabilities. ``ids``: what the embeddings look up for them, one id or a
        bag per table (with sharded tables: the whole global batch's, for this
        rank's tables)."""
        pending = self.embeddings.start(ids)
        x = self.bottom_mlp(dense)  # overlaps the all-to-all of sharded tables
        e = self.embeddings.finish(pending)
        return self.top_mlp(self.interaction(x, e)).squeeze(1)

    @staticmethod
    def dense_interaction(cfg, num_tables: int) -> tuple[nn.Module, int]:
        """The interaction and its output width on the meta device: shapes without memory or init."""
        with torch.device("meta"):
            return build_interaction(cfg.interaction, num_tables, cfg.embedding_dim, cfg.bottom_mlp[-1],
                                     cfg.self_interaction, dcn_num_layers=cfg.dcn_num_layers,
                                     dcn_low_rank_dim=cfg.dcn_low_rank_dim)

    @staticmethod
    def dense_layers(cfg, num_tables: int) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of the two MLPs, without building the model."""
        _, width = DLRM.dense_interaction(cfg, num_tables)
        widths = [list(cfg.bottom_mlp), [width] + list(cfg.top_mlp)]
        return [(i, o) for w in widths for i, o in pairwise(w)]

    @staticmethod
    def dense_parameter_count(cfg, num_tables: int) -> int:
        """Parameters of the MLPs and the interaction (replicated on every rank), without building the model."""
        interaction, _ = DLRM.dense_interaction(cfg, num_tables)
        return (sum(i * o + o for i, o in DLRM.dense_layers(cfg, num_tables))
                + sum(p.numel() for p in interaction.parameters()))

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("embeddings.")]

    def mlperf_tensor_names(self) -> list[str]:
        """Names of the initialised tensors as MLPerf's weights_initialization expects them."""
        n_bottom = sum(isinstance(m, nn.Linear) for m in self.bottom_mlp)
        n_top = sum(isinstance(m, nn.Linear) for m in self.top_mlp)
        n_cross = len(self.interaction.cross.up) if isinstance(self.interaction, DCNInteraction) else 0
        return (["embeddings"] + [f"bottom_mlp_dense{i + 1}" for i in range(n_bottom)]
                + [f"dcn_cross{i + 1}" for i in range(n_cross)]
                + [f"top_mlp_dense{i + 1}" for i in range(n_top)])


def resolve_linear_kernel(cfg) -> tuple[str, str]:
    """The MLPs' GEMM kernel for this run (``linear_kernel``, auto resolved
    for this CPU) and why; bf16 and CUDA always use torch's own GEMMs."""
    if cfg.precision != "fp32" or cfg.device != "cpu":
        return "aten", f"precision {cfg.precision} on {cfg.device}: torch's GEMMs"
    return resolve_kernel(cfg.linear_kernel)
