"""The policy grammar and its application: ``"3-1-7"`` applies library operation 3, then 1, then 7;
a hybrid ``"3-1-7+43-18-18"`` picks one of its policies uniformly at random for each image.

Randomness comes only from the ``torch.Generator`` passed in (None: the global torch RNG): per image
and operation one sign (the ± of shear/translate/enhance) and one uniform number (the probability
draw), drawn for every operation whether used or not, so the same generator state gives the same images.

The probability p (``respect_probability``): the reference implementation **ignores** p — every
operation of the chosen policy is always applied, so "29" (invert, p = 0.0) always inverts — and the
paper's numbers were produced that way. That is the default here (``respect_probability=False``).
``respect_probability=True`` applies each operation to each image with its probability p, as
AutoAugment intended.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence, Union

import numpy as np
import torch

from fedrepro.defenses.transforms.library import LIBRARY, NUM_OPERATIONS
from fedrepro.defenses.transforms.pil import pil_apply


PolicyLike = Union[str, Sequence[int], Sequence[Sequence[int]], "Policy"]
IDENTITY_NAMES = ("", "none", "identity")
_POLICY_RE = re.compile(r"^\d+(-\d+)*$")


def parse_policy(text: str) -> tuple[tuple[int, ...], ...]:
    """``"3-1-7+43-18-18"`` -> ``((3, 1, 7), (43, 18, 18))``; ``"none"`` (or ``""``) -> ``((),)``."""
    text = text.strip()
    if text.lower() in IDENTITY_NAMES:
        return ((),)
    parts = []
    for part in text.split("+"):
        part = part.strip()
        if part.lower() in ("none", "identity"):
            parts.append(())
            continue
        if not _POLICY_RE.match(part):
            raise ValueError(f"bad policy {text!r}: write operations as 'i-j-k' (0..{NUM_OPERATIONS - 1}), "
                             f"hybrids as 'a+b'")
        parts.append(_check(tuple(int(i) for i in part.split("-"))))
    return tuple(parts)


def format_policy(policies: Sequence[Sequence[int]]) -> str:
    """Inverse of :func:`parse_policy`: ``((3, 1, 7), (43, 18, 18))`` -> ``"3-1-7+43-18-18"``."""
    return "+".join("-".join(str(i) for i in seq) if seq else "none" for seq in policies)


def _check(seq: tuple[int, ...]) -> tuple[int, ...]:
    bad = [i for i in seq if not 0 <= i < NUM_OPERATIONS]
    if bad:
        raise ValueError(f"operation indices {bad} are outside 0..{NUM_OPERATIONS - 1}")
    return seq


def _normalise_spec(spec: PolicyLike) -> tuple[tuple[int, ...], ...]:
    if isinstance(spec, Policy):
        return spec.policies
    if isinstance(spec, str):
        return parse_policy(spec)
    items = list(spec)
    if not items:
        return ((),)
    if all(isinstance(i, (int, np.integer)) for i in items):
        return (_check(tuple(int(i) for i in items)),)
    return tuple(_check(tuple(int(i) for i in seq)) for seq in items)


class Policy:
    """A policy (``"3-1-7"``) or a hybrid of policies (``"3-1-7+43-18-18"``), applied to batches.

    ``Policy(spec)(images, generator)`` transforms a batch ``(N, C, H, W)`` (or one image
    ``(C, H, W)``), uint8 or float in [0, 1], and returns the same dtype. A hybrid picks one of its
    policies per image, uniformly, from ``generator``.
    """

    def __init__(self, spec: PolicyLike, respect_probability: bool = False, backend: str = "torch") -> None:
        if backend not in ("torch", "pil"):
            raise ValueError(f"backend must be 'torch' or 'pil', got {backend!r}")
        self.policies = _normalise_spec(spec)
        self.respect_probability = respect_probability
        self.backend = backend

    @property
    def is_identity(self) -> bool:
        return all(not seq for seq in self.policies)

    @property
    def is_hybrid(self) -> bool:
        return len(self.policies) > 1

    @property
    def operations(self) -> set[int]:
        """Every library index the policy (or any of the hybrid's policies) uses."""
        return {i for seq in self.policies for i in seq}

    def describe(self) -> str:
        return " | ".join(" → ".join(LIBRARY[i].describe() for i in seq) or "identity" for seq in self.policies)

    def __str__(self) -> str:
        return format_policy(self.policies)

    def __repr__(self) -> str:
        return f"Policy({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and other.policies == self.policies

    def __hash__(self) -> int:
        return hash(self.policies)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return apply_policy(images, self, generator, respect_probability=self.respect_probability,
                            backend=self.backend)


def apply_policy(images: torch.Tensor, policy: PolicyLike, generator: torch.Generator | None = None,
                 respect_probability: bool | None = None, backend: str | None = None) -> torch.Tensor:
    """Transform a batch with ``policy`` (string, indices or :class:`Policy`); see :class:`Policy`.

    ``generator`` (CPU) makes it deterministic; None uses the global torch RNG.
    ``respect_probability`` / ``backend`` default to the Policy's own settings (False / "torch").
    """
    if not isinstance(policy, Policy):
        policy = Policy(policy)
    respect = policy.respect_probability if respect_probability is None else respect_probability
    backend = backend or policy.backend
    x, restore = to_uint8(images)
    n = x.shape[0]
    if n == 0 or policy.is_identity:
        return restore(x.clone())
    if len(policy.policies) == 1:
        out = _apply_sequence(x, policy.policies[0], generator, respect, backend)
    else:
        choice = torch.randint(len(policy.policies), (n,), generator=generator)
        out = x.clone()
        for k, seq in enumerate(policy.policies):
            rows = (choice == k).nonzero().flatten()
            if len(rows):
                index = rows.to(x.device)
                out[index] = _apply_sequence(x[index], seq, generator, respect, backend)
    return restore(out)


def _apply_sequence(x: torch.Tensor, seq: Sequence[int], generator: torch.Generator | None, respect: bool,
                    backend: str) -> torch.Tensor:
    n = x.shape[0]
    for i in seq:
        op = LIBRARY[i]
        # Always draw both, so the random stream does not depend on the flags.
        signs = torch.where(torch.rand(n, generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)
        draw = torch.rand(n, generator=generator, dtype=torch.float64)
        out = op(x, signs) if backend == "torch" else pil_apply(op, x, signs)
        if respect:
            keep = (draw >= op.probability).to(x.device).view(-1, 1, 1, 1)
            out = torch.where(keep, x, out)
        x = out
    return x


def to_uint8(images: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """uint8 (or [0, 1] float) (N, C, H, W) or (C, H, W) -> uint8 batch, and the way back."""
    if images.ndim not in (3, 4):
        raise ValueError(f"expected images (N, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
    single = images.ndim == 3
    x = images.unsqueeze(0) if single else images
    if x.shape[1] not in (1, 3):
        raise ValueError(f"the library is defined on grey or RGB images; got {x.shape[1]} channels")
    dtype = x.dtype
    if dtype != torch.uint8:
        if not dtype.is_floating_point:
            raise ValueError(f"images must be uint8 or float in [0, 1], got {dtype}")
        x = (x.detach() * 255.0).round().clamp(0, 255).to(torch.uint8)

    def restore(out: torch.Tensor) -> torch.Tensor:
        if dtype != torch.uint8:
            out = out.to(dtype) / 255.0
        return out.squeeze(0) if single else out

    return x.contiguous(), restore



# --- random policies -----------------------------------------------------------------------------

def search_space_size(max_ops: int = 3, library: int = NUM_OPERATIONS) -> int:
    """Σ_{i=1..k} 50^i: 127,550 policies of at most 3 operations."""
    return sum(library ** i for i in range(1, max_ops + 1))


def random_policy(generator: torch.Generator | None = None, max_ops: int = 3) -> str:
    """One policy drawn uniformly from the search space of ≤ ``max_ops`` operations (repeats allowed)."""
    weights = torch.tensor([float(NUM_OPERATIONS ** i) for i in range(1, max_ops + 1)], dtype=torch.float64)
    length = int(torch.multinomial(weights, 1, generator=generator).item()) + 1
    ops = torch.randint(NUM_OPERATIONS, (length,), generator=generator).tolist()
    return format_policy([ops])


def random_policies(count: int, generator: torch.Generator | None = None, max_ops: int = 3,
                    distinct: bool = True) -> list[str]:
    """``count`` policies from :func:`random_policy`; each prefix is what a smaller count would give."""
    found: list[str] = []
    seen: set[str] = set()
    limit = search_space_size(max_ops)
    while len(found) < count:
        policy = random_policy(generator, max_ops)
        if distinct and policy in seen:
            if len(seen) >= limit:
                raise ValueError(f"only {limit} distinct policies of ≤ {max_ops} operations exist")
            continue
        seen.add(policy)
        found.append(policy)
    return found


def hybrid(policies: Iterable[PolicyLike]) -> str:
    """``["3-1-7", "43-18-18"]`` -> ``"3-1-7+43-18-18"``."""
    parts: list[tuple[int, ...]] = []
    for p in policies:
        parts.extend(_normalise_spec(p))
    return format_policy(parts)
