"""Plugging a policy into FedAvg: every client trains only on transformed images, so the gradients an
attacker sees are gradients of transformed images.

:class:`PolicyBatchTransform` is a ``StandardTrainer(batch_transform=...)``; :func:`policy_trainer`
builds the trainer, with an optional gradient defense applied at every local step as well (paper 05's
Table 3 trains with pruning or noise on each step's gradient).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from fedrepro.augment import random_crop_flip
from fedrepro.defenses.spec import Defense
from fedrepro.defenses.transforms.policy import Policy, PolicyLike, apply_policy, to_uint8

if TYPE_CHECKING:
    from fedrepro.fl import StandardTrainer


def transform_images(images: torch.Tensor, policy: PolicyLike, generator: torch.Generator | None = None,
                     respect_probability: bool = False, crop_flip: bool = False) -> torch.Tensor:
    """Optional crop + flip (the reference's ``--mode=aug``, :func:`fedrepro.augment.random_crop_flip`),
    then the policy; uint8 or [0, 1] float in and out. ``generator`` None draws from the global RNG."""
    if crop_flip:
        x, restore = to_uint8(images)
        images = restore(random_crop_flip(x, generator))
    return apply_policy(images, policy, generator, respect_probability=respect_probability)


@dataclass
class PolicyBatchTransform:
    """A ``StandardTrainer(batch_transform=...)``: every training batch is transformed on the client.

    ``ClientData`` holds normalised float tensors, so each batch is de-normalised (``x·std + mean``),
    rounded back to its uint8 pixels — exact, because the tensors were made from uint8 images —
    transformed on the CPU (optionally after a random crop + flip), and normalised again. Labels pass
    through. Each call draws fresh randomness (signs, hybrid choice, p draws) from ``generator`` if
    given, else straight from the global torch RNG, which ``run_fedavg`` reseeds from (seed, round,
    client) before a client trains: runs are reproducible and independent of which worker process
    trains which client.
    """

    policy: PolicyLike
    mean: Sequence[float]
    std: Sequence[float]
    respect_probability: bool = False
    crop_flip: bool = False
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        self.policy = self.policy if isinstance(self.policy, Policy) else Policy(self.policy)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        pixels = (x.detach() * std + mean).mul(255.0).round().clamp(0, 255).to(torch.uint8)
        out = transform_images(pixels.cpu(), self.policy, self.generator, self.respect_probability, self.crop_flip)
        return (out.to(x.device).to(x.dtype) / 255.0 - mean) / std, y


def policy_trainer(policy: PolicyLike, mean: Sequence[float], std: Sequence[float],
                   defense: Defense | str | Any | None = None, **options: Any) -> "StandardTrainer":
    """A FedAvg ``StandardTrainer`` whose clients train only on ``policy``-transformed images.

    An identity policy (without crop + flip) trains on the batches as they are: no uint8 round trip,
    whose float rounding would make "none" differ from plain training. ``defense`` (a spec such as
    ``Defense.of("prune", ratio=0.7)``, or a gradient-defense object) is applied to the batch gradient
    of every local step, per layer, before the optimiser step (:class:`fedrepro.attacks.DefendedStep`).
    ``options`` go to :class:`PolicyBatchTransform` (``respect_probability``, ``crop_flip``, ``generator``).
    """
    from fedrepro.attacks import DefendedStep
    from fedrepro.fl import StandardTrainer

    parsed = policy if isinstance(policy, Policy) else Policy(policy)
    skip = parsed.is_identity and not options.get("crop_flip", False)
    transform = None if skip else PolicyBatchTransform(parsed, tuple(mean), tuple(std), **options)
    if isinstance(defense, (str, Defense)):
        defense = Defense.parse(defense).gradient_defense()
    return StandardTrainer(batch_transform=transform,
                           gradient_transform=None if defense is None else DefendedStep(defense))
