"""Defenses against gradient leakage.

Every defense of the five papers by one spec string (:mod:`fedrepro.defenses.spec`:
``Defense.parse("gaussian:var0.01")``, ``"dp:C20,sigma0.1"``, ``"cvb:k3"``), built from these registries.
Gradient defenses, by name: ``DEFENSES.get("prune")(ratio=0.9)``, applied by the client with
``fedrepro.attacks.client_update(..., defense=...)`` (:mod:`fedrepro.defenses.gradient`).
Model defenses (PRECODE, CVB) are in :mod:`fedrepro.defenses.variational`, data transformations
(paper 05) in :mod:`fedrepro.defenses.transforms`.
"""
from __future__ import annotations

from fedrepro.defenses.gradient import (DEFENSES, DPSGD, GaussianNoise, Int8Quantization, LaplacianNoise, Pruning,
                                        clip_per_sample, per_sample_norms)
from fedrepro.defenses.spec import Defense
from fedrepro.defenses.transforms import LIBRARY, Policy, PolicyBatchTransform, apply_policy, policy_trainer
from fedrepro.defenses.variational import CVB, MODEL_DEFENSES, PRECODE, add_cvb, add_precode, decoder_name

__all__ = ["CVB", "DEFENSES", "DPSGD", "Defense", "GaussianNoise", "Int8Quantization", "LIBRARY", "LaplacianNoise",
           "MODEL_DEFENSES", "PRECODE", "Policy", "PolicyBatchTransform", "Pruning", "add_cvb", "add_precode",
           "apply_policy", "clip_per_sample", "decoder_name", "per_sample_norms", "policy_trainer"]
