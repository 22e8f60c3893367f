"""Quotient-remainder and mixed-dimension embeddings (issue #14 items 2 and 3):
lookups against the papers' formulas on hand-built tables, md_solver against
hand-computed values, training with each optimiser, checkpoints, config errors."""
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, SMALL_TABLES, saved_model, tiny_config
from reference import checkpoint, train
from reference.config import Config, ConfigError
from reference.embedding_factory import build_embeddings
from reference.embeddings import FusedEmbeddingBag
from reference.md_embeddings import MDEmbeddingBag, md_solver
from reference.model import DLRM
from reference.optim import build_optimizer
from reference.qr_embeddings import QREmbeddingBag

DEVNULL = open(os.devnull, "w")


def config(**values) -> Config:
    cfg = Config()
    cfg.update({**dict(embedding_dim=8, bottom_mlp=[13, 16, 8], top_mlp=[16, 1], submission_division="open"),
                **values}, origin="test")
    return cfg.validate()


# --- quotient-remainder ----------------------------------------------------

def qr_tables(operation: str) -> QREmbeddingBag:
    """Table 0 (7 rows) above the threshold 5: quotient rows 0..2 and remainder rows 0..2 (c = 3);
    table 1 (2 rows) an ordinary table."""
    dim = 4 if operation == "concat" else 2
    tables = QREmbeddingBag([7, 2], dim, threshold=5, collisions=3, operation=operation)
    with torch.no_grad():
        tables.quotient_table(0).copy_(torch.tensor([[1., 2.], [3., 4.], [5., 6.]]))
        tables.remainder_table(0).copy_(torch.tensor([[10., 20.], [30., 40.], [50., 60.]]))
        tables.plain_table(1).copy_(-torch.arange(1., 2 * dim + 1).view(2, dim))
    return tables


def test_qr_shapes_follow_ceil_n_over_c_and_c():
    tables = QREmbeddingBag([10, 3, 100], 8, threshold=5, collisions=4)
    assert tables.qr == [0, 2] and tables.plain == [1]
    assert tuple(tables.quotient_table(0).shape) == (3, 8) and tuple(tables.quotient_table(2).shape) == (25, 8)
    assert tuple(tables.remainder_table(0).shape) == (4, 8) and tuple(tables.plain_table(1).shape) == (3, 8)
    assert tables.rows() == 3 + 25 + 4 + 4 + 3


@pytest.mark.parametrize("operation, expected", [
    # id 5 -> q[5 // 3] = q[1] = (3, 4), r[5 % 3] = r[2] = (50, 60); id 0 -> q[0], r[0]; id 6 -> q[2], r[0]
    ("mult", [[150., 240.], [10., 40.], [50., 120.]]),
    ("add", [[53., 64.], [11., 22.], [15., 26.]]),
    ("concat", [[3., 4., 50., 60.], [1., 2., 10., 20.], [5., 6., 10., 20.]]),
])
def test_qr_lookup_is_the_combined_quotient_and_remainder_rows(operation, expected):
    tables = qr_tables(operation)
    out = tables(torch.tensor([[5, 1], [0, 0], [6, 1]]))
    assert torch.equal(out[:, 0], torch.tensor(expected))
    plain = [[-3., -4.], [-1., -2.], [-3., -4.]] if operation != "concat" else \
        [[-5., -6., -7., -8.], [-1., -2., -3., -4.], [-5., -6., -7., -8.]]
    assert torch.equal(out[:, 1], torch.tensor(plain))  # the ordinary table: its own row


