import pytest
import torch

from reference.model import DLRM
from reference.optim import RowWiseAdagrad, build_optimizer


def test_rowwise_adagrad_against_the_formulas_with_duplicates():
    torch.manual_seed(0)
    rows, dim, lr, eps = 6, 4, 0.3, 1e-10
    w = torch.nn.Parameter(torch.randn(rows, dim))
    dense = torch.nn.Parameter(torch.randn(3))
    opt = RowWiseAdagrad([w, dense], lr=lr, eps=eps)
    ref_w, ref_dense = w.detach().clone(), dense.detach().clone()
    acc, dense_acc = torch.zeros(rows), torch.zeros(3)
    for _ in range(3):
        ids = torch.tensor([1, 3, 1, 4, 1])          # row 1 three times: must be coalesced
        upstream = torch.randn(len(ids), dim)
        opt.zero_grad()
        (torch.nn.functional.embedding(ids, w, sparse=True) * upstream).sum().backward()
        dense_grad = torch.randn(3)
        dense.grad = dense_grad.clone()
        opt.step()
        # Direct implementation of REFERENCE.md.
        g = torch.zeros(rows, dim).index_add_(0, ids, upstream)
        for r in sorted(set(ids.tolist())):
            acc[r] += (g[r] ** 2).mean()
            ref_w[r] -= lr * g[r] / (acc[r].sqrt() + eps)
        dense_acc += dense_grad ** 2
        ref_dense -= lr * dense_grad / (dense_acc.sqrt() + eps)
        torch.testing.assert_close(w.detach(), ref_w)
        torch.testing.assert_close(dense.detach(), ref_dense)
    untouched = [0, 2, 5]
    assert torch.all(opt.state[w]["sum"][untouched] == 0)
    assert opt.state[w]["sum"].shape == (rows,)  # one float per row


def test_rowwise_adagrad_dense_parameters_follow_adagrad_with_lr_decay_and_weight_decay():
    torch.manual_seed(1)
    lr, lr_decay, weight_decay, eps = 0.5, 0.3, 0.1, 1e-8
    dense = torch.nn.Parameter(torch.randn(4, 3))
    opt = RowWiseAdagrad([dense], lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay)
    ref, acc = dense.detach().clone(), torch.zeros(4, 3)
    for step in (1, 2, 3):
        grad = torch.randn(4, 3)
        dense.grad = grad.clone()
        opt.step()
        g = grad + weight_decay * ref
        acc += g ** 2
        ref -= lr / (1 + (step - 1) * lr_decay) * g / (acc.sqrt() + eps)
        torch.testing.assert_close(dense.detach(), ref)
        assert opt.state[dense]["step"].item() == step  # counted once a step
    torch.testing.assert_close(opt.state[dense]["sum"], acc)


def test_rowwise_adagrad_untouched_rows_bitwise_unchanged():
    w = torch.nn.Parameter(torch.randn(10, 3))
    before = w.detach().clone()
    opt = RowWiseAdagrad([w], lr=1.0)
    torch.nn.functional.embedding(torch.tensor([2, 7]), w, sparse=True).sum().backward()
    opt.step()
    keep = [i for i in range(10) if i not in (2, 7)]
    assert torch.equal(w.detach()[keep], before[keep])
    assert not torch.equal(w.detach()[2], before[2])


def test_rowwise_adagrad_lr_decay_and_weight_decay_rules():
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = RowWiseAdagrad([w], lr=1.0, lr_decay=1.0)
    for expected_clr in (1.0, 0.5):
        before = w.detach().clone()
        w.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (2, 2))
        opt.step()
        acc = opt.state[w]["sum"][0]
        torch.testing.assert_close(before[0] - w.detach()[0], torch.full((2,), expected_clr / acc.sqrt().item()))
    opt = RowWiseAdagrad([w], lr=1.0, weight_decay=0.1)
    w.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (2, 2))
    with pytest.raises(RuntimeError, match="weight_decay is not supported with sparse"):
        opt.step()


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rowwise_adagrad"])
def test_every_optimizer_updates_only_present_rows(name):
    model = DLRM([50, 50], 4, [13, 4], [4, 1], seed=0)
    opt = build_optimizer(name, model, lr=0.1)
    before = model.embeddings.weight.detach().clone()
    model(torch.rand(3, 13), torch.tensor([[1, 2], [1, 3], [4, 2]])).sum().backward()
    opt.step()
    changed = (model.embeddings.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [1, 4, 52, 53]


def test_sgd_sparse_update_sums_duplicates():
    w = torch.nn.Parameter(torch.zeros(4, 2))
    opt = build_optimizer("sgd", torch.nn.ParameterList([w]), lr=0.5)
    torch.nn.functional.embedding(torch.tensor([1, 1, 3]), w, sparse=True).sum().backward()
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([[0., 0.], [-1., -1.], [0., 0.], [-.5, -.5]]))


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        build_optimizer("adam", torch.nn.Linear(2, 2), lr=1.0)


@pytest.mark.parametrize("seed", range(3))
def test_rowwise_adagrad_gpu_update_equals_the_hosts_bitwise(seed):
    # The GPU's update (no unique(), so no host sync) run on the host: the same bits, rows absent
    # from the batch untouched, duplicates summed, row 0 present or not.
    g = torch.Generator().manual_seed(seed)
    rows, dim = 50, 8
    ids = torch.randint(0 if seed else 1, rows, (60,), generator=g)
    grad = torch.sparse_coo_tensor(ids.unsqueeze(0), torch.randn(60, dim, generator=g), (rows, dim))
    w = torch.randn(rows, dim, generator=g)
    acc = torch.rand(rows, generator=g) * (torch.rand(rows, generator=g) < 0.5)
    host_w, host_acc = w.clone(), acc.clone()
    RowWiseAdagrad._sparse_update(host_w, grad, host_acc, 0.05, 1e-10)
    RowWiseAdagrad._sparse_update_sync_free(w, grad, acc, 0.05, 1e-10)
    assert torch.equal(w, host_w) and torch.equal(acc, host_acc)
    absent = sorted(set(range(rows)) - set(ids.tolist()))
    assert absent  # the batch leaves rows out, and the comparison covers them
