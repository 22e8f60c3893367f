"""Bags of several ids: the jagged container, sum pooling (one process and
one rank's shards) against a plain loop, and the optimisers' handling of
duplicate ids against hand-computed updates."""

import re
from types import SimpleNamespace

import pytest
import torch

from reference.data.jagged import JaggedIds
from reference.distributed.planner import Plan, Shard, plan_tables
from reference.distributed.sharded import ShardedEmbeddings
from reference.embeddings import FusedEmbeddingBag
from reference.optim import RowWiseAdagrad

SIZES = [7, 3, 11, 5]
# (table, sample) -> bag, 3 samples: variable lengths, empty bags, duplicate ids.
BAGS = {(0, 0): [1, 1, 6], (0, 1): [], (0, 2): [0],
        (1, 0): [2], (1, 1): [0, 1, 2, 0], (1, 2): [],
        (2, 0): [10, 3], (2, 1): [3], (2, 2): [5, 5, 5],
        (3, 0): [], (3, 1): [], (3, 2): [4, 0]}


def jagged(bags: dict, tables: int, batch: int) -> JaggedIds:
    values = [i for t in range(tables) for b in range(batch) for i in bags[t, b]]
    lengths = torch.tensor([[len(bags[t, b]) for b in range(batch)] for t in range(tables)])
    return JaggedIds.from_lengths(torch.tensor(values, dtype=torch.int64), lengths)


def pooled_by_loop(table, bags: dict, tables: int, batch: int, dim: int) -> torch.Tensor:
    """Bag sums one id at a time: ``table(t)`` is table t's weight."""
    out = torch.zeros(batch, tables, dim)
    for (t, b), ids in bags.items():
        for i in ids:
            out[b, t] += table(t)[i]
    return out


def random_bags(sizes: list[int], batch: int, most: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {(t, b): torch.randint(0, n, (int(torch.randint(0, most + 1, (1,), generator=g)),), generator=g).tolist()
            for t, n in enumerate(sizes) for b in range(batch)}


# --- the container ----------------------------------------------------------------------


def test_jagged_ids_layout_and_table_slices():
    ids = jagged(BAGS, 4, 3)
    assert ids.num_tables == 4 and ids.batch_size == 3
    assert ids.lengths().tolist() == [[3, 0, 1], [1, 4, 0], [2, 1, 3], [0, 0, 2]]
    assert ids.table_lengths().tolist() == [4, 5, 6, 2]
    picked = ids.tables([2, 0, 2])  # any order, a table may repeat
    assert picked.lengths().tolist() == [[2, 1, 3], [3, 0, 1], [2, 1, 3]]
    assert picked.values.tolist() == [10, 3, 3, 5, 5, 5, 1, 1, 6, 0, 10, 3, 3, 5, 5, 5]
    assert ids.tables([]).num_tables == 0
    ones = JaggedIds.from_dense(torch.tensor([[1, 2], [3, 4], [5, 6]]))
    assert ones.lengths().tolist() == [[1, 1, 1], [1, 1, 1]] and ones.values.tolist() == [1, 3, 5, 2, 4, 6]
    moved = ids.to(torch.device("cpu"))
    assert torch.equal(moved.values, ids.values) and torch.equal(moved.offsets, ids.offsets)


@pytest.mark.parametrize("values, offsets, batch, message", [
    (torch.tensor([1, 2]), torch.tensor([0, 1, 2]), 2, None),
    (torch.tensor([1, 2], dtype=torch.int32), torch.tensor([0, 1, 2]), 2, "must be 1-D int64"),
    (torch.tensor([1, 2]), torch.tensor([0, 1, 2]), 3, "are not tables x batch size (3) + 1"),
    (torch.tensor([1, 2]), torch.tensor([1, 1, 2]), 2, "must start at 0 and end at the 2 values"),
    (torch.tensor([1, 2]), torch.tensor([0, 1, 3]), 2, "must start at 0 and end at the 2 values"),
    (torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1, 3]), 3, "must not decrease"),
])
def test_jagged_ids_are_validated(values, offsets, batch, message):
    if message is None:
        JaggedIds(values, offsets, batch)
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        JaggedIds(values, offsets, batch)


