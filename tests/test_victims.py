"""The one victim picker: both selection policies, seeding, prefixes and the errors for bad input."""
from __future__ import annotations

import pytest
import torch

from fedrepro.attacks.victims import pick_victims
from fedrepro.data import ImageDataset


def synthetic(count: int = 60) -> ImageDataset:
    images = torch.randint(0, 256, (count, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.arange(count) % 10
    return ImageDataset("synthetic", "train", images, labels, [str(c) for c in range(10)], (0.5,) * 3, (0.25,) * 3)


def test_class_cycle_takes_each_class_in_turn_and_is_seeded():
    data = synthetic()
    victims = pick_victims(data, 12, seed=0, policy="class_cycle")
    assert data.labels[victims].tolist() == [c % 10 for c in range(12)]
    assert len(set(victims.tolist())) == 12
    assert torch.equal(victims, pick_victims(data, 12, seed=0, policy="class_cycle"))
    assert not torch.equal(victims, pick_victims(data, 12, seed=1, policy="class_cycle"))
    assert torch.equal(pick_victims(data, 5, seed=0, policy="class_cycle"), victims[:5])
    with pytest.raises(ValueError, match="not enough images of class"):
        pick_victims(data, 61, seed=0, policy="class_cycle")


def test_random_draws_distinct_images_from_the_pool_only():
    data = synthetic()
    pool = torch.arange(20, 40)
    victims = pick_victims(data, 8, seed=0, pool=pool)
    assert len(set(victims.tolist())) == 8 and set(victims.tolist()) <= set(pool.tolist())
    assert torch.equal(victims, pick_victims(data, 8, seed=0, pool=pool))
    assert not torch.equal(victims, pick_victims(data, 8, seed=1, pool=pool))
    assert torch.equal(pick_victims(data, 3, seed=0, pool=pool), victims[:3])  # a prefix of a larger draw
    whole = pick_victims(data, 60, seed=0)
    assert sorted(whole.tolist()) == list(range(60))
    with pytest.raises(ValueError, match="fewer than 21 victims"):
        pick_victims(data, 21, seed=0, pool=pool)


def test_unknown_policy_and_misused_pool_are_refused():
    data = synthetic()
    with pytest.raises(ValueError, match="random, class_cycle"):
        pick_victims(data, 2, seed=0, policy="stratified")
    with pytest.raises(ValueError, match="pool is for 'random'"):
        pick_victims(data, 2, seed=0, policy="class_cycle", pool=torch.arange(5))
