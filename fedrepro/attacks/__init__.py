"""Gradient inversion: the server side of federated learning (``ServerView`` in, reconstructions out).

Adversarial examples (FGSM, PGD, FAB) are a different threat model and live in :mod:`fedrepro.robustness`.

Typical use::

    update = client_update(model, images, labels)                 # client side, (V, ...) per name
    view = ServerView(model, update, num_images=1, image_shape=(3, 32, 32),
                      mean=data.mean, std=data.std, labels=labels[:, None])
    result = run_attack(view, "ig", seed=0, max_iterations=2_000)  # or an AttackConfig
    reconstructions = result.denormalized()                        # (V, C, H, W) in [0, 1]

A FedAvg client's model update after several local SGD steps instead of one gradient::

    local = LocalTraining(steps=5, lr=0.1, batch_size=None)         # public protocol facts
    update = client_update(model, images, labels, images_per_victim=4, local=local)  # w0 - wK
    view = ServerView(model, update, 4, (3, 32, 32), data.mean, data.std, labels.view(-1, 4),
                      kind="update", local=local)
    result = run_attack(view, "ig_multistep", max_iterations=2_000)
"""
from __future__ import annotations

from fedrepro.attacks.client import DefendedStep, client_update, per_sample_gradients
from fedrepro.attacks.ignore import layers_before, parameters_from
from fedrepro.attacks.inversion import AttackConfig, AttackResult, invert
from fedrepro.attacks.labels import idlg_labels
from fedrepro.attacks.presets import ATTACKS
from fedrepro.attacks.threat import LocalTraining, ServerView, ThreatModelError


def run_attack(view: ServerView, attack: str | AttackConfig, seed: int = 0, chunk_size: int | None = None,
               progress: bool = True, **overrides) -> AttackResult:
    """Attack every victim in ``view`` with a preset name (see ``ATTACKS.names()``) or a config."""
    config = ATTACKS.get(attack)(**overrides) if isinstance(attack, str) else attack.replace(**overrides)
    return invert(view, config, seed=seed, chunk_size=chunk_size, progress=progress)


__all__ = [
    "ATTACKS", "AttackConfig", "AttackResult", "DefendedStep", "LocalTraining", "ServerView",
    "ThreatModelError", "client_update", "idlg_labels", "invert", "layers_before", "parameters_from",
    "per_sample_gradients", "run_attack",
]
