"""The reference's per-image PIL path (``backend="pil"``): slow, kept to check that the batched
operations (:mod:`fedrepro.defenses.transforms.operations`) agree with Pillow exactly."""
from __future__ import annotations

import numpy as np
import torch

from fedrepro.defenses.transforms.library import Operation
from fedrepro.defenses.transforms.operations import AFFINE_FILL, ROTATE_FILL


def pil_apply(op: Operation, x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """The reference implementation's PIL call for each image (slow; for checking the batched path)."""
    from PIL import Image, ImageEnhance, ImageOps

    device = x.device
    arrays = x.permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for array, sign in zip(arrays, signs.tolist()):
        img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        v = op.magnitude
        fill = (AFFINE_FILL,) * len(img.getbands())
        name = op.name
        if name == "shearX":
            res = img.transform(img.size, Image.Transform.AFFINE, (1, v * sign, 0, 0, 1, 0), Image.Resampling.BICUBIC, fillcolor=fill)
        elif name == "shearY":
            res = img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, v * sign, 1, 0), Image.Resampling.BICUBIC, fillcolor=fill)
        elif name == "translateX":
            res = img.transform(img.size, Image.Transform.AFFINE, (1, 0, v * img.size[0] * sign, 0, 1, 0), fillcolor=fill)
        elif name == "translateY":
            res = img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, v * img.size[1] * sign), fillcolor=fill)
        elif name == "rotate":
            rot = img.convert("RGBA").rotate(v)
            res = Image.composite(rot, Image.new("RGBA", rot.size, (ROTATE_FILL,) * 4), rot).convert(img.mode)
        elif name in ("color", "contrast", "sharpness", "brightness"):
            enhancer = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
                        "sharpness": ImageEnhance.Sharpness, "brightness": ImageEnhance.Brightness}[name]
            res = enhancer(img).enhance(1 + v * sign)
        elif name == "posterize":
            res = ImageOps.posterize(img, int(v))
        elif name == "solarize":
            res = ImageOps.solarize(img, v)
        elif name == "autocontrast":
            res = ImageOps.autocontrast(img)
        elif name == "equalize":
            res = ImageOps.equalize(img)
        elif name == "invert":
            res = ImageOps.invert(img)
        else:
            raise KeyError(name)
        arr = np.asarray(res)
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous().to(device)
