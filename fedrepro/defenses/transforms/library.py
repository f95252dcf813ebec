"""The ATS operation library: the 50 AutoAugment sub-policy operations as the paper's reference
implementation (ATSPrivacy: ``policy.py`` + ``autoaugment.py``) indexes them, see ``LIBRARY`` and
``shared/reference/ats_transforms.md``.

Facts of the reference, kept: rotate turns by +magnitude degrees (no random sign) with grey (128)
fill, shear/translate fill with black; enhance factors are 1 ± magnitude with a random sign;
solarize's threshold is the float ``linspace(256, 0, 10)[m]`` (pixels ``< t`` are kept). Grayscale
images (1 channel) behave as the reference's grey-RGB round trip: ``color`` is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrepro.defenses.transforms.operations import (autocontrast, enhance_brightness, enhance_color,
                                                     enhance_contrast, enhance_sharpness, equalize, posterize,
                                                     rotate, shear, solarize, translate)

#: The magnitude ranges over m = 0..9, exactly as the reference builds them with numpy.
RANGES: dict[str, np.ndarray] = {
    "shearX": np.linspace(0, 0.3, 10),
    "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10),
    "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10),
    "color": np.linspace(0.0, 0.5, 10),
    "posterize": np.round(np.linspace(8, 4, 10), 0).astype(int),
    "solarize": np.linspace(256, 0, 10),
    "contrast": np.linspace(0.0, 0.5, 10),
    "sharpness": np.linspace(0.0, 0.5, 10),
    "brightness": np.linspace(0.0, 0.5, 10),
    "autocontrast": np.zeros(10),
    "equalize": np.zeros(10),
    "invert": np.zeros(10),
}
#: Operations whose magnitude gets a random sign per image.
SIGNED = frozenset({"shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"})
#: Operations without a magnitude.
UNPARAMETERISED = frozenset({"autocontrast", "equalize", "invert"})

# (operation, probability, magnitude index) for indices 0..49, as in the reference's policy.py.
_SPECS: tuple[tuple[str, float, int], ...] = (
    ("invert", 0.1, 7), ("contrast", 0.2, 6), ("rotate", 0.7, 2), ("translateX", 0.3, 9), ("sharpness", 0.8, 1),
    ("sharpness", 0.9, 3), ("shearY", 0.5, 2), ("translateY", 0.7, 2), ("autocontrast", 0.5, 5), ("equalize", 0.9, 2),
    ("shearY", 0.2, 5), ("posterize", 0.3, 5), ("color", 0.4, 3), ("brightness", 0.6, 5), ("sharpness", 0.3, 9),
    ("brightness", 0.7, 9), ("equalize", 0.6, 5), ("equalize", 0.5, 1), ("contrast", 0.6, 7), ("sharpness", 0.6, 5),
    ("color", 0.7, 5), ("translateX", 0.5, 5), ("equalize", 0.3, 7), ("autocontrast", 0.4, 8), ("translateY", 0.4, 3),
    ("sharpness", 0.2, 6), ("brightness", 0.9, 6), ("color", 0.2, 8), ("solarize", 0.5, 0), ("invert", 0.0, 0),
    ("equalize", 0.2, 0), ("autocontrast", 0.6, 0), ("equalize", 0.2, 8), ("equalize", 0.6, 4), ("color", 0.9, 5),
    ("equalize", 0.6, 5), ("autocontrast", 0.8, 4), ("solarize", 0.2, 4), ("brightness", 0.1, 3), ("color", 0.7, 0),
    ("solarize", 0.4, 1), ("autocontrast", 0.9, 0), ("translateY", 0.9, 3), ("translateY", 0.7, 3), ("autocontrast", 0.9, 1),
    ("solarize", 0.8, 1), ("equalize", 0.8, 5), ("invert", 0.1, 0), ("translateY", 0.7, 3), ("autocontrast", 0.9, 1),
)


@dataclass(frozen=True)
class Operation:
    """One entry of the library: ``LIBRARY[3]`` is translateX, p = 0.3, magnitude index 9."""

    index: int
    name: str
    probability: float
    magnitude_index: int

    @property
    def magnitude(self) -> float | None:
        """The value the reference uses (before its random sign), None for autocontrast/equalize/invert."""
        if self.name in UNPARAMETERISED:
            return None
        value = RANGES[self.name][self.magnitude_index]
        return int(value) if self.name == "posterize" else float(value)

    @property
    def signed(self) -> bool:
        return self.name in SIGNED

    def describe(self) -> str:
        if self.magnitude is None:
            what = self.name
        elif self.name == "posterize":
            what = f"posterize to {self.magnitude} bits"
        elif self.name == "solarize":
            what = f"solarize pixels ≥ {self.magnitude:.2f}"
        elif self.name == "rotate":
            what = f"rotate {self.magnitude:.2f}°"
        elif self.name.startswith("translate"):
            what = f"{self.name} ±{self.magnitude:.3f} of the size"
        elif self.name.startswith("shear"):
            what = f"{self.name} ±{self.magnitude:.3f}"
        else:
            what = f"{self.name} factor 1 ± {self.magnitude:.3f}"
        return f"#{self.index} {what} (m={self.magnitude_index}, p={self.probability})"

    def __call__(self, images: torch.Tensor, signs: torch.Tensor | None = None) -> torch.Tensor:
        """Apply to every image of a uint8 batch; ``signs`` (N,) of ±1 for the signed operations."""
        return apply_operation(self, images, signs)


LIBRARY: tuple[Operation, ...] = tuple(Operation(i, *spec) for i, spec in enumerate(_SPECS))
NUM_OPERATIONS = len(LIBRARY)


def apply_operation(op: Operation, x: torch.Tensor, signs: torch.Tensor | None) -> torch.Tensor:
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError("operations take uint8 batches (N, C, H, W); use apply_policy for other inputs")
    n = x.shape[0]
    if signs is None:
        signs = torch.ones(n, dtype=torch.float64)
    signs = signs.to(torch.float64).cpu()
    name, value = op.name, op.magnitude
    if name == "invert":
        return 255 - x
    if name == "autocontrast":
        return autocontrast(x)
    if name == "equalize":
        return equalize(x)
    if name == "posterize":
        return posterize(x, int(value))
    if name == "solarize":
        return solarize(x, float(value))
    if name == "rotate":
        return rotate(x, float(value))
    factors = 1.0 + float(value) * signs  # the reference: 1 + magnitude * random.choice([-1, 1])
    if name == "color":
        return enhance_color(x, factors)
    if name == "contrast":
        return enhance_contrast(x, factors)
    if name == "brightness":
        return enhance_brightness(x, factors)
    if name == "sharpness":
        return enhance_sharpness(x, factors)
    if name in ("translateX", "translateY"):
        size = x.shape[-1] if name == "translateX" else x.shape[-2]
        return translate(x, float(value) * size * signs, axis="x" if name == "translateX" else "y")
    if name in ("shearX", "shearY"):
        return shear(x, float(value) * signs, axis="x" if name == "shearX" else "y")
    raise KeyError(name)


