import pytest
import torch

from reference.loss_meter import LossMeter


def test_losses_are_read_once_per_window_and_at_the_end():
    reads = []

    def read(values: torch.Tensor) -> list[float]:
        reads.append(values.shape[0])
        return (values * 10).tolist()  # stands for the all-reduce over ranks

    meter = LossMeter(every=4, read=read)
    windows = [meter.add(step, torch.tensor(float(step)), samples=8) for step in range(1, 11)]
    assert [w is not None for w in windows] == [False, False, False, True] * 2 + [False, False]
    assert reads == [4, 4]
    assert windows[3][0] == pytest.approx(25.0) and windows[3][1] > 0  # mean of 10, 20, 30, 40; samples/s
    assert meter.flush() == [90.0, 100.0] and reads == [4, 4, 2]
    assert meter.flush() == [] and reads == [4, 4, 2]
    assert meter.losses == [10.0 * s for s in range(1, 11)]
    assert meter.curve == [(4, pytest.approx(25.0)), (8, pytest.approx(65.0))]  # full windows only
    assert meter.samples == 80


def test_pending_losses_stay_tensors_until_read():
    meter = LossMeter(every=3, read=lambda v: v.tolist())
    loss = torch.tensor([0.5], requires_grad=True) * 2
    meter.add(1, loss, samples=1)
    assert meter.losses == [] and not meter._pending[0].requires_grad
