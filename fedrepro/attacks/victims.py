"""Which images an experiment attacks: one picker, the selection policy named explicitly.

* ``random`` — ``count`` images drawn without replacement from ``pool`` (default: the whole dataset),
  from the stream ``(seed, "victims", dataset name)``; paper 04 draws from one client's training split.
* ``class_cycle`` — class 0, 1, …, C−1, 0, … in turn, each image drawn at random within its class from
  the stream ``(seed, "victims")``, so any prefix of the victims covers the classes evenly (paper 03).

The streams are those the published quick-tier numbers were measured with.
"""
from __future__ import annotations

import torch

from fedrepro.data import ImageDataset
from fedrepro.runtime import generator

VICTIM_POLICIES = ("random", "class_cycle")


def pick_victims(dataset: ImageDataset, count: int, seed: int, policy: str = "random",
                 pool: torch.Tensor | None = None) -> torch.Tensor:
    """Indices into ``dataset`` of ``count`` victims chosen by ``policy`` (see the module docstring)."""
    if count < 0:
        raise ValueError(f"the number of victims must be non-negative, got {count}")
    if policy == "random":
        pool = torch.arange(len(dataset)) if pool is None else pool
        if count > len(pool):
            raise ValueError(f"the pool holds {len(pool)} images, fewer than {count} victims")
        return pool[torch.randperm(len(pool), generator=generator(seed, "victims", dataset.name))[:count]]
    if policy != "class_cycle":
        raise ValueError(f"unknown victim policy {policy!r}; choose one of {', '.join(VICTIM_POLICIES)}")
    if pool is not None:
        raise ValueError("the class_cycle policy draws from the whole dataset; pool is for 'random'")
    g = generator(seed, "victims")
    pools = [(dataset.labels == c).nonzero().squeeze(1) for c in range(dataset.num_classes)]
    pools = [p[torch.randperm(len(p), generator=g)] for p in pools]
    taken = [0] * len(pools)
    chosen = []
    while len(chosen) < count:
        c = len(chosen) % len(pools)
        if taken[c] >= len(pools[c]):
            raise ValueError(f"not enough images of class {c} for {count} victims")
        chosen.append(int(pools[c][taken[c]]))
        taken[c] += 1
    return torch.tensor(chosen, dtype=torch.long)
