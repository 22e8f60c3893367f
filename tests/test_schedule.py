import pytest

from reference.schedule import PolyWarmupSchedule


def test_warmup_plateau_decay_and_after():
    s = PolyWarmupSchedule(base_lr=18.0, warmup_steps=8000, decay_start_step=70000, decay_steps=30000)
    assert s(1) == pytest.approx(18.0 / 8000)
    assert s(4000) == pytest.approx(9.0)
    assert s(8000) == 18.0                       # warmup ends exactly at the base lr
    assert s(8001) == 18.0 and s(69999) == 18.0  # the plateau is the base lr (the seed's was lr*(1-1/W))
    assert s(70000) == 18.0                      # decay starts at scale 1
    assert s(85000) == pytest.approx(18.0 * 0.5 ** 2)
    assert s(99999) == pytest.approx(max(1e-7, 18.0 * (1 / 30000) ** 2))
    assert s(100000) == s(99999) and s(10 ** 7) == s(99999)  # held at its last value


def test_no_warmup_and_no_decay():
    assert PolyWarmupSchedule(1.0)(1) == 1.0
    assert PolyWarmupSchedule(1.0)(10 ** 6) == 1.0
    s = PolyWarmupSchedule(2.0, warmup_steps=0, decay_start_step=10, decay_steps=10)
    assert s(1) == 2.0 and s(9) == 2.0          # the seed read an unset value here
    assert s(15) == pytest.approx(2.0 * 0.25)


def test_floor_and_power():
    s = PolyWarmupSchedule(1e-3, decay_start_step=1, decay_steps=1000, power=2)
    assert s(1000) == 1e-7
    assert PolyWarmupSchedule(1.0, decay_start_step=0, decay_steps=4, power=1)(2) == pytest.approx(0.5)


def test_steps_count_from_one():
    with pytest.raises(ValueError):
        PolyWarmupSchedule(1.0)(0)
