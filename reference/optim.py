"""Optimisers: SGD, Adagrad, and the seed's row-wise Adagrad, behind one factory.

The embedding weight receives sparse gradients (only the rows in the batch);
every optimiser here updates only those rows.

``adagrad`` is torch's own, and it is exactly DLRMv2's element-wise Adagrad
(fbgemm's EXACT_ADAGRAD, REFERENCE-DCNV2.md): a sparse gradient is coalesced
first (duplicate ids summed), then for each present row only m += g**2,
w -= lr * g / (sqrt(m) + eps), one accumulator per element, starting at 0;
torch takes this path for every sparse gradient, foreach or not
(tests/test_dcn.py checks it against the formula). With tables sharded over
ranks, each rank's optimiser holds the state of its own rows.

With ``sparse_update_kernel=native`` (CPU tables) the rows named by a sparse
gradient are updated by the compiled kernels of reference/row_kernels.py,
the same formulas in one pass; everything else, and every state_dict, is
torch's. The same update can be applied by the table lookup itself, in the
backward pass, from the gradient where the layer above left it
(:func:`backward_row_update`): the results are the same. The dense
parameters' element-wise Adagrad (row-wise Adagrad's, and adagrad's with the
native kernels) is torch's functional Adagrad, fused on the CPU
(:func:`dense_adagrad`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

import torch
from torch import nn
from torch.optim.adagrad import adagrad as functional_adagrad

from .row_kernels import NativeRowKernels, native_row_kernels, sparse_rows


def dense_adagrad(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], group: dict) -> None:
    """Element-wise Adagrad on ``params`` (dense gradients, state ``sum`` and
    ``step`` in ``optimizer.state``) by torch's functional Adagrad: torch's
    formula (g += weight_decay * p; sum += g^2; p -= clr * g / (sqrt(sum) + eps)),
    counting the steps too. On the CPU its fused kernel reads and writes each
    tensor once, where the plain ops make about nine passes over weights,
    gradients and sums. Every one of ``params`` has a gradient (the callers pick those)."""
    states = [optimizer.state[p] for p in params]
    grads = [cast(torch.Tensor, p.grad) for p in params]
    functional_adagrad(params, grads, [s["sum"] for s in states], [s["step"] for s in states],
                       fused=all(p.device.type == "cpu" for p in params), foreach=False, lr=group["lr"],
                       weight_decay=group["weight_decay"], lr_decay=group["lr_decay"], eps=group["eps"],
                       maximize=group.get("maximize", False))


def count_step(state: dict, group: dict) -> float:
    """Counts one more step in ``state``; returns its lr, decayed as torch's Adagrad decays it:
    lr / (1 + (step - 1) * lr_decay)."""
    state["step"] += 1
    return group["lr"] / (1 + (state["step"].item() - 1) * group["lr_decay"])


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per embedding row (REFERENCE.md).

    Sparse gradients are coalesced first (duplicate rows summed); for each
    present row r: a_r += mean(g_r ** 2); w_r -= lr * g_r / (sqrt(a_r) + eps).
    Rows absent from the batch are not touched. Dense parameters get plain
    element-wise Adagrad with the same eps. The lr at step s is
    lr / (1 + (s - 1) * lr_decay).
    """

    def __init__(self, params, lr: float = 0.01, lr_decay: float = 0.0, eps: float = 1e-10,
                 weight_decay: float = 0.0, kernels: NativeRowKernels | None = None):
        if lr <= 0 or eps <= 0 or lr_decay < 0 or weight_decay < 0:
            raise ValueError(f"invalid row-wise Adagrad settings: lr={lr}, eps={eps}, "
                             f"lr_decay={lr_decay}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay))
        self.kernels = kernels  # for sparse gradients on CPU; None: torch's ops

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            dense = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    self._state(p, rows=False)
                    dense.append(p)
                elif self.kernels is not None and not p.is_cuda:
                    self.update_rows(p, *sparse_rows(p.grad, p), group)
                else:
                    state, clr = self._row_step(p, group)
                    self._sparse_update(p, p.grad, state["sum"], clr, group["eps"])
            if dense:
                dense_adagrad(self, dense, group)
        return loss

    def _state(self, p: torch.Tensor, rows: bool) -> dict:
        """p's state, made on first use: one accumulator per row (sparse gradients) or per element."""
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["sum"] = torch.zeros((p.shape[0],) if rows else p.shape, dtype=p.dtype, device=p.device)
        return state

    def _row_step(self, p: torch.Tensor, group: dict) -> tuple[dict, float]:
        """Counts a step of p's rows; returns p's state and this step's lr."""
        if group["weight_decay"]:
            raise RuntimeError("row-wise Adagrad: weight_decay is not supported with sparse gradients")
        state = self._state(p, rows=True)
        return state, count_step(state, group)

    def update_rows(self, p: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        """The step of p's rows ``rows`` (a CPU table) from their gradient vectors, by the native kernel."""
        if self.kernels is None:
            raise RuntimeError("row-wise Adagrad without native kernels updates rows only from sparse gradients")
        state, clr = self._row_step(p, group)
        self.kernels.rowwise_adagrad(p, rows, grad, state["sum"], clr, group["eps"])

    @staticmethod
    def _sparse_update(p: torch.Tensor, grad: torch.Tensor, acc: torch.Tensor, clr: float, eps: float) -> None:
        if p.is_cuda:
            RowWiseAdagrad._sparse_update_sync_free(p, grad, acc, clr, eps)
            return
        rows, values = grad._indices()[0], grad._values()
        # Coalesce: one summed gradient per distinct row (unique + index_add is
        # ~3x cheaper here than Tensor.coalesce()).
        unique, inverse = torch.unique(rows, return_inverse=True)
        summed = values.new_zeros(len(unique), values.shape[1]).index_add_(0, inverse, values)
        mean_square = torch.linalg.vector_norm(summed, dim=1).pow_(2).div_(summed.shape[1])
        row_acc = acc.index_select(0, unique).add_(mean_square)
        acc.index_copy_(0, unique, row_acc)
        summed.mul_(row_acc.sqrt_().add_(eps).reciprocal_().mul_(-clr).unsqueeze(1))
        p.index_add_(0, unique, summed)

    @staticmethod
    def _sparse_update_sync_free(p: torch.Tensor, grad: torch.Tensor, acc: torch.Tensor, clr: float,
                                 eps: float) -> None:
        """The same update without unique(), whose output size the host would wait
        for on a GPU every step: rows are sorted and summed per run of equal rows
        into as many slots as there are gradient rows; the slots past the last run
        hold zeros and change nothing. The sums are the same as the host's (duplicates
        summed in their order in the batch)."""
        rows, values = grad._indices()[0], grad._values()
        n = rows.numel()
        if n == 0:
            return
        sorted_rows, order = torch.sort(rows, stable=True)
        starts = torch.ones(n, dtype=torch.bool, device=rows.device)
        starts[1:] = sorted_rows[1:] != sorted_rows[:-1]
        slot = torch.cumsum(starts, 0) - 1
        summed = values.new_zeros(n, values.shape[1]).index_add_(0, slot, values.index_select(0, order))
        # Every entry of a run writes the same row; unused slots name row sorted_rows[0] with zero sums.
        unique = torch.zeros_like(rows).index_copy_(0, slot, sorted_rows)
        used = torch.arange(n, device=rows.device) <= slot[-1]
        unique = torch.where(used, unique, sorted_rows[0])
        mean_square = torch.linalg.vector_norm(summed, dim=1).pow_(2).div_(summed.shape[1])
        acc.index_add_(0, unique, mean_square)
        scale = acc.index_select(0, unique).sqrt_().add_(eps).reciprocal_().mul_(-clr)
        summed.mul_(torch.where(used, scale, 0.0).unsqueeze(1))
        p.index_add_(0, unique, summed)


class _NativeRowsStep(torch.optim.Optimizer):
    """The step of a torch optimiser (the class after this one in the bases)
    for everything but the sparse gradients of CPU parameters: those are hidden
    from it and applied by :meth:`update_rows` with the native kernels."""

    kernels: NativeRowKernels

    def update_rows(self, p: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        """The step of p's rows ``rows`` from their gradient vectors ``grad`` (one per id, duplicates included)."""
        raise NotImplementedError

    def dense_step(self) -> None:
        """The update of the parameters with dense gradients: the base optimiser's step."""
        super().step()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse = [(p, p.grad, group) for group in self.param_groups for p in group["params"]
                  if p.grad is not None and p.grad.is_sparse and not p.is_cuda]
        for p, _, _ in sparse:
            p.grad = None
        try:
            self.dense_step()
            for p, grad, group in sparse:
                self.update_rows(p, *sparse_rows(grad, p), group)
        finally:
            for p, grad, _ in sparse:
                p.grad = grad
        return loss


class NativeRowsSGD(_NativeRowsStep, torch.optim.SGD):
    """torch's SGD (lr only, as :func:`build_optimizer` makes it), with the rows
    of a sparse gradient updated by the native kernel: w -= lr * g, duplicate
    ids one after the other, as torch does."""

    def __init__(self, params, lr: float, kernels: NativeRowKernels):
        super().__init__(params, lr=lr)
        self.kernels = kernels

    def update_rows(self, p: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        self.kernels.sgd(p, rows, grad, group["lr"])


class NativeRowsAdagrad(_NativeRowsStep, torch.optim.Adagrad):
    """torch's Adagrad, with the rows of a sparse gradient updated by the native
    kernel: the same formula on each row's summed gradient, the same state."""

    def __init__(self, params, lr: float, lr_decay: float, eps: float, kernels: NativeRowKernels):
        super().__init__(params, lr=lr, lr_decay=lr_decay, eps=eps, initial_accumulator_value=0.0, weight_decay=0.0)
        self.kernels = kernels

    def dense_step(self) -> None:
        # torch's Adagrad, fused where it can be (its own step on the CPU makes about nine passes); through the
        # functional call, so that the param_groups, and a checkpoint's, stay those of plain torch.optim.Adagrad.
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                dense_adagrad(self, params, group)

    def update_rows(self, p: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        self.kernels.adagrad(p, rows, grad, state["sum"], count_step(state, group), group["eps"])


class UpdatesRows(Protocol):
    """An optimiser that can step a CPU table's rows from their gradient vectors (native kernels)."""

    param_groups: list[dict]

    def update_rows(self, p: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, group: dict) -> None: ...


RowUpdate = Callable[[torch.Tensor, torch.Tensor], None]


def backward_row_update(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> RowUpdate | None:
    """The optimiser's step of the table ``p``, as ``update(rows, grad)`` for a
    lookup to apply in its backward pass instead of handing p a sparse
    gradient (embeddings.FusedEmbeddingBag.use_native_kernels); None where the
    optimiser has no native kernels for p. The lookup then reads the gradient
    where the layer above left it (a bf16 gradient stays bf16, a slice of a
    stack is not copied), and p never gets a ``.grad``, so the optimiser's own
    step leaves it alone. The same formulas, state and lr as the step, so the
    results are the same: the lr is set before the forward pass, and nothing
    else reads a table's gradient, or its values after the lookup. Each
    backward pass through the lookup is a step (the Trainer's step has one).
    p's group is looked up at each call: loading a state_dict replaces the
    optimiser's groups."""
    if p.is_cuda or not (isinstance(optimizer, _NativeRowsStep)
                         or (isinstance(optimizer, RowWiseAdagrad) and optimizer.kernels is not None)):
        return None
    rows_optimizer = cast(UpdatesRows, optimizer)

    def update(rows: torch.Tensor, grad: torch.Tensor) -> None:
        group = next(g for g in rows_optimizer.param_groups if any(q is p for q in g["params"]))
        rows_optimizer.update_rows(p, rows, grad, group)

    return update


def build_optimizer(name: str, model: nn.Module, lr: float, eps: float = 1e-10, lr_decay: float = 0.0,
                    sparse_update_kernel: str = "torch") -> torch.optim.Optimizer:
    """``sparse_update_kernel``: torch, or native (resolved already: see
    row_kernels.resolve_sparse_update_kernel)."""
    if sparse_update_kernel not in ("torch", "native"):
        raise ValueError(f"unknown sparse update kernel {sparse_update_kernel!r}: expected torch or native "
                         f"(auto is resolved before the optimizer is built)")
    kernels = native_row_kernels() if sparse_update_kernel == "native" else None
    params = list(model.parameters())
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr) if kernels is None else NativeRowsSGD(params, lr, kernels)
    if name == "adagrad":
        if kernels is not None:
            return NativeRowsAdagrad(params, lr, lr_decay, eps, kernels)
        # Its sparse step builds sparse tensors from indices it made itself: checking them would cost time
        # for nothing, and torch warns on every run ("Memory errors (e.g. SEGFAULT) will occur") unless the
        # checks are switched off explicitly.
        torch.sparse.check_sparse_tensor_invariants.disable()
        return torch.optim.Adagrad(params, lr=lr, lr_decay=lr_decay, eps=eps, initial_accumulator_value=0.0,
                                   weight_decay=0.0)
    if name == "rowwise_adagrad":
        return RowWiseAdagrad(params, lr=lr, lr_decay=lr_decay, eps=eps, kernels=kernels)
    raise ValueError(f"unknown optimizer {name!r}: expected sgd, rowwise_adagrad or adagrad")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
