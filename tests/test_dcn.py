"""DLRMv2: the low-rank cross network against its formula, the reference
architecture's parameter count and layout, its initialisation rule, exact
element-wise Adagrad on bags with repeated ids, and the configs' rules."""

import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from reference import train
from reference.config import Config, ConfigError
from reference.data.jagged import JaggedIds
from reference.data.random_batches import RandomDataset, RandomSpec
from reference.dcn import CrossNetwork
from reference.embeddings import FusedEmbeddingBag
from reference.interaction import build_interaction
from reference.model import DLRM
from reference.optim import build_optimizer
from reference.precision import cpu_bf16_support

CLOSED = os.path.join(ROOT, "configs", "dlrm_dcnv2_closed.yaml")
BAG_SIZES = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]


def cross_by_loop(net: CrossNetwork, x0: torch.Tensor) -> torch.Tensor:
    """x_{l+1} = x0 * (W_l (V_l x_l) + b_l) + x_l, one sample and one output element at a time."""
    out = torch.empty_like(x0)
    for s in range(x0.shape[0]):
        x = x0[s].tolist()
        for v, w in zip(net.down, net.up, strict=True):
            V, W, b = v.weight.tolist(), w.weight.tolist(), w.bias.tolist()
            h = [sum(V[r][j] * x[j] for j in range(len(x))) for r in range(len(V))]
            x = [x0[s, i].item() * (sum(W[i][r] * h[r] for r in range(len(h))) + b[i]) + x[i]
                 for i in range(len(x))]
        out[s] = torch.tensor(x, dtype=x0.dtype)
    return out


def test_cross_layers_follow_the_formula():
    net = CrossNetwork(width=6, num_layers=3, rank=2, generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():  # non-zero biases, so b_l's place in the formula is tested too
        for w in net.up:
            w.bias.normal_(0.0, 0.5)
    x0 = torch.randn(4, 6, dtype=torch.double)
    torch.testing.assert_close(net(x0), cross_by_loop(net, x0), rtol=1e-12, atol=1e-12)


def test_cross_init_is_xavier_normal_with_zero_bias():
    net = CrossNetwork(width=3456, num_layers=1, rank=512, generator=torch.Generator().manual_seed(0))
    for layer in (net.down[0], net.up[0]):
        assert abs(layer.weight.std().item() / math.sqrt(2.0 / (3456 + 512)) - 1) < 0.01
    assert net.down[0].bias is None and net.down[0].weight.shape == (512, 3456)
    assert net.up[0].weight.shape == (3456, 512) and torch.equal(net.up[0].bias, torch.zeros(3456))


def test_the_interaction_crosses_the_bottom_output_then_the_tables_in_order():
    dcn, width = build_interaction("dcn", 3, 4, 5, dcn_num_layers=2, dcn_low_rank_dim=3,
                                   generator=torch.Generator().manual_seed(0))
    assert width == 5 + 3 * 4
    dense, sparse = torch.randn(2, 5), torch.randn(2, 3, 4)
    x0 = torch.cat([dense, sparse[:, 0], sparse[:, 1], sparse[:, 2]], dim=1)
    torch.testing.assert_close(dcn(dense, sparse), dcn.cross(x0))
    with torch.no_grad():  # with W_l = 0 and b_l = 0 every layer passes x_l on: the output is x0 itself
        for w in dcn.cross.up:
            w.weight.zero_()
    torch.testing.assert_close(dcn(dense, sparse), x0)


def test_reference_architecture_has_16_044_545_dense_parameters():
    cfg = Config.from_sources(CLOSED)
    assert len(cfg.table_sizes) == 26 and sum(cfg.table_sizes) == 204_184_588
    assert DLRM.dense_parameter_count(cfg, len(cfg.table_sizes)) == 16_044_545
    # The parts, on the real modules (small tables: the count does not depend on their rows).
    model = DLRM.from_config(cfg, [10] * 26, "aten")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(model.bottom_mlp), count(model.interaction), count(model.top_mlp)) == (171_392, 10_627_200,
                                                                                         5_245_953)
    assert [m.in_features for m in model.top_mlp if isinstance(m, torch.nn.Linear)] == [3456, 1024, 1024, 512, 256]
    assert isinstance(model.bottom_mlp[-1], torch.nn.ReLU)        # the bottom MLP ends in a ReLU
    assert isinstance(model.top_mlp[-1], torch.nn.Linear)         # the top MLP in a linear logit
    assert model.top_mlp[-1].fp32_output
    dense, ids = torch.rand(3, 13), torch.randint(0, 10, (3, 26))
    assert model(dense, ids).shape == (3,)
    assert model.mlperf_tensor_names()[4:8] == ["dcn_cross1", "dcn_cross2", "dcn_cross3", "top_mlp_dense1"]


