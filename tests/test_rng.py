"""Randomness primitives: mixed seeds, worker seeding, generator state round trip."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from posecore import rng


def test_mixed_seeds_do_not_collide_like_seed_plus_epoch():
    assert rng.mixed_rng(5, 1).integers(2**32) != rng.mixed_rng(6, 0).integers(2**32)
    assert rng.mixed_rng(5, 1).integers(2**32) == rng.mixed_rng(5, 1).integers(2**32)


class GlobalDraws(Dataset):
    """Each item is a draw from the worker's global generators (what a third-party transform might use)."""

    def __init__(self, seed: int, epoch: int) -> None:
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(()))


def draws(seed: int, epoch: int) -> list[tuple[float, ...]]:
    loader = DataLoader(GlobalDraws(seed, epoch), batch_size=None, num_workers=2, worker_init_fn=rng.init_worker)
    return [tuple(float(v) for v in item) for item in loader]


def test_workers_are_seeded_from_seed_epoch_and_worker_id():
    first = draws(7, 0)
    assert first == draws(7, 0)
    assert first != draws(7, 1) and first != draws(8, 0)
    assert first[0] != first[1]  # items 0 and 1 come from workers 0 and 1


def test_generator_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    rng.seed_globals(3)
    state = rng.capture()
    torch.save(state, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), torch.rand(()))
    rng.seed_globals(99)
    rng.restore(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(())) == expected
