"""The one crop + flip: both draw orders crop what their draws say, pad with the fill, and refuse others."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedrepro.augment import CropFlip, random_crop_flip


@pytest.mark.parametrize("draws", ["split", "pairwise"])
def test_each_image_is_the_drawn_crop_flipped_by_its_coin(draws):
    x = torch.arange(3 * 2 * 5 * 5, dtype=torch.float32).view(3, 2, 5, 5)
    g = torch.Generator().manual_seed(4)
    if draws == "split":
        dy, dx = torch.randint(0, 3, (3,), generator=g), torch.randint(0, 3, (3,), generator=g)
    else:
        dy, dx = torch.randint(0, 3, (3, 2), generator=g).unbind(1)
    flips = torch.rand(3, generator=g) < 0.5
    out = random_crop_flip(x, torch.Generator().manual_seed(4), padding=1, fill=[-1.0, -2.0], draws=draws)
    padded = F.pad(x, (1, 1, 1, 1))
    padded[:, 0][padded[:, 0] == 0] = -1.0  # the fill, per channel (x has one genuine 0 at [0, 0, 0, 0])
    padded[:, 1, :, :1], padded[:, 1, :, -1:], padded[:, 1, :1], padded[:, 1, -1:] = -2.0, -2.0, -2.0, -2.0
    padded[0, 0, 1, 1] = 0.0
    for i in range(3):
        crop = padded[i, :, int(dy[i]):int(dy[i]) + 5, int(dx[i]):int(dx[i]) + 5]
        assert torch.equal(out[i], crop.flip(-1) if flips[i] else crop)


def test_crop_flip_transform_pads_normalised_black_and_keeps_labels():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    transform = CropFlip(mean, std, padding=8, seed=0)
    x, y = torch.zeros(64, 3, 8, 8) + 5.0, torch.arange(64)
    out, labels = transform(x, y)
    black = (-torch.tensor(mean) / torch.tensor(std)).view(3, 1, 1)
    assert torch.equal(labels, y)
    padded_pixels = out != 5.0
    assert padded_pixels.any()  # a padding of 8 on 8x8 images always shows padding
    assert torch.equal(out[padded_pixels], black.expand_as(out)[padded_pixels])


def test_unknown_draw_order_is_refused():
    with pytest.raises(ValueError, match="split, pairwise"):
        random_crop_flip(torch.zeros(1, 1, 4, 4), draws="rowwise")