def test_qr_bags_pool_quotient_and_remainder_before_combining():
    # As the original's two EmbeddingBags: (q[1] + q[2]) * (r[2] + r[0]) = (8, 10) * (60, 80).
    out = qr_tables("mult")(torch.tensor([[[5, 6], [0, 1]]]))
    assert torch.equal(out, torch.tensor([[[480., 800.], [-4., -6.]]]))


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_qr_vectors_start_with_the_variance_of_an_ordinary_tables_rows(operation):
    n = 40_000  # an ordinary table's rows are U(-sqrt(1/n), sqrt(1/n)): variance 1 / (3n)
    tables = QREmbeddingBag([n], 32, threshold=1, collisions=4, operation=operation, seed=3)
    vectors = tables(torch.arange(0, n, 7).view(-1, 1))
    assert abs(vectors.var().item() * 3 * n - 1) < 0.1
    assert abs(vectors.mean().item()) < 0.1 * (1 / (3 * n)) ** 0.5  # centred: a tenth of a std


# --- mixed dimensions ------------------------------------------------------

def test_md_solver_matches_the_alpha_power_rule_by_hand():
    # n = (1000, 10, 100000), alpha 0.5, d0 64: sorted (10, 1000, 100000), lambda = 64 * sqrt(10) = 202.39;
    # d = (64, 202.39 / sqrt(1000) = 6.4 -> 6, 202.39 / sqrt(100000) = 0.64 -> at least 1), in the input order.
    n = torch.tensor([1000, 10, 100000])
    assert md_solver(n, 0.5, d0=64, round_dim=False).tolist() == [6, 64, 1]
    # Powers of 2: 6 -> 2 ** round(log2 6 = 2.58) = 8.
    assert md_solver(n, 0.5, d0=64, round_dim=True).tolist() == [8, 64, 1]
    # n = (4, 4000, 40), alpha 0.3, d0 16: lambda = 16 * 4 ** 0.3 = 24.25; 40 -> 24.25 / 40 ** 0.3 = 8.03 -> 8,
    # 4000 -> 24.25 / 4000 ** 0.3 = 2.01 -> 2.
    assert md_solver(torch.tensor([4, 4000, 40]), 0.3, d0=16, round_dim=False).tolist() == [16, 2, 8]
    # A budget B = 1000 instead of d0: lambda = 1000 / (10 ** 0.5 + 1000 ** 0.5) = 28.75; 10 -> 9.09 -> 9,
    # 1000 -> 0.91 -> 1; rounded, 9 -> 2 ** round(3.17) = 8.
    assert md_solver(torch.tensor([10, 1000]), 0.5, B=1000, round_dim=False).tolist() == [9, 1]
    assert md_solver(torch.tensor([10, 1000]), 0.5, B=1000, round_dim=True).tolist() == [8, 1]


def test_md_factory_widths_threshold_and_cap():
    sizes = [1000, 10, 100000]
    cfg = config(embedding_dim=64, bottom_mlp=[13, 64], md_temperature=0.5)
    assert build_embeddings(cfg, sizes).dims == [6, 64, 1]
    cfg = config(embedding_dim=64, bottom_mlp=[13, 64], md_temperature=0.5, md_threshold=1000)
    assert build_embeddings(cfg, sizes).dims == [64, 64, 1]  # the table of 1000 rows is at the threshold
    # embedding_dim 48 is no power of 2: md_solver rounds the smallest table's 48 up to 2 ** round(5.58) = 64,
    # capped at 48; 1000 rows: 48 * sqrt(10) / sqrt(1000) = 4.8 -> 5 -> 2 ** round(2.32) = 4.
    cfg = config(embedding_dim=48, bottom_mlp=[13, 48], md_temperature=0.5, md_round_dims=True)
    assert build_embeddings(cfg, sizes).dims == [4, 48, 1]


def md_tables() -> MDEmbeddingBag:
    tables = MDEmbeddingBag([3, 100], 2, dims=[2, 1])
    with torch.no_grad():
        tables.table(0).copy_(torch.tensor([[1., 2.], [3., 4.], [5., 6.]]))
        tables.table(1).copy_(torch.arange(100.).view(100, 1))  # row k holds (k)
        tables.projection(1).copy_(torch.tensor([[3., 5.]]))
    return tables


