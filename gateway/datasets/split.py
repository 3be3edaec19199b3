"""Seeded, reproducible split of a dataset without splits into train / val / test."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

import msgspec

from gateway.datasets.errors import InvalidDataset


class SplitRatios(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    train: float = 0.8
    val: float = 0.2
    test: float = 0.0

    def check(self) -> SplitRatios:
        values = (self.train, self.val, self.test)
        if any(v < 0 for v in values) or self.train <= 0 or self.val <= 0:
            raise InvalidDataset("split ratios: train and val must be positive, test zero or positive")
        if abs(sum(values) - 1.0) > 1e-6:
            raise InvalidDataset(f"split ratios must add up to 1 (train {self.train} + val {self.val} + "
                                 f"test {self.test} = {sum(values):g})")
        return self


def split_keys(
    keys: Sequence[str], ratios: SplitRatios, seed: int, groups: Sequence[str] | None = None
) -> dict[str, str]:
    """key -> 'train' | 'val' | 'test'.

    Each key's place is decided by a hash of (seed, key), so the same keys and seed always give the same
    split, whatever their order. With `groups` (e.g. the class of each image) every group is split on its
    own, so each class reaches each split.
    """
    ratios.check()
    grouped: dict[str, list[str]] = defaultdict(list)
    for i, key in enumerate(keys):
        grouped[groups[i] if groups else ""].append(key)
    out: dict[str, str] = {}
    for members in grouped.values():
        ranked = sorted(members, key=lambda k: hashlib.blake2b(f"{seed}\0{k}".encode(), digest_size=8).digest())
        n_val, n_test = _counts(len(ranked), ratios)
        for i, key in enumerate(ranked):
            out[key] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    if len(keys) >= 2 and "val" not in out.values():
        raise InvalidDataset("too few images to split off a validation set")
    return out


def _counts(n: int, ratios: SplitRatios) -> tuple[int, int]:
    """Numbers of val and test items out of n: at least one each when its ratio is positive and n allows,
    always leaving one for training."""
    n_val = round(n * ratios.val)
    n_test = round(n * ratios.test)
    if n >= 2 and n_val == 0:
        n_val = 1
    if ratios.test > 0 and n >= 3 and n_test == 0:
        n_test = 1
    while n_val + n_test >= n and n_val + n_test > 0:
        if n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test