def test_mlp_init_auto_is_uniform_with_dcn_and_normal_otherwise():
    def first_top(interaction, mlp_init="auto", seed=0):
        return DLRM([10] * 3, 8, [13, 64, 8], [512, 1], interaction=interaction, seed=seed, mlp_init=mlp_init,
                    dcn_low_rank_dim=4).top_mlp[0]
    dcn = first_top("dcn")
    bound = 1 / math.sqrt(32)  # fan_in: 8 + 3 * 8
    assert dcn.weight.abs().max() <= bound and dcn.weight.abs().max() > 0.95 * bound
    assert dcn.bias.abs().max() <= bound
    dot = first_top("dot")
    assert abs(dot.weight.std().item() - math.sqrt(2 / (14 + 512))) < 0.003  # the seed's normal init
    assert abs(first_top("dcn", "normal").weight.std().item() - math.sqrt(2 / (32 + 512))) < 0.003
    assert torch.equal(first_top("dcn").weight, first_top("dcn").weight)  # seeded
    assert not torch.equal(first_top("dcn").weight, first_top("dcn", seed=1).weight)


@pytest.mark.skipif(cpu_bf16_support() is not None, reason=f"this CPU lacks native bf16: {cpu_bf16_support()}")
def test_dcn_under_bf16_autocast_is_close_to_fp32_and_keeps_an_fp32_logit():
    model = DLRM([50] * 4, 16, [13, 32, 16], [64, 32, 1], interaction="dcn", dcn_low_rank_dim=8, seed=2)
    dense, ids = torch.rand(64, 13), torch.randint(0, 50, (64, 4))
    fp32 = model(dense, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(dense, ids)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)
    bf16.sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.interaction.parameters())


# --- element-wise Adagrad ------------------------------------------------------------------------