def test_md_lookup_is_the_row_times_its_projection():
    tables = md_tables()
    assert tables.projection(0) is None  # full width: no projection, as PrEmbeddingBag's Identity
    out = tables(torch.tensor([[2, 7], [0, 0]]))
    assert torch.equal(out, torch.tensor([[[5., 6.], [21., 35.]], [[1., 2.], [0., 0.]]]))
    # A bag is pooled, then projected: (7 + 10) * (3, 5).
    assert torch.equal(tables(torch.tensor([[[0, 1], [7, 10]]])), torch.tensor([[[4., 6.], [51., 85.]]]))


# --- training --------------------------------------------------------------

LAYOUTS = {"qr_mult": dict(qr_threshold=10), "qr_concat": dict(qr_threshold=10, qr_operation="concat"),
           "qr_add": dict(qr_threshold=10, qr_operation="add"),
           "md": dict(md_temperature=0.5, md_round_dims=True)}


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad", "adagrad"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_one_step_updates_exactly_the_rows_looked_up_and_the_projections(layout, optimizer):
    cfg = config(optimizer=optimizer, **LAYOUTS[layout])
    model = DLRM.from_config(cfg, SMALL_TABLES)
    opt = build_optimizer(optimizer, model, 0.1)
    generator = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randint(0, n, (16,), generator=generator) for n in SMALL_TABLES], dim=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = F.binary_cross_entropy_with_logits(model(torch.rand(16, 13, generator=generator), ids), torch.ones(16))
    loss.backward()
    tables = {n: p for n, p in model.named_parameters() if n.startswith("embeddings.") and p.grad.is_sparse}
    assert tables, "the tables' gradients are sparse"
    looked_up = {n: set(p.grad.coalesce().indices()[0].tolist()) for n, p in tables.items()}
    opt.step()
    for name, p in model.named_parameters():
        changed = (p.detach() != before[name]).flatten(1).any(dim=1) if p.dim() > 1 else p.detach() != before[name]
        if name in tables:
            assert set(changed.nonzero().flatten().tolist()) == looked_up[name], name
        else:  # the MLPs, and MD's projections: dense parameters
            assert changed.any(), name


def default_config(data_dir, tmp_path, *overrides) -> Config:
    """The embedded default (configs/synthetic.yaml: the MLPerf architecture, SGD lr 1.0) on small data."""
    return Config.from_sources(os.path.join(ROOT, "configs", "synthetic.yaml"), [
        f"data_dir={data_dir}", "train_file=synthetic_train.bin", "eval_file=synthetic_test.bin",
        "counts_file=synthetic_fea_count.npz", f"results_dir={tmp_path / 'results'}", "batch_size=256",
        "eval_batch_size=2048", "max_steps=20", "log_every=5", "progress=false", "num_threads=1",
        "eval_every_epochs=0", "submission_division=open", *overrides])


@pytest.mark.parametrize("overrides", [["qr_threshold=10", "qr_collisions=4"], ["qr_threshold=10", "qr_operation=add"],
                                       ["qr_threshold=10", "qr_operation=concat"],
                                       ["md_temperature=0.3", "md_round_dims=true"]],
                         ids=["qr_mult", "qr_add", "qr_concat", "md"])
def test_the_embedded_default_trains_with_qr_and_md(easy_data, tmp_path, overrides):
    cfg = default_config(easy_data, tmp_path, *overrides)
    result = train.run(cfg, out=DEVNULL)
    assert result.steps == 20
    losses = [loss for _, loss in result.loss_curve]
    assert losses[-1] < losses[0] - 0.05, result.loss_curve
    assert result.final["auc"] > 0.6, result.final


# --- checkpoints -----------------------------------------------------------

