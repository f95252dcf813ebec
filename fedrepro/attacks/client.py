"""The client side: what a victim computes from its private batch and sends to the server.

Kept apart from the attacker on purpose: these functions see the private images, the attack
functions never do. One call computes the shared gradients of many victims at once (per-sample
gradients with ``torch.func.vmap``, then averaged per victim), which is both faster than a loop and
exactly the gradient each victim would compute alone. The loss is ``fedrepro.fl.model_loss``
(cross-entropy + the model's regularisation terms), the one FedAvg trains with and the attacker
assumes: a 0.5·CE client against a CE attacker is a classic reproducibility trap.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedrepro.attacks.local import unrolled_update
from fedrepro.attacks.threat import LocalTraining
from fedrepro.fl import model_loss


def private_copy(model: nn.Module) -> nn.Module:
    """``deepcopy`` that drops tensors a module cached from an earlier forward pass (e.g. a bottleneck's
    last KL term), which may be non-leaf or ``vmap`` tensors that cannot be copied."""
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = None
    return copy.deepcopy(model, memo)


def functional_model(model: nn.Module) -> nn.Module:
    """A private copy for ``torch.func`` calls: the caller's model keeps no state from them (a
    bottleneck's cached KL term), and training-mode BatchNorms skip running-stat updates, which
    ``vmap`` cannot do in place (they normalise with batch statistics either way, so the gradient
    is unchanged)."""
    clone = private_copy(model)
    for module in clone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            module.running_mean = module.running_var = module.num_batches_tracked = None
            module.track_running_stats = False
    return clone


class GradientDefense(Protocol):
    """A gradient defense (see :mod:`fedrepro.defenses`): per-sample ones see each sample's gradient."""

    per_sample: bool

    def __call__(self, gradients: dict[str, torch.Tensor], generator: torch.Generator | None = None
                 ) -> dict[str, torch.Tensor]: ...


def per_sample_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient of the training loss of each single image: name -> ``(N, *parameter.shape)``."""
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    model = functional_model(model)
    buffers = dict(model.named_buffers())

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model_loss(model, functional_call(model, (p, buffers), (x.unsqueeze(0),)), y.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(params, images, labels)


def client_update(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, images_per_victim: int = 1,
                  defense: GradientDefense | None = None, generator: torch.Generator | None = None,
                  local: LocalTraining | None = None) -> dict[str, torch.Tensor]:
    """What ``N / images_per_victim`` victims send, each after training on its own images.

    ``images`` are normalised model inputs ``(N, C, H, W)`` with victims' batches consecutive. Returns
    name -> ``(V, *parameter.shape)``. Without ``local``: the mean-loss gradient of each victim's
    batch (one step; the server's view is ``kind="gradient"``), after ``defense`` (per-sample defenses
    such as DP-SGD clip each sample before averaging). With ``local``: each victim's model update
    ``w0 - wK`` after ``local.steps`` SGD steps (the view is ``kind="update"`` with the same
    ``local``), after ``defense`` applied to the update.
    """
    count = images.shape[0]
    if count % images_per_victim:
        raise ValueError(f"{count} images do not split into victims of {images_per_victim}")
    victims = count // images_per_victim
    if local is not None:
        if defense is not None and defense.per_sample:
            raise ValueError("per-sample defenses (DP-SGD) act on each step's gradients; only defenses of the "
                             "final update are supported with local training")
        updates = _local_updates(model, images, labels, victims, local)
        return updates if defense is None else defense(updates, generator)
    if defense is None or not defense.per_sample:
        grads = _batch_gradients(model, images, labels, victims)
        return grads if defense is None else defense(grads, generator)
    per_sample = per_sample_gradients(model, images, labels)
    grouped = {k: g.reshape(victims, images_per_victim, *g.shape[1:]) for k, g in per_sample.items()}
    return defense(grouped, generator)


def _batch_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     victims: int) -> dict[str, torch.Tensor]:
    """Each victim's mean-loss gradient on its whole batch (exact even when the loss is not per-sample)."""
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    model = functional_model(model)
    buffers = dict(model.named_buffers())

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model_loss(model, functional_call(model, (p, buffers), (x,)), y)

    x = images.reshape(victims, -1, *images.shape[1:])
    y = labels.reshape(victims, -1)
    return vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(params, x, y)


@dataclass(frozen=True)
class DefendedStep:
    """A ``StandardTrainer(gradient_transform=...)``: every local step uses the gradient the client
    would share under ``defense`` instead of its raw batch gradient.

    A batch-level defense (noise, pruning) acts on the batch's mean-loss gradient left by
    ``backward``, per layer, with the batch as one "victim"; a per-sample one (DP-SGD) recomputes the
    per-sample gradients as :func:`client_update` does, clips each and averages. Randomness comes from
    the global RNG, which FedAvg reseeds per (round, client).
    """

    defense: GradientDefense

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        named = [(k, p) for k, p in model.named_parameters() if p.grad is not None]
        if getattr(self.defense, "per_sample", False):
            defended = client_update(model, x, y, images_per_victim=len(y), defense=self.defense)
        else:
            defended = self.defense({k: p.grad[None] for k, p in named})
        for k, p in named:
            p.grad.copy_(defended[k][0])


def _local_updates(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, victims: int,
                   local: LocalTraining) -> dict[str, torch.Tensor]:
    """Each victim's ``w0 - wK`` after its local SGD steps (every trainable parameter is trained)."""
    model = functional_model(model)
    trainable = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def update(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return unrolled_update(model, trainable, (frozen, buffers), x, y, local)[0]

    x = images.reshape(victims, -1, *images.shape[1:])
    y = labels.reshape(victims, -1)
    return vmap(update, randomness="different")(x, y)
