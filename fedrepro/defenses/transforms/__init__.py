"""Paper 05's defense: transform each client's images with a searched policy before training.

- :mod:`~fedrepro.defenses.transforms.library`: the 50 operations (``LIBRARY``) as the reference indexes them;
- :mod:`~fedrepro.defenses.transforms.operations`: the batched operations, Pillow's arithmetic replayed;
- :mod:`~fedrepro.defenses.transforms.pil`: the reference's per-image PIL calls (``backend="pil"``, for checks);
- :mod:`~fedrepro.defenses.transforms.policy`: the policy grammar (``"3-1-7"``, hybrids ``"a+b"``),
  applying a policy to a batch, random policies;
- :mod:`~fedrepro.defenses.transforms.training`: the FedAvg plug-in (:class:`PolicyBatchTransform`,
  :func:`policy_trainer`).
"""
from __future__ import annotations

from fedrepro.defenses.transforms.library import (LIBRARY, NUM_OPERATIONS, RANGES, SIGNED, UNPARAMETERISED,
                                                  Operation, apply_operation)
from fedrepro.defenses.transforms.operations import (AFFINE_FILL, ROTATE_FILL, autocontrast, blend,
                                                     enhance_brightness, enhance_color, enhance_contrast,
                                                     enhance_sharpness, equalize, grayscale, posterize, rotate,
                                                     shear, smooth, solarize, translate)
from fedrepro.defenses.transforms.pil import pil_apply
from fedrepro.defenses.transforms.policy import (IDENTITY_NAMES, Policy, PolicyLike, apply_policy, format_policy,
                                                 hybrid, parse_policy, random_policies, random_policy,
                                                 search_space_size, to_uint8)
from fedrepro.defenses.transforms.training import PolicyBatchTransform, policy_trainer, transform_images

__all__ = [
    "AFFINE_FILL", "IDENTITY_NAMES", "LIBRARY", "NUM_OPERATIONS", "Operation", "Policy", "PolicyBatchTransform",
    "PolicyLike", "RANGES", "ROTATE_FILL", "SIGNED", "UNPARAMETERISED", "apply_operation", "apply_policy",
    "autocontrast", "blend", "enhance_brightness", "enhance_color", "enhance_contrast", "enhance_sharpness",
    "equalize", "format_policy", "grayscale", "hybrid", "parse_policy", "pil_apply", "policy_trainer", "posterize",
    "random_policies", "random_policy", "rotate", "search_space_size", "shear", "smooth", "solarize",
    "to_uint8", "transform_images", "translate",
]
