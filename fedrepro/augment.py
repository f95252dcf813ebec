"""The one random crop + horizontal flip: torchvision's ``RandomCrop(size, padding=4)`` followed by
``RandomHorizontalFlip()``, batched and drawn from a seeded generator.

Used by paper 03's trained networks (Geiping et al. train with it) and by paper 05's reference
``--mode=aug`` (crop + flip before the policy). Padding is black in pixel space: 0 for uint8 or
[0, 1] images, ``−mean/std`` per channel for normalised ones (:class:`CropFlip`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from fedrepro.runtime import generator as seeded_generator


DRAW_ORDERS = ("split", "pairwise")
"""How the offsets are drawn: ``split`` — N row offsets, then N column offsets (paper 03's training);
``pairwise`` — an (N, 2) block of (row, column) pairs (paper 05's semi-trained model). Both then draw N
flip coins. The two orders give different crops from one seed; each is kept because published numbers
were measured with it."""


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4,
                     fill: torch.Tensor | Sequence[float] | None = None, draws: str = "split") -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) padded by ``padding`` with ``fill`` (per channel; default 0),
    cropped back to H×W at a uniformly drawn offset and flipped left-right with probability ½.

    ``draws`` fixes the order of the random draws (:data:`DRAW_ORDERS`), so seeded runs repeat.
    """
    n, c, h, w = x.shape
    p = padding
    if draws == "split":
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    elif draws == "pairwise":
        dy, dx = torch.randint(0, 2 * p + 1, (n, 2), generator=generator).unbind(1)
    else:
        raise ValueError(f"unknown draw order {draws!r}; choose one of {', '.join(DRAW_ORDERS)}")
    flip = torch.rand(n, generator=generator) < 0.5
    if fill is None:
        padded = x.new_zeros(n, c, h + 2 * p, w + 2 * p)
    else:
        padded = torch.as_tensor(fill, dtype=x.dtype).to(x.device).view(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p)
        padded = padded.clone()
    padded[:, :, p:p + h, p:p + w] = x
    rows = (dy.view(n, 1) + torch.arange(h)).to(x.device)
    cols = (dx.view(n, 1) + torch.arange(w)).to(x.device)
    cols = torch.where(flip.to(x.device).view(n, 1), cols.flip(1), cols)
    images = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[images, channels, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


@dataclass
class CropFlip:
    """:func:`random_crop_flip` as a ``batch_transform`` on normalised batches (black padding), drawing
    from its own generator seeded by ``(seed, "crop-flip")``."""

    mean: Sequence[float]
    std: Sequence[float]
    padding: int = 4
    seed: int = 0
    _generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._generator = seeded_generator(self.seed, "crop-flip")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        black = -torch.tensor(self.mean, dtype=x.dtype) / torch.tensor(self.std, dtype=x.dtype)
        return random_crop_flip(x, self._generator, self.padding, fill=black), y
