import pytest

from reference.training_state import TrainingState


def test_epochs_trained_is_fractional_from_zero():
    state = TrainingState(step=7, epoch=1, batch_in_epoch=3)
    assert state.epochs_trained(4) == 1.75
    state.next_epoch()
    assert (state.step, state.epoch, state.batch_in_epoch) == (7, 2, 0)


def test_round_trip_and_invalid_values_named():
    state = TrainingState(step=12, epoch=1, batch_in_epoch=2)
    assert TrainingState.from_dict({**state.as_dict(), "model": {}}) == state
    with pytest.raises(ValueError, match="^epoch must be an integer >= 0, got None"):
        TrainingState.from_dict({"step": 1, "batch_in_epoch": 0})
    with pytest.raises(ValueError, match="^step must be an integer >= 0, got -1"):
        TrainingState.from_dict({"step": -1, "epoch": 0, "batch_in_epoch": 0})
    with pytest.raises(ValueError, match="^batch_in_epoch must be an integer >= 0, got True"):
        TrainingState.from_dict({"step": 1, "epoch": 0, "batch_in_epoch": True})
