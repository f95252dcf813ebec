"""The batched operations of the ATS library, replaying Pillow's integer and float arithmetic.

Each takes a ``uint8`` batch ``(N, C, H, W)`` and returns one, pixel for pixel what the reference's
per-image PIL call gives (:mod:`fedrepro.defenses.transforms.pil` runs those calls; the tests compare):
its blend truncation, its 3×3 smoothing kernel in float32, its bicubic with a = −1, its 16.16
fixed-point nearest rotation, its equalize/autocontrast look-up tables.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

ROTATE_FILL = 128  # the reference rotates through RGBA and composites onto (128, 128, 128)
AFFINE_FILL = 0    # shear/translate: the reference's fillcolor=(0, 0, 0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L: (299 R + 587 G + 114 B) / 1000 in 16-bit fixed point, rounded. (N, 1, H, W) int32."""
    if x.shape[1] == 1:
        return x.to(torch.int32)
    r, g, b = (x[:, c:c + 1].to(torch.int32) for c in range(3))
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def blend(degenerate: torch.Tensor, image: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend(degenerate, image, f)``: float32 ``d + f·(i − d)``, clipped, truncated."""
    alpha = factors.to(torch.float32).to(image.device).view(-1, 1, 1, 1)
    d = degenerate.to(torch.float32)
    diff = image.to(torch.float32) - d
    out = d + diff * alpha  # two roundings, as Pillow's C (no fused multiply-add)
    return out.clamp(0, 255).to(torch.uint8)  # .to(uint8) truncates toward zero


def enhance_brightness(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return blend(torch.zeros_like(x), x, factors)


def enhance_color(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # grey images: the degenerate (grey) image is the image itself
        return x.clone()
    return blend(grayscale(x).expand_as(x), x, factors)


def enhance_contrast(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    grey = grayscale(x)
    count = grey[0].numel()
    total = grey.flatten(1).to(torch.int64).sum(1).to(torch.float64)
    mean = total / torch.full_like(total, float(count))  # tensor / tensor: correctly rounded
    level = torch.floor(mean + 0.5).to(torch.int32)  # int(mean + 0.5) of ImageStat's mean
    return blend(level.view(-1, 1, 1, 1).expand_as(x), x, factors)


# Pillow divides the float32 kernel by the float32 divisor (numpy's float32 division is correctly rounded,
# torch's division by a scalar multiplies by the reciprocal, which is not).
_SMOOTH = torch.from_numpy(np.array([1, 1, 1, 1, 5, 1, 1, 1, 1], dtype=np.float32) / np.float32(13))


def smooth(x: torch.Tensor) -> torch.Tensor:
    """Pillow's ``ImageFilter.SMOOTH``: 3×3 kernel [1 1 1; 1 5 1; 1 1 1]/13 in float32 in Pillow's
    summation order, +0.5 then truncation; the one-pixel border is copied unchanged."""
    h, w = x.shape[-2:]
    if h < 3 or w < 3:
        return x.clone()
    f = x.to(torch.float32)
    k = _SMOOTH

    def row(r: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        left, mid, right = r[..., :-2], r[..., 1:-1], r[..., 2:]
        return (left * kernel[0] + mid * kernel[1]) + right * kernel[2]

    below, centre, above = f[..., 2:, :], f[..., 1:-1, :], f[..., :-2, :]
    ss = torch.full_like(centre[..., 1:-1], 0.5)
    ss = ss + row(below, k[0:3])
    ss = ss + row(centre, k[3:6])
    ss = ss + row(above, k[6:9])
    out = x.clone()
    out[..., 1:-1, 1:-1] = ss.clamp(0, 255).to(torch.uint8)
    return out


def enhance_sharpness(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return blend(smooth(x), x, factors)


def posterize(x: torch.Tensor, bits: int) -> torch.Tensor:
    mask = (~(2 ** (8 - bits) - 1)) & 0xFF
    return x & mask


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixels below ``threshold`` (a float, as in the reference) are kept, the others inverted."""
    return torch.where(x.to(torch.float64) < threshold, x, 255 - x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel: the darkest pixel to 0, the lightest to 255 (Pillow, cutoff 0)."""
    flat = x.flatten(2)
    lo = flat.min(2).values.to(torch.float64)
    hi = flat.max(2).values.to(torch.float64)
    span = (hi - lo).clamp(min=1)
    scale = (torch.full_like(span, 255.0) / span)[..., None, None]  # not 255.0 / span (reciprocal-multiply)
    offset = (-lo[..., None, None]) * scale
    mapped = (x.to(torch.float64) * scale + offset).trunc().clamp(0, 255).to(torch.uint8)
    same = (hi <= lo)[..., None, None]
    return torch.where(same, x, mapped)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Pillow's histogram equalisation per image and channel (integer look-up table, clipped at 255)."""
    n, c = x.shape[:2]
    flat = x.reshape(n * c, -1).to(torch.int64)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    present = (hist > 0).sum(1)
    last = hist.gather(1, flat.max(1, keepdim=True).values).squeeze(1)  # count of the largest present value
    step = (flat.shape[1] - last) // 255
    before = hist.cumsum(1) - hist  # pixels strictly below each value
    lut = ((step // 2)[:, None] + before) // step.clamp(min=1)[:, None]
    lut = lut.clamp(0, 255)
    mapped = lut.gather(1, flat)
    identity = ((present <= 1) | (step == 0))[:, None]
    out = torch.where(identity, flat, mapped)
    return out.to(torch.uint8).view_as(x)


def translate(x: torch.Tensor, offsets: torch.Tensor, axis: str) -> torch.Tensor:
    """Pillow's nearest 'scale-affine' path for ``(1, 0, c, 0, 1, 0)`` (x) or ``(1, 0, 0, 0, 1, c)`` (y),
    one offset ``c`` (pixels, float) per image; uncovered pixels get ``AFFINE_FILL``."""
    h, w = x.shape[-2:]
    size = w if axis == "x" else h
    index = torch.stack([_scale_affine_table(float(c), size) for c in offsets.tolist()]).to(x.device)  # (N, size)
    valid = index >= 0
    if axis == "x":
        gathered = x.gather(3, index.clamp(min=0)[:, None, None, :].expand_as(x))
        return torch.where(valid[:, None, None, :], gathered, torch.full_like(x, AFFINE_FILL))
    gathered = x.gather(2, index.clamp(min=0)[:, None, :, None].expand_as(x))
    return torch.where(valid[:, None, :, None], gathered, torch.full_like(x, AFFINE_FILL))


@lru_cache(maxsize=256)
def _scale_affine_table(offset: float, size: int) -> torch.Tensor:
    """Source index of each output position, −1 where outside: ``xo = c + 0.5``, ``xo += 1`` (doubles)."""
    table, xo = [], offset + 1.0 * 0.5
    for _ in range(size):
        xin = -1 if xo < 0.0 else int(xo)
        table.append(xin if 0 <= xin < size else -1)
        xo += 1.0
    return torch.tensor(table, dtype=torch.int64)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Pillow's ``rotate(degrees)`` (counter-clockwise, nearest, 16.16 fixed point) with grey fill."""
    h, w = x.shape[-2:]
    src = _rotation_source(float(degrees), h, w).to(x.device)  # (H*W,) flat source index or −1
    flat = x.flatten(2)
    gathered = flat[..., src.clamp(min=0)]
    out = torch.where(src >= 0, gathered, torch.full_like(gathered, ROTATE_FILL))
    return out.view_as(x)


@lru_cache(maxsize=64)
def _rotation_source(degrees: float, h: int, w: int) -> torch.Tensor:
    angle = degrees % 360.0
    if angle == 0:
        return torch.arange(h * w)
    centre = (w / 2, h / 2)
    rad = -math.radians(angle)
    m = [round(math.cos(rad), 15), round(math.sin(rad), 15), 0.0, round(-math.sin(rad), 15), round(math.cos(rad), 15), 0.0]
    a, b, c, d, e, f = m
    m[2], m[5] = a * -centre[0] + b * -centre[1] + c, d * -centre[0] + e * -centre[1] + f
    m[2] += centre[0]
    m[5] += centre[1]

    def fix(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)

    a0, a1, a3, a4 = fix(m[0]), fix(m[1]), fix(m[3]), fix(m[4])
    a2 = fix(m[2] + m[0] * 0.5 + m[1] * 0.5)
    a5 = fix(m[5] + m[3] * 0.5 + m[4] * 0.5)
    ys = torch.arange(h, dtype=torch.int64)[:, None]
    xs = torch.arange(w, dtype=torch.int64)[None, :]
    xin = torch.div(a2 + ys * a1 + xs * a0, 65536, rounding_mode="floor")  # arithmetic >> 16
    yin = torch.div(a5 + ys * a4 + xs * a3, 65536, rounding_mode="floor")
    valid = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    return torch.where(valid, yin * w + xin, torch.full_like(xin, -1)).flatten()


def shear(x: torch.Tensor, amounts: torch.Tensor, axis: str) -> torch.Tensor:
    """Pillow's generic affine transform with its bicubic filter (a = −1, edge-clamped taps) for
    ``(1, s, 0, 0, 1, 0)`` (x) or ``(1, 0, 0, s, 1, 0)`` (y); outside pixels get ``AFFINE_FILL``.

    Along the other axis the source coordinate is exactly a pixel centre, so Pillow's bicubic weight
    there is exactly (0, 1, 0, 0): only the four taps along the shear axis are computed.
    """
    n, c, h, w = x.shape
    s = amounts.to(torch.float64).cpu().view(-1, 1, 1)
    ys = torch.arange(h, dtype=torch.float64).view(1, -1, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float64).view(1, 1, -1) + 0.5
    # Pillow: xout = a0*xin + a1*yin + a2 (left to right, doubles); the other coordinate is a centre.
    if axis == "x":
        coord, other, size = (1.0 * xs + s * ys) + 0.0, ys.expand(1, h, w), w
    else:
        coord, other, size = (s * xs + 1.0 * ys) + 0.0, xs.expand(1, h, w), h
    coord = coord.expand(n, h, w)
    inside = (coord >= 0) & (coord < size) & (other >= 0)
    shifted = coord - 0.5
    base = torch.floor(shifted)
    d = (shifted - base).to(x.device)[:, None]
    base = base.to(torch.int64) - 1
    dim = 3 if axis == "x" else 2
    img = x.to(torch.float64)
    taps = [img.gather(dim, (base + i).clamp(0, size - 1).to(x.device)[:, None].expand(n, c, h, w)) for i in range(4)]
    v1, v2, v3, v4 = taps
    p1 = v2
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    v = p1 + d * (p2 + d * (p3 + d * p4))
    out = v.clamp(0, 255).trunc().to(torch.uint8)  # <= 0 -> 0, >= 255 -> 255, else truncation
    return torch.where(inside[:, None].to(x.device), out, torch.full_like(out, AFFINE_FILL))

