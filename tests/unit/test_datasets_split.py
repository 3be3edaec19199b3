import pytest

from gateway.datasets.errors import InvalidDataset
from gateway.datasets.split import SplitRatios, split_keys

KEYS = [f"img{i}.jpg" for i in range(100)]
RATIOS = SplitRatios(train=0.7, val=0.2, test=0.1)


def test_the_split_follows_the_ratios() -> None:
    split = split_keys(KEYS, RATIOS, seed=3)
    counts = {s: list(split.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 20, "test": 10}


def test_the_same_seed_gives_the_same_split_whatever_the_order() -> None:
    assert split_keys(KEYS, RATIOS, seed=3) == split_keys(list(reversed(KEYS)), RATIOS, seed=3)
    assert split_keys(KEYS, RATIOS, seed=3) != split_keys(KEYS, RATIOS, seed=4)


def test_grouped_split_puts_every_group_into_val() -> None:
    groups = ["a" if i < 90 else "b" for i in range(100)]
    split = split_keys(KEYS, RATIOS, seed=0, groups=groups)
    assert any(split[k] == "val" for k, g in zip(KEYS, groups, strict=True) if g == "b")


def test_tiny_datasets_still_get_one_validation_image() -> None:
    assert sorted(split_keys(["a", "b"], RATIOS, seed=0).values()) == ["train", "val"]


@pytest.mark.parametrize("ratios", [SplitRatios(train=0.5, val=0.2, test=0.1), SplitRatios(train=1.0, val=0.0),
                                    SplitRatios(train=0.9, val=0.2, test=-0.1)])
def test_bad_ratios_are_refused(ratios: SplitRatios) -> None:
    with pytest.raises(InvalidDataset, match="ratios"):
        split_keys(KEYS, ratios, seed=0)
