"""The ATS operations on float images, differentiable in the image: what a policy-aware attacker needs.

Paper 05's client transforms each image with a known policy but unknown random draws (each signed
operation's sign). An attacker who knows the policy can optimise the *untransformed* image x through the
transformation: the dummy gradient is that of T_h(x) for a hypothesis h of the draws. The draws are few
(2 per signed operation of a sub-policy, summed over a hybrid's sub-policies), so :func:`hypotheses` lists
them all and the attack runs one restart per hypothesis; the one whose gradient matches best wins, chosen
by the attack's own loss (no ground truth involved).

Each operation is reproduced on floats in [0, 1]:

* **exact in form** (the uint8 operation up to its final rounding to 1/255): translate and rotate (the same
  pixel gathers, black and grey fill), invert, solarize, brightness / colour / contrast (Pillow's blend
  ``d + f·(x − d)`` with the float greyscale ``0.299 R + 0.587 G + 0.114 B``) and autocontrast;
* **straight-through** (the forward pass is the uint8 operation on the image rounded to 1/255, the gradient
  that of the identity): shear (bicubic taps), sharpness, posterize and equalize — piecewise constant or
  nearly the identity, so the identity's gradient is the useful one.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import torch

from fedrepro.defenses.transforms.library import LIBRARY, Operation, apply_operation
from fedrepro.defenses.transforms.operations import ROTATE_FILL, _rotation_source, translate
from fedrepro.defenses.transforms.policy import Policy

STRAIGHT_THROUGH = frozenset({"shearX", "shearY", "sharpness", "posterize", "equalize"})
_GREY = (0.299, 0.587, 0.114)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return sum(w * x[:, c:c + 1] for c, w in enumerate(_GREY))


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    f = factors.to(x).view(-1, 1, 1, 1)
    return (degenerate + f * (x - degenerate)).clamp(0, 1)


def soft_operation(op: Operation, x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``op`` on float images ``x`` (N, C, H, W) in [0, 1], differentiable in ``x``; ``signs`` (N,) of ±1."""
    name, value = op.name, op.magnitude
    if name in STRAIGHT_THROUGH:
        hard = apply_operation(op, (x.detach() * 255).round().clamp(0, 255).to(torch.uint8), signs.cpu())
        return x + (hard.to(x) / 255 - x).detach()
    if name == "invert":
        return 1 - x
    if name == "solarize":
        return torch.where(x * 255 < float(value), x, 1 - x)
    if name == "autocontrast":
        flat = x.flatten(2)
        lo, hi = flat.min(2).values[..., None, None], flat.max(2).values[..., None, None]
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-12), x)
    if name == "rotate":
        h, w = x.shape[-2:]
        source = _rotation_source(float(value), h, w).to(x.device)
        flat = x.flatten(2)[..., source.clamp(min=0)]
        return torch.where(source >= 0, flat, torch.full_like(flat, ROTATE_FILL / 255)).view_as(x)
    if name in ("translateX", "translateY"):
        size = x.shape[-1] if name == "translateX" else x.shape[-2]
        offsets = float(value) * size * signs.to(torch.float64).cpu()
        return translate(x, offsets, axis="x" if name == "translateX" else "y")
    factors = 1.0 + float(value) * signs.to(torch.float64)
    if name == "brightness":
        return _blend(torch.zeros_like(x), x, factors)
    if name == "color":
        return x if x.shape[1] == 1 else _blend(_grey(x).expand_as(x), x, factors)
    if name == "contrast":
        return _blend(_grey(x).mean((1, 2, 3), keepdim=True).expand_as(x), x, factors)
    raise KeyError(name)


@dataclass(frozen=True)
class Hypothesis:
    """One possible draw of a policy: the sub-policy applied and each of its operations' signs."""

    sequence: tuple[int, ...]
    signs: tuple[float, ...]


def hypotheses(policy: str | Policy) -> list[Hypothesis]:
    """Every draw the client can make under ``policy`` (probabilities off, as notebook 06's clients apply
    every operation): both signs of each signed operation, for each sub-policy of a hybrid."""
    policy = policy if isinstance(policy, Policy) else Policy(policy)
    out = []
    for sequence in policy.policies:
        choices = [(-1.0, 1.0) if LIBRARY[i].signed else (1.0,) for i in sequence]
        out += [Hypothesis(tuple(sequence), signs) for signs in itertools.product(*choices)]
    return out


class PolicyAwareTransform:
    """The client's transformation as the attacker models it, in the attack's (normalised) image space:
    problem ``p`` (a victim × restart) is transformed by hypothesis ``restart mod len(hypotheses)``.

    Pass it as ``invert(..., transform=...)`` with ``restarts`` a multiple of :attr:`count`."""

    def __init__(self, policy: str | Policy, mean: Sequence[float], std: Sequence[float]) -> None:
        self.hypotheses = hypotheses(policy)
        self.mean = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        # hypotheses of one sub-policy share its operations and differ in signs only, which every operation
        # takes per image: each sub-policy is applied once to all its problems, with their signs
        self.sequences = list(dict.fromkeys(h.sequence for h in self.hypotheses))
        self.sequence_of = torch.tensor([self.sequences.index(h.sequence) for h in self.hypotheses])
        width = max(len(q) for q in self.sequences)
        self.signs = torch.tensor([h.signs + (1.0,) * (width - len(h.signs)) for h in self.hypotheses],
                                  dtype=torch.float64)  # (hypotheses, operations)

    @property
    def count(self) -> int:
        return len(self.hypotheses)

    def __call__(self, x: torch.Tensor, restarts: torch.Tensor) -> torch.Tensor:
        """``x`` (P, n, C, H, W) in model space, ``restarts`` (P,): the transformed images, same space."""
        p, n = x.shape[:2]
        mean, std = self.mean.to(x), self.std.to(x)
        pixels = x.reshape(p * n, *x.shape[2:]) * std + mean
        which = (restarts.cpu() % self.count).repeat_interleave(n)
        out = torch.empty_like(pixels)
        for k, sequence in enumerate(self.sequences):
            rows = (self.sequence_of[which] == k).nonzero().squeeze(1)
            if not rows.numel():
                continue
            images, signs = pixels[rows.to(x.device)], self.signs[which[rows]]
            for j, index in enumerate(sequence):
                images = soft_operation(LIBRARY[index], images, signs[:, j])
            out = out.index_copy(0, rows.to(x.device), images)
        return ((out - mean) / std).view_as(x)


__all__ = ["Hypothesis", "PolicyAwareTransform", "STRAIGHT_THROUGH", "hypotheses", "soft_operation"]
