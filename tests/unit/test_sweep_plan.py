"""Planning a sweep's trials (`gateway.services.sweeps.plan`) and building their run requests."""

from __future__ import annotations

import msgspec
import pytest

from gateway.errors import Unprocessable
from gateway.schemas import SweepCreate
from gateway.services.sweeps import plan, trial_body


def sweep(**fields: object) -> SweepCreate:
    return msgspec.convert({"spec": {"dataset": "d"}, **fields}, SweepCreate)


def test_a_grid_is_every_combination_in_order_up_to_trials() -> None:
    space = {"lr0": [0.1, 0.01], "batch": [4, 8], "fliplr": [0.5]}
    assert plan(sweep(space=space)) == [
        {"batch": 4, "fliplr": 0.5, "lr0": 0.1}, {"batch": 4, "fliplr": 0.5, "lr0": 0.01},
        {"batch": 8, "fliplr": 0.5, "lr0": 0.1}, {"batch": 8, "fliplr": 0.5, "lr0": 0.01}]
    assert len(plan(sweep(space=space, trials=3))) == 3
    assert len(plan(sweep(space=space, trials=30))) == 4


def test_random_draws_distinct_combinations_repeatably() -> None:
    space = {"lr0": [0.1, 0.01, 0.001], "optimizer": ["SGD", "AdamW"]}
    first = plan(sweep(space=space, method="random", trials=4, seed=7))
    assert first == plan(sweep(space=space, method="random", trials=4, seed=7))
    assert len({tuple(sorted(p.items())) for p in first}) == 4
    assert len(plan(sweep(space=space, method="random", trials=10))) == 10  # more than there are: repeats
    with pytest.raises(Unprocessable):
        plan(sweep(space=space, method="random"))


def test_augmentation_settings_go_into_extra() -> None:
    body = trial_body({"dataset": "d", "extra": {"mosaic": 0.0}}, {"lr0": 0.02, "fliplr": 0.0, "epochs": 2})
    assert body == {"dataset": "d", "kind": "yolo.train", "lr0": 0.02, "epochs": 2,
                    "extra": {"mosaic": 0.0, "fliplr": 0.0}}


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        sweep(space={"warp_speed": [9]})