def test_adagrad_is_exact_element_wise_on_bags_with_repeated_ids():
    """torch's Adagrad on the tables' embedding_bag gradients: per element, duplicates summed first,
    only the rows in the batch touched; plain Adagrad for a dense parameter (REFERENCE-DCNV2.md)."""
    sizes, dim, lr, eps = [6, 4], 3, 0.1, 1e-8
    emb = FusedEmbeddingBag(sizes, dim, seed=0)
    dense = torch.nn.Parameter(torch.randn(5))
    holder = torch.nn.Module()
    holder.emb, holder.dense = emb, dense
    opt = build_optimizer("adagrad", holder, lr=lr, eps=eps)
    w, ref_dense = emb.weight.detach().clone(), dense.detach().clone()
    m, m_dense = torch.zeros_like(w), torch.zeros(5)
    # Row 1 three times in a step (twice in one bag), row 8 (table 1's row 2) in two bags.
    steps = [([1, 1, 4, 1, 0, 2, 3, 2], [[3, 2], [1, 2]]), ([5, 1, 5, 3, 3], [[1, 2], [2, 0]])]
    for values, lengths in steps:
        ids = JaggedIds.from_lengths(torch.tensor(values), torch.tensor(lengths))
        upstream = torch.randn(2, 2, dim)
        opt.zero_grad()
        ((emb(ids) * upstream).sum() + (dense * dense).sum()).backward()
        assert not emb.weight.grad.is_coalesced()
        before = emb.weight.detach().clone()
        opt.step()
        # The formula: the gradient of each row summed over its ids, then m += g^2, w -= lr g / (sqrt(m) + eps).
        g = torch.zeros_like(w)
        rows = ids.values + torch.tensor([0, 6]).repeat_interleave(ids.table_lengths())
        bag = torch.arange(4).repeat_interleave(ids.lengths().reshape(-1))  # (table, sample) of every id
        for row, (t, b) in zip(rows.tolist(), zip((bag // 2).tolist(), (bag % 2).tolist(), strict=True),
                               strict=True):
            g[row] += upstream[b, t]
        touched = sorted(set(rows.tolist()))
        for r in touched:
            m[r] += g[r] ** 2
            w[r] -= lr * g[r] / (m[r].sqrt() + eps)
        g_dense = 2 * ref_dense
        m_dense += g_dense ** 2
        ref_dense -= lr * g_dense / (m_dense.sqrt() + eps)
        torch.testing.assert_close(emb.weight.detach(), w, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(dense.detach(), ref_dense, rtol=1e-6, atol=1e-7)
        untouched = [r for r in range(10) if r not in touched]
        assert torch.equal(emb.weight.detach()[untouched], before[untouched])  # bit for bit
    state = opt.state[emb.weight]["sum"]
    assert state.shape == emb.weight.shape  # one accumulator per element
    torch.testing.assert_close(state, m)


# --- configs -------------------------------------------------------------------------------------


def test_closed_dcnv2_config_values():
    cfg = Config.from_sources(CLOSED)
    assert (cfg.interaction, cfg.dcn_num_layers, cfg.dcn_low_rank_dim, cfg.embedding_dim) == ("dcn", 3, 512, 128)
    assert (cfg.optimizer, cfg.learning_rate, cfg.adagrad_eps, cfg.batch_size) == ("adagrad", 0.004, 1e-8, 65536)
    assert (cfg.auc_threshold, cfg.epochs, cfg.eval_every, cfg.submission_benchmark) == (0.80275, 1, 3200,
                                                                                        "dlrm_dcnv2")
    assert cfg.eval_every == 4_195_197_692 // (65536 * 20)


@pytest.mark.parametrize("batch, lr", [(32768, 0.004), (55296, 0.004), (65536, 0.004), (102400, 0.004),
                                       (135168, 0.0034), (160000, 0.004)])
def test_dcnv2_rcp_configs(batch, lr):
    cfg = Config.from_sources(os.path.join(ROOT, "configs", f"dcnv2_rcp_{batch}.yaml"))
    assert (cfg.batch_size, cfg.learning_rate, cfg.eval_every) == (batch, lr, 4_195_197_692 // (batch * 20))
    assert cfg.as_dict() | {"batch_size": 0, "learning_rate": 0, "eval_every": 0} == Config.from_sources(
        CLOSED).as_dict() | {"batch_size": 0, "learning_rate": 0, "eval_every": 0}


@pytest.mark.parametrize("override, message", [
    ("optimizer=sgd", "optimizer: the closed division of submission_benchmark=dlrm_dcnv2 requires 'adagrad'"),
    ("adagrad_eps=1.0e-10", "adagrad_eps: the closed division of submission_benchmark=dlrm_dcnv2 requires 1e-08"),
    ("adagrad_lr_decay=0.1", "adagrad_lr_decay: the closed division of submission_benchmark=dlrm_dcnv2"),
    ("warmup_steps=100", "warmup_steps: the closed division"),
    ("decay_steps=100", "decay_steps: the closed division"),
    ("decay_start_step=5", "decay_start_step: the closed division"),
    ("interaction=dot", "interaction: the closed division of submission_benchmark=dlrm_dcnv2 requires 'dcn'"),
    ("submission_benchmark=dlrm", "optimizer: the closed division requires sgd for submission_benchmark=dlrm"),
])
def test_closed_dcnv2_refuses_what_the_reference_fixes(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config.from_sources(CLOSED, [override])
    Config.from_sources(CLOSED, [override, "submission_division=open"])  # the open division may


@pytest.mark.parametrize("override, message", [
    ("submission_benchmark=dlrm_v3", "submission_benchmark: must be one of dlrm, dlrm_dcnv2"),
    ("dcn_low_rank_dim=0", "dcn_low_rank_dim: must be > 0"),
    ("dcn_num_layers=0", "dcn_num_layers: must be > 0"),
    ("mlp_init=xavier", "mlp_init: must be one of auto, normal, uniform"),
])
def test_bad_dcn_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match="^command line: " + re.escape(message)):
        Config.from_sources(CLOSED, [override, "submission_division=open"])


def test_a_dlrm_closed_config_may_not_take_adagrad():
    with pytest.raises(ConfigError, match="optimizer: the closed division requires sgd for submission_benchmark=dlrm"):
        Config.from_sources(os.path.join(ROOT, "configs", "mlperf_closed.yaml"), ["optimizer=adagrad"])


# --- random bags of fixed per-table sizes ---------------------------------------------------------


def test_random_bags_of_the_reference_per_table_sizes():
    sizes = [50] * 26
    data = RandomDataset(RandomSpec(sizes, 13, bag_sizes=tuple(BAG_SIZES)), 8, 2, seed=3, split="train")
    ids = data.batch(1).ids
    assert isinstance(ids, JaggedIds)
    assert torch.equal(ids.lengths(), torch.tensor(BAG_SIZES).unsqueeze(1).expand(26, 8))
    assert ids.values.numel() == 214 * 8 and int(ids.values.max()) < 50
    # One rank's tables draw the same ids as the whole batch's.
    assert torch.equal(data.ids(1, [20, 3]).values, ids.tables([20, 3]).values)
    with pytest.raises(ValueError, match="bag_sizes needs one size > 0 per table"):
        RandomSpec(sizes, 13, bag_sizes=(1, 2))


@pytest.mark.parametrize("overrides, message", [
    (["bag_sizes=1-2"], "bag_sizes: needs one count > 0 for each of the 3 tables, got 1-2"),
    (["bag_sizes=1-2-0"], "bag_sizes: needs one count > 0"),
    (["bag_sizes=1-2-3", "bag_size=4"], "bag_sizes: fixes every table's bag size"),
    (["bag_sizes=1-2-3", "data_mode=files"], "bag_sizes: per-table bags are drawn by data_mode=random"),
])
def test_bag_sizes_are_validated(overrides, message):
    base = ["data_mode=random", "table_sizes=10-10-10", "submission_division=open"]
    with pytest.raises(ConfigError, match=message):
        Config.from_sources(None, base + overrides)


# The embedded default's model and optimiser on random batches of the reference's bags (its files aside).
RANDOM_BAGS = ["data_mode=random", "data_format=onehot", "auc_threshold=null",
               "bag_sizes=" + "-".join(map(str, BAG_SIZES))]


def test_synthetic_dcnv2_config_trains_a_step():
    cfg = Config.from_sources(os.path.join(ROOT, "configs", "synthetic_dcnv2.yaml"),
                              [*RANDOM_BAGS, "table_sizes=" + "-".join(["20"] * 26), "batch_size=16"])
    assert cfg.bag_sizes == BAG_SIZES and cfg.interaction == "dcn"
    data = RandomDataset(RandomSpec(cfg.table_sizes, 13, bag_sizes=tuple(cfg.bag_sizes)), 16, 1, 0, "train")
    model = DLRM.from_config(cfg, cfg.table_sizes, "aten")
    opt = build_optimizer(cfg.optimizer, model, cfg.learning_rate, cfg.adagrad_eps)
    batch = data.batch(0)
    before = model.top_mlp[0].weight.detach().clone()
    F.binary_cross_entropy_with_logits(model(batch.dense, batch.ids), batch.labels).backward()
    opt.step()
    assert not torch.equal(before, model.top_mlp[0].weight.detach())


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.skipif(
    cpu_bf16_support() is not None, reason=f"this CPU lacks native bf16: {cpu_bf16_support()}"))])
def test_a_dcnv2_run_through_the_trainer(precision, tmp_path):
    cfg = Config.from_sources(os.path.join(ROOT, "configs", "synthetic_dcnv2.yaml"), [*RANDOM_BAGS,
        "table_sizes=" + "-".join(["30"] * 26), "embedding_dim=8", "bottom_mlp=13-16-8", "top_mlp=32-16-1",
        "dcn_low_rank_dim=8", "batch_size=64", "eval_batch_size=128", "random_train_batches=4",
        "random_eval_batches=1", "eval_every_epochs=0.5", "epochs=1", "progress=false", "num_threads=1",
        f"precision={precision}", f"results_dir={tmp_path}"])
    result = train.run(cfg, out=open(os.devnull, "w"))
    assert result.steps == 4 and len(result.evaluations) == 2 and math.isfinite(result.final["log_loss"])