# --- pooling, one process ---------------------------------------------------------------


def test_fused_tables_pool_bags_as_a_loop_does():
    emb = FusedEmbeddingBag(SIZES, 5, seed=3)
    out = emb(jagged(BAGS, 4, 3))
    torch.testing.assert_close(out, pooled_by_loop(emb.table, BAGS, 4, 3, 5), rtol=1e-6, atol=1e-7)
    assert torch.equal(out[1, 3], torch.zeros(5)) and torch.equal(out[1, 0], torch.zeros(5))  # empty bags
    # The gradient: every id of a bag receives the bag's gradient, a duplicate once per occurrence.
    upstream = torch.randn(3, 4, 5)
    (out * upstream).sum().backward()
    expected = torch.zeros(sum(SIZES), 5)
    for (t, b), ids in BAGS.items():
        for i in ids:
            expected[sum(SIZES[:t]) + i] += upstream[b, t]
    torch.testing.assert_close(emb.weight.grad.to_dense(), expected)


def test_bags_of_one_match_the_one_id_path():
    emb = FusedEmbeddingBag(SIZES, 4)
    ids = torch.stack([torch.randint(0, n, (6,)) for n in SIZES], dim=1)
    single = emb(ids)
    (single * torch.arange(4.0)).sum().backward()
    grad_single = emb.weight.grad.to_dense()
    emb.weight.grad = None
    bags = emb(JaggedIds.from_dense(ids))
    (bags * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(bags, single, rtol=0, atol=0)
    torch.testing.assert_close(emb.weight.grad.to_dense(), grad_single)


def test_bags_for_the_wrong_number_of_tables_are_refused():
    with pytest.raises(ValueError, match="expected bags for 3 tables, got 4"):
        FusedEmbeddingBag(SIZES[:3], 4)(jagged(BAGS, 4, 3))


# --- pooling, one rank's shards ---------------------------------------------------------


def two_ranges_on_one_rank(sizes: list[int], dim: int) -> Plan:
    """Rank 0 holds rows 0..99 and 200..299 of table 0 (a plan the planner rarely makes)."""
    shards = [Shard(0, 0, 100, 0), Shard(0, 100, 200, 1), Shard(0, 200, 300, 0), Shard(1, 0, 7, 2)]
    shards += [Shard(t, 0, n, t % 3) for t, n in enumerate(sizes) if t > 1]
    plan = Plan(sizes, 3, dim, 4 * dim, 0, shards)
    plan.check()
    return plan


@pytest.mark.parametrize("sync_free", [False, True], ids=["host lookup", "sync-free lookup"])
@pytest.mark.parametrize("planned", [True, False], ids=["planner", "two ranges of a table on one rank"])
def test_shards_pool_the_ids_they_hold_and_sum_to_the_whole_bag(sync_free, planned):
    sizes = [300, 7, 3, 11, 5, 9]  # table 0 is split over the 3 ranks
    world, batch, dim = 3, 8, 4
    plan = plan_tables(sizes, world, dim) if planned else two_ranges_on_one_rank(sizes, dim)
    assert plan.split_tables() == [0]
    bags = random_bags(sizes, batch, most=5, seed=1)
    for b in range(batch):  # every bag of the split table crosses shards, with a repeat
        bags[0, b] = [b, 150 + b, 299 - b, b]
    ids = jagged(bags, len(sizes), batch)
    whole = FusedEmbeddingBag(sizes, dim, seed=2)
    total = torch.zeros(batch, len(sizes), dim)
    for rank in range(world):
        comm = SimpleNamespace(device=torch.device("cpu"), rank=rank, world_size=world)
        emb = ShardedEmbeddings(plan, comm, seed=2)
        emb.sync_free = sync_free
        shards = emb.lookup(ids.tables(emb.columns))
        first = [sum(s.rows for s in emb.shards[:i]) for i in range(len(emb.shards))]
        held = [emb.weight.detach()[f:f + s.rows] for f, s in zip(first, emb.shards, strict=True)]
        expected = pooled_by_loop(held.__getitem__, {(i, b): [r - s.lo for r in bags[s.table, b] if s.lo <= r < s.hi]
                                                     for i, s in enumerate(emb.shards) for b in range(batch)},
                                  len(emb.shards), batch, dim)
        torch.testing.assert_close(shards, expected, rtol=1e-6, atol=1e-7)
        # Only the rows held here get (nonzero) gradients, each the sum over its occurrences.
        upstream = torch.randn_like(shards)
        (shards * upstream).sum().backward()
        grad = emb.weight.grad.to_dense()
        want = torch.zeros_like(grad)
        for i, s in enumerate(emb.shards):
            for b in range(batch):
                for r in bags[s.table, b]:
                    if s.lo <= r < s.hi:
                        want[first[i] + r - s.lo] += upstream[b, i]
        torch.testing.assert_close(grad, want)
        for i, s in enumerate(emb.shards):
            total[:, s.table] += shards[:, i].detach()
    torch.testing.assert_close(total, whole(ids).detach(), rtol=1e-6, atol=1e-6)


# --- duplicate ids in the optimisers ----------------------------------------------------


def bag_gradient_step(optimizer_factory):
    """One step on the bags ``[[2, 2, 5], [2], []]`` of one table with
    upstream gradient ``up``; returns (weight before, after, up)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 3))
    before = w.detach().clone()
    opt = optimizer_factory([w])
    up = torch.randn(3, 3)
    ids = JaggedIds(torch.tensor([2, 2, 5, 2]), torch.tensor([0, 3, 4, 4]), 3)
    out = torch.nn.functional.embedding_bag(ids.values, w, ids.offsets, mode="sum", sparse=True,
                                            include_last_offset=True)
    (out * up).sum().backward()
    assert w.grad.is_sparse and not w.grad.is_coalesced()  # one entry per id, row 2 three times
    assert w.grad._indices()[0].tolist() == [2, 2, 5, 2]
    opt.step()
    return before, w.detach(), up


def test_sgd_sums_the_gradients_of_a_repeated_id():
    before, after, up = bag_gradient_step(lambda p: torch.optim.SGD(p, lr=0.5))
    g2, g5 = 2 * up[0] + up[1], up[0]  # row 2: twice in bag 0, once in bag 1
    torch.testing.assert_close(after[2], before[2] - 0.5 * g2)
    torch.testing.assert_close(after[5], before[5] - 0.5 * g5)
    untouched = [0, 1, 3, 4, 6, 7]
    assert torch.equal(after[untouched], before[untouched])


def test_rowwise_adagrad_coalesces_a_repeated_id_before_its_accumulator():
    before, after, up = bag_gradient_step(lambda p: RowWiseAdagrad(p, lr=0.5, eps=1e-10))
    for row, g in ((2, 2 * up[0] + up[1]), (5, up[0])):
        acc = (g ** 2).mean()  # of the summed gradient, not a sum over its three parts
        torch.testing.assert_close(after[row], before[row] - 0.5 * g / (acc.sqrt() + 1e-10))
    untouched = [0, 1, 3, 4, 6, 7]
    assert torch.equal(after[untouched], before[untouched])


def test_rowwise_adagrad_sync_free_update_coalesces_too():
    """The GPU's update (no unique()), run on the host."""
    torch.manual_seed(0)
    rows = torch.tensor([2, 2, 5, 2, 0])
    values = torch.randn(5, 3)
    grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, (8, 3))
    host = torch.randn(8, 3)
    device = host.clone()
    acc_host, acc_device = torch.zeros(8), torch.zeros(8)
    RowWiseAdagrad._sparse_update(host, grad, acc_host, 0.5, 1e-10)
    RowWiseAdagrad._sparse_update_sync_free(device, grad, acc_device, 0.5, 1e-10)
    torch.testing.assert_close(device, host)
    torch.testing.assert_close(acc_device, acc_host)