@pytest.mark.parametrize("layout", ["qr_mult", "md"])
def test_checkpoint_round_trip_resumes_exactly(easy_data, tmp_path, layout):
    common = dict(optimizer="rowwise_adagrad", submission_division="open", learning_rate=0.1, **LAYOUTS[layout])
    full = train.run(tiny_config(easy_data, tmp_path, **common), out=DEVNULL)
    ckpt = str(tmp_path / "ckpt")
    first = train.run(tiny_config(easy_data, tmp_path, max_steps=7, checkpoint_path=ckpt, **common), out=DEVNULL)
    assert first.losses == full.losses[:7]
    resumed = train.run(tiny_config(easy_data, tmp_path, resume=ckpt, **common), out=DEVNULL)
    assert resumed.losses == full.losses[7:] and resumed.final["auc"] == full.final["auc"]
    # The weights load into a fresh model of the same config.
    cfg = tiny_config(easy_data, tmp_path, **common)
    model = DLRM.from_config(cfg, SMALL_TABLES)
    checkpoint.load_weights(ckpt, model)
    saved = saved_model(ckpt)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_a_qr_checkpoint_into_another_layout_is_refused_by_name(easy_data, tmp_path):
    ckpt = str(tmp_path / "qr")
    train.run(tiny_config(easy_data, tmp_path, max_steps=2, checkpoint_path=ckpt, submission_division="open",
                          qr_threshold=10), out=DEVNULL)
    plain = DLRM.from_config(tiny_config(easy_data, tmp_path), SMALL_TABLES)
    with pytest.raises(checkpoint.CheckpointError, match=r"saved with quotient-remainder tables \(qr_threshold=10, "
                                                         r"qr_collisions=4, qr_operation=mult\).*ordinary tables"):
        checkpoint.load_weights(ckpt, plain)
    other = DLRM.from_config(tiny_config(easy_data, tmp_path, submission_division="open", qr_threshold=10,
                                         qr_collisions=3), SMALL_TABLES)
    with pytest.raises(checkpoint.CheckpointError, match="qr_collisions=3"):
        checkpoint.load_weights(ckpt, other)
    md = DLRM.from_config(tiny_config(easy_data, tmp_path, submission_division="open", md_temperature=0.5),
                          SMALL_TABLES)
    with pytest.raises(checkpoint.CheckpointError, match="mixed-dimension"):
        checkpoint.load_weights(ckpt, md)


def test_plain_tables_are_unchanged_by_the_factory():
    cfg = config()
    built = build_embeddings(cfg, SMALL_TABLES)
    direct = FusedEmbeddingBag(SMALL_TABLES, 8, seed=cfg.seed)
    assert type(built) is FusedEmbeddingBag and torch.equal(built.weight, direct.weight)


# --- configuration ---------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["qr_threshold=10", "qr_operation=max"], "qr_operation: must be one of mult, add, concat, got 'max'"),
    (["qr_threshold=10", "qr_collisions=1"], "qr_collisions: must be >= 2"),
    (["qr_threshold=-1"], "qr_threshold: must be >= 0"),
    (["md_temperature=-0.5"], "md_temperature: must be a finite number >= 0"),
    (["md_temperature=0.5", "md_threshold=-3"], "md_threshold: must be >= 0"),
    (["md_round_dims=3"], "md_round_dims: expected true or false"),
    (["qr_threshold=10", "md_temperature=0.5"], "md_temperature: quotient-remainder .* do not combine"),
    (["qr_threshold=10", "qr_operation=concat", "embedding_dim=7", "bottom_mlp=13-7"],
     "qr_operation: concat splits embedding_dim in two halves: needs an even embedding_dim, got 7"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_sources(None, ["submission_division=open", *overrides])


@pytest.mark.parametrize("key", ["qr_threshold=100", "md_temperature=0.3"])
def test_closed_division_refuses_qr_and_md(key):
    with pytest.raises(ConfigError, match=f"{key.split('=')[0]}: .*closed division"):
        Config.from_sources(None, [key])


@pytest.mark.parametrize("key", ["qr_threshold", "md_temperature"])
def test_several_ranks_are_refused_at_startup(monkeypatch, capsys, key):
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        monkeypatch.setenv(name, value)
    assert train.main([f"{key}=10", "submission_division=open"]) == 2  # before any rendezvous
    assert (f"error: command line: {key}: QR and MD tables run in one process only for now (this run has 2 ranks)"
            in capsys.readouterr().err)
