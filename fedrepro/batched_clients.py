"""Every client of a FedAvg round trained at once: one ``vmap`` over the clients' stacked weights.

Sequential local training runs ``clients × steps`` small optimiser steps; on a GPU each is a handful of
kernel launches on a few thousand images, so a round of paper 04's protocol (10 clients, one epoch of batch
64) is bound by launches, not arithmetic. Here client ``c``'s weights are row ``c`` of stacked tensors and
its batch row ``c`` of a stacked batch; one ``vmap(grad)`` gives every client's gradient of its own mean
loss and one element-wise optimiser step updates them all, so a round is ``steps`` large steps instead.

The arithmetic is each client's own: the same batches (:func:`fedrepro.fl.batch_order`), loss
(:func:`fedrepro.fl.model_loss`) and optimiser update as :class:`fedrepro.fl.StandardTrainer` with torch's
Adam or SGD (momentum, weight decay) — equal up to float rounding (tested), regularisation terms included
(:func:`fedrepro.fl.model_loss`: a module's term of its last forward pass, computed inside the vmapped
call). Clients with different numbers of images are batched in groups of equal size. What it does not
cover, and refuses with a message: trainers other than a plain ``StandardTrainer`` (DP-SGD,
transformations, gradient defenses) and models whose training updates buffers (BatchNorm's running
statistics). A model that samples (dropout, PRECODE's and the CVB's bottlenecks) trains correctly but
draws other random numbers than the sequential simulator (one stream per group of clients, not per client).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedrepro.fl import ClientData, FedAvgConfig, StandardTrainer, batch_order, model_loss
from fedrepro.runtime import derive_seed


def unbatchable(model: nn.Module, trainer: object) -> str | None:
    """Why ``model`` trained by ``trainer`` (None: the plain trainer) cannot train clients batched, or None."""
    if trainer is not None and (type(trainer) is not StandardTrainer or trainer.batch_transform
                                or trainer.gradient_transform):
        return ("batched_clients trains with the plain StandardTrainer only (no DP-SGD, batch transform or "
                f"gradient defense); got {trainer!r}")
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            return (f"batched_clients cannot update BatchNorm running statistics ({name or 'model'}); use a model "
                    "without BatchNorm (GroupNorm)")
    return None


def check_batchable(model: nn.Module, trainer: object) -> None:
    """Raise a ValueError saying why ``model``/``trainer`` cannot train clients batched, if they cannot."""
    reason = unbatchable(model, trainer)
    if reason is not None:
        raise ValueError(f"{reason}. Set batched_clients=False for this run")


class BatchedClients:
    """Trains the chosen clients of a round together (see the module docstring); a drop-in for the simulator's
    worker pool: :meth:`train` returns each client's (state, metrics) in the order chosen."""

    def __init__(self, model: nn.Module, clients: list[ClientData], trainer: object, config: FedAvgConfig) -> None:
        check_batchable(model, trainer)
        if config.optimizer not in ("adam", "sgd"):
            raise ValueError(f"batched_clients implements adam and sgd, not {config.optimizer!r}")
        self.model, self.clients, self.config = model, clients, config
        self.names = [k for k, p in model.named_parameters() if p.requires_grad]
        self._cache: tuple[list[int], torch.Tensor, torch.Tensor] | None = None

        def loss(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor) -> torch.Tensor:
            return model_loss(model, functional_call(model, (params, buffers), (x,)), y)

        self._gradients = vmap(grad_and_value(loss), in_dims=(0, None, 0, 0), randomness="different")

    def train(self, round_: int, chosen: list[int], global_state: dict[str, torch.Tensor]
              ) -> list[tuple[dict[str, torch.Tensor], dict[str, float]]]:
        groups: dict[int, list[int]] = {}
        for k in chosen:
            groups.setdefault(self.clients[k].num_train, []).append(k)
        results: dict[int, tuple[dict[str, torch.Tensor], dict[str, float]]] = {}
        for group in groups.values():
            results.update(self._train_group(round_, group, global_state))
        return [results[k] for k in chosen]

    def _stacked(self, group: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's training images and labels stacked along a client axis; kept while the group repeats
        (every round when all clients train), so they are copied once, not per round."""
        if self._cache is None or self._cache[0] != group:
            data = [self.clients[k] for k in group]
            self._cache = (list(group), torch.stack([c.x_train for c in data]), torch.stack([c.y_train for c in data]))
        return self._cache[1], self._cache[2]

    def close(self) -> None:
        """Nothing to release (the pool interface of :func:`fedrepro.fl.run_fedavg`)."""

    def _train_group(self, round_: int, group: list[int], global_state: dict[str, torch.Tensor]
                     ) -> dict[int, tuple[dict[str, torch.Tensor], dict[str, float]]]:
        config, count = self.config, len(group)
        params = {k: global_state[k].detach().unsqueeze(0).repeat(count, *[1] * global_state[k].dim()).clone()
                  for k in self.names}
        buffers = {k: v for k, v in global_state.items() if k not in params}
        optimizer = _Optimizer(config, config.round_lr(round_))
        x_all, y_all = self._stacked(group)  # (C, n, ...): one gather per step serves every client
        size, device = x_all.shape[1], x_all.device
        rows = torch.arange(count, device=device)[:, None]
        total = torch.zeros(count, dtype=torch.float64, device=device)
        seen = 0
        torch.manual_seed(derive_seed(config.seed, "client-rng-batched", round_, *group))
        for epoch in range(config.local_epochs):
            # each client's batch order, concatenated: step s takes columns [s·b, (s+1)·b), as batch_order splits
            order = torch.stack([torch.cat(batch_order(size, config.batch_size, config.seed, round_, k, epoch))
                                 for k in group]).to(device)
            for start in range(0, size, config.batch_size):
                index = order[:, start:start + config.batch_size]
                x, y = x_all[rows, index], y_all[rows, index]
                gradients, losses = self._gradients(params, buffers, x, y)
                with torch.no_grad():
                    optimizer.step(params, gradients)
                total += losses.detach().to(torch.float64) * y.shape[1]
                seen += y.shape[1]
        out = {}
        for i, k in enumerate(group):
            state = {name: (params[name][i].clone() if name in params else value.clone())
                     for name, value in global_state.items()}
            out[k] = (state, {"train_loss": float(total[i]) / max(seen, 1)})
        return out


class _Optimizer:
    """torch's Adam (β = 0.9, 0.999; ε = 1e-8) or SGD (momentum, dampening 0), on stacked weights, element-wise."""

    def __init__(self, config: FedAvgConfig, lr: float) -> None:
        self.config, self.lr, self.t = config, lr, 0
        self.state: dict[str, tuple[torch.Tensor, ...]] = {}

    def step(self, params: dict[str, torch.Tensor], gradients: dict[str, torch.Tensor]) -> None:
        c = self.config
        self.t += 1
        for name, p in params.items():
            g = gradients[name]
            if c.weight_decay:
                g = g.add(p, alpha=c.weight_decay)
            if c.optimizer == "adam":
                if name not in self.state:
                    self.state[name] = (torch.zeros_like(p), torch.zeros_like(p))
                m, v = self.state[name]
                m.lerp_(g, 1 - 0.9)
                v.mul_(0.999).addcmul_(g, g, value=1 - 0.999)
                denom = (v.sqrt() / math.sqrt(1 - 0.999 ** self.t)).add_(1e-8)
                p.addcdiv_(m, denom, value=-self.lr / (1 - 0.9 ** self.t))
            else:
                if c.momentum:
                    buf = self.state.get(name)
                    g = g.clone() if buf is None else buf[0].mul_(c.momentum).add_(g)
                    self.state[name] = (g,)
                p.add_(g, alpha=-self.lr)


__all__ = ["BatchedClients", "check_batchable", "unbatchable"]
