"""The batched attack objective: gradient distance + priors of many problems, and its gradient.

For P problems (victim × restart), one ``vmap(grad(loss))`` over problems gives every problem's
parameter gradient on a private copy of the model; the distance to the victims' gradients and the
priors are summed over problems, and one ordinary backward gives each problem's own gradient
(problems share no variables, so the sum separates exactly). On an ``update`` view the vmapped
function is instead the client's unrolled local SGD (:mod:`fedrepro.attacks.local`) and the
distance compares simulated and observed updates ``w0 - wK``; ghost layers do not apply there
(every step needs the explicit weight gradient to move the weights).

Two changes to the model copy keep this fast on a CPU without changing the maths:

- *im2col*: a ``Conv2d`` whose unfolded input is small (see ``IM2COL_MAX_EXPANSION``) runs as
  unfold + matmul, so its per-problem weight gradient is a batched matrix product instead of a
  grouped convolution, and it can be a ghost layer.
- *ghost layers* (cosine distance only): for a linear map ``W`` applied at few positions (a linear
  layer; a convolution with a tiny output), the per-problem weight gradient ``G = sum_m d_m u_m^T``
  (``d``: gradient w.r.t. the layer output, ``u``: its input, ``m``: positions) is never formed:
  ``<G, T> = sum(d * (T u))`` and ``|G|^2 = sum((d^T d) * (u^T u))`` need only ``d`` and ``u``
  (the "ghost norm" of Goodfellow 2015 / ghost clipping). A layer is ghosted when its ``M`` positions
  per problem satisfy ``M^2 (in + out) <= in * out``; in paper 04's CNN that is the third
  convolution (78 % of its parameters) and the classifier. ``d`` comes from a zero "probe" added to the layer's
  output and differentiated instead of the weight; ``u`` is returned as an auxiliary output. A layer
  must run exactly once per forward pass to be ghosted (checked with a dry run).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fedrepro.attacks.client import functional_model
from fedrepro.attacks.distances import DISTANCES, dot_and_squared_norm, squared_norms
from fedrepro.attacks.local import unrolled_update
from fedrepro.attacks.regularizers import label_distance, total_variation
from fedrepro.attacks.threat import ServerView, ThreatModelError
from fedrepro.fl import model_loss

if TYPE_CHECKING:
    from fedrepro.attacks.inversion import AttackConfig


class _Ghostable:
    """Mixin: while ``self.ghost`` is set, add the probe to the output and record the input rows."""

    ghost: tuple[torch.Tensor, dict, str] | None = None

    def _linear(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows @ W^T + b`` for inputs ``(..., positions, in)``: with the weight on the right, ``vmap``
        folds all problems into one large matrix product instead of many thin ones."""
        out = rows @ self.weight.reshape(self.weight.shape[0], -1).T
        if self.bias is not None:
            out = out + self.bias
        if self.ghost is not None:
            probe, store, name = self.ghost
            store[name] = rows
            out = out + probe
        return out


class _Im2colConv2d(_Ghostable, nn.Conv2d):
    """Conv2d as unfold + matmul: identical maths, per-problem weights become a batched matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        n, _, h, w = x.shape
        rows = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride).transpose(1, 2)
        out = self._linear(rows)  # (n, positions, out_channels)
        size = [(dim + 2 * p - d * (k - 1) - 1) // s + 1 for dim, p, d, k, s in
                zip((h, w), self.padding, self.dilation, self.kernel_size, self.stride)]
        return out.transpose(1, 2).reshape(n, self.out_channels, *size)


class _GhostLinear(_Ghostable, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self._linear(x)


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, ...] | None:
    """``padding='same'/'valid'`` as symmetric integers (None when 'same' would be asymmetric)."""
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)


IM2COL_MAX_EXPANSION = 2.0
"""im2col only where the unfolded input is at most this many times the input (kernel area × output
positions / input positions), e.g. a 5×5 convolution on a 5×5 input: there the per-problem weight
gradient is a thin matrix product that the native grouped convolution computes slowly. Elsewhere
the native kernels are as fast or faster (on the CVB CNN, unfolding its 5×5 'same' convolutions
(25× the input) made an iteration about 3× slower)."""


def attack_copy(model: nn.Module, im2col: bool, example: torch.Tensor) -> nn.Module:
    """A copy of the model for the attacker's functional calls (same parameter names)."""
    clone = functional_model(model)
    for module in clone.modules():
        if type(module) is nn.Linear:
            module.__class__ = _GhostLinear
    if im2col:
        for module, (in_shape, out_shape) in _single_calls(clone, example, nn.Conv2d).values():
            expansion = math.prod(module.kernel_size) * math.prod(out_shape[2:]) / math.prod(in_shape[2:])
            if (type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
                    and _explicit_padding(module) is not None and expansion <= IM2COL_MAX_EXPANSION):
                module.padding = _explicit_padding(module)
                module.__class__ = _Im2colConv2d
    return clone


def _single_calls(model: nn.Module, example: torch.Tensor, kind: type) -> dict[str, tuple[nn.Module, tuple]]:
    """Modules of ``kind`` called exactly once by a forward pass, with their (input, output) shapes."""
    candidates = {name: m for name, m in model.named_modules() if isinstance(m, kind)}
    calls: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {name: [] for name in candidates}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: calls[name].append(
        (tuple(inp[0].shape), tuple(out.shape)))) for name, m in candidates.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (candidates[name], shapes[0]) for name, shapes in calls.items() if len(shapes) == 1}


@dataclass(frozen=True)
class _Ghost:
    module: str
    weight: str
    bias: str | None
    probe_shape: tuple[int, ...]  # the layer's output as rows: (n, ..., positions, out)


def _plan_ghosts(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> list[_Ghost]:
    """Ghost layers: matched weight, run once per forward, few positions (see module docstring)."""
    ghosts = []
    for name, (module, (_, out_shape)) in _single_calls(model, example, _Ghostable).items():
        weight, bias = f"{name}.weight", f"{name}.bias"
        if weight not in names:
            continue
        conv = isinstance(module, nn.Conv2d)
        out_features = module.weight.shape[0]
        in_features = module.weight[0].numel()
        positions = out_shape[0] * (out_shape[2] * out_shape[3] if conv else math.prod(out_shape[1:-1]))
        if positions ** 2 * (in_features + out_features) > in_features * out_features:
            continue
        probe = (out_shape[0], out_shape[2] * out_shape[3], out_features) if conv else out_shape
        ghosts.append(_Ghost(name, weight, bias if bias in names else None, probe))
    return ghosts


def same_sparsity(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Each problem's gradient ``g`` (P, ...) compressed as its target ``t`` was: its k largest magnitudes kept,
    k = the entries ``t`` has non-zero (top-k per tensor, as :class:`fedrepro.defenses.gradient.Pruning`)."""
    flat, sent = g.reshape(g.shape[0], -1), (t.reshape(t.shape[0], -1) != 0).sum(1, keepdim=True)
    kth = flat.detach().abs().sort(1, descending=True).values.gather(1, (sent - 1).clamp(min=0))
    keep = (flat.detach().abs() >= kth) & (sent > 0)
    return (flat * keep).view_as(g)


class Objective:
    """Gradient distance + priors of many problems, and its gradient w.r.t. each problem's variables."""

    def __init__(self, view: ServerView, config: AttackConfig, names: Sequence[str], im2col: bool,
                 ghost: bool = True) -> None:
        self.config = config
        params = {k: p.detach() for k, p in view.model.named_parameters()}
        example = torch.zeros(view.num_images, *view.image_shape, dtype=next(iter(params.values())).dtype,
                              device=next(iter(params.values())).device)
        try:  # the planning forward passes double as a check of the declared image shape
            self.model = attack_copy(view.model, im2col, example)
            planned = _plan_ghosts(self.model, names, example)
        except RuntimeError as error:
            raise ThreatModelError(f"the model cannot process the declared images {tuple(example.shape)}: "
                                   f"{error}") from error
        self.local = view.local if view.kind == "update" else None
        self.ghosts = (planned if ghost and config.distance == "cosine" and self.local is None
                       and config.space == "dense" else [])
        ghosted = {g.weight for g in self.ghosts} | {g.bias for g in self.ghosts if g.bias}
        self.names = list(names)
        self.dense = [k for k in names if k not in ghosted]
        if self.local is None:  # differentiate the matched parameters only
            self.selected = {k: params[k] for k in self.dense}
        else:  # the client trains every trainable parameter, whichever updates it shares
            self.selected = {k: params[k] for k, p in view.model.named_parameters() if p.requires_grad}
            frozen = [k for k in self.dense if k not in self.selected]
            if frozen:
                raise ThreatModelError(f"updates of frozen parameters cannot be matched (local training does "
                                       f"not change them): {', '.join(frozen)}")
        self.fixed = ({k: v for k, v in params.items() if k not in self.selected}, dict(self.model.named_buffers()))
        self.probes = {g.module: torch.zeros(g.probe_shape, dtype=example.dtype, device=example.device)
                       for g in self.ghosts}
        self.dtype, self.device = example.dtype, example.device
        modules = dict(self.model.named_modules())
        ghost_modules = {g.module: modules[g.module] for g in self.ghosts}

        def loss(selected: dict[str, torch.Tensor], probes: dict[str, torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor):
            store: dict[str, torch.Tensor] = {}
            for name, module in ghost_modules.items():
                module.ghost = (probes[name], store, name)
            try:
                logits = functional_call(self.model, (selected, *self.fixed), (x,))
            finally:
                for module in ghost_modules.values():
                    module.ghost = None
            return model_loss(self.model, logits, y), (logits, store)

        def simulated_update(selected: dict[str, torch.Tensor], probes: dict[str, torch.Tensor], x: torch.Tensor,
                             y: torch.Tensor):
            update, logits = unrolled_update(self.model, selected, self.fixed, x, y, self.local)
            return ({k: update[k] for k in self.dense}, {}), (logits, {})

        function = grad(loss, argnums=(0, 1), has_aux=True) if self.local is None else simulated_update
        self.problem_gradients = vmap(function, in_dims=(None, None, 0, 0), randomness="different")

    def targets(self, gradients: dict[str, torch.Tensor],
                victims: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Victims' gradients in this objective's order (ghost weights as ``(P, out, in)``), and their norms."""
        def rows(name: str) -> torch.Tensor:
            return gradients[name][victims].to(device=self.device, dtype=self.dtype)

        out = [rows(k) for k in self.dense]
        for g in self.ghosts:
            weight = rows(g.weight)
            out.append(weight.reshape(weight.shape[0], weight.shape[1], -1))
            if g.bias:
                out.append(rows(g.bias))
        return out, squared_norms(out).sqrt()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor | None,
                 targets: list[torch.Tensor], target_norm: torch.Tensor, priors: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-problem objective ``(P,)`` (graph attached to ``x``/``y``) and its gradient-distance part.

        With ``config.draws = S > 1`` every problem is evaluated S times (one row each, so ``vmap`` gives
        every row fresh model noise): ``draw_mode="loss"`` averages the S distances (and label terms),
        ``"gradient"`` matches the mean of the S gradients."""
        draws, mode = self.config.draws, self.config.draw_mode
        rows_x, rows_y, rows_labels = x, y, labels
        if draws > 1:
            rows_x, rows_y = x.repeat_interleave(draws, 0), y.repeat_interleave(draws, 0)
            rows_labels = None if labels is None else labels.repeat_interleave(draws, 0)
            if mode == "loss":
                targets = [t.repeat_interleave(draws, 0) for t in targets]
                target_norm = target_norm.repeat_interleave(draws, 0)
        (grads, deltas), (logits, inputs) = self.problem_gradients(self.selected, self.probes, rows_x, rows_y)
        dense = [grads[k] for k in self.dense]
        if draws > 1 and mode == "gradient":
            dense = [g.view(-1, draws, *g.shape[1:]).mean(1) for g in dense]
            # a ghost layer's mean gradient is one ghost over the positions of all draws, d scaled by 1/S
            deltas = {k: (d.reshape(-1, draws * d[0].numel() // d.shape[-1], d.shape[-1]) / draws)
                      for k, d in deltas.items()}
            inputs = {k: u.reshape(-1, draws * u[0].numel() // u.shape[-1], u.shape[-1]) for k, u in inputs.items()}
        if self.config.space == "topk":
            dense = [same_sparsity(g, t) for g, t in zip(dense, targets)]
        if self.config.distance != "cosine":
            distance = DISTANCES[self.config.distance](dense, targets, target_norm)
        else:
            distance = self._cosine(dense, deltas, inputs, targets, target_norm)
        label_term = None
        if priors and self.config.label_weight:
            label_term = label_distance(logits, rows_labels)
            if draws > 1:
                label_term = label_term.view(-1, draws).mean(1)
        if draws > 1 and mode == "loss":
            distance = distance.view(-1, draws).mean(1)
        total = distance
        if priors and self.config.tv_weight:
            total = total + self.config.tv_weight * total_variation(x)
        if label_term is not None:
            total = total + self.config.label_weight * label_term
        return total, distance

    def _cosine(self, dense: list[torch.Tensor], deltas: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor],
                targets: list[torch.Tensor], target_norm: torch.Tensor) -> torch.Tensor:
        count = len(dense)
        dense_targets = list(targets[:count])
        dot, squared = 0.0, 0.0
        position = count
        for g in self.ghosts:
            d, u = deltas[g.module], inputs[g.module]
            d = d.reshape(d.shape[0], -1, d.shape[-1])  # (P, positions, out)
            u = u.reshape(u.shape[0], -1, u.shape[-1])  # (P, positions, in)
            # Positions as contiguous rows: batched products with one row are fast here; with one
            # column (or odd strides) the same product takes the slow path, ~5x slower on this CPU.
            d, u = d.contiguous(), u.contiguous()
            dot = dot + (d * torch.matmul(u, targets[position].transpose(1, 2))).sum((1, 2))
            if d.shape[1] == 1:
                squared = squared + d.pow(2).sum((1, 2)) * u.pow(2).sum((1, 2))
            else:
                grams = torch.matmul(d, d.transpose(1, 2)) * torch.matmul(u, u.transpose(1, 2))
                squared = squared + grams.sum((1, 2))
            position += 1
            if g.bias:
                dense.append(d.sum(1))
                dense_targets.append(targets[position])
                position += 1
        if dense:
            dense_dot, dense_squared = dot_and_squared_norm(dense, dense_targets)
            dot, squared = dot + dense_dot, squared + dense_squared
        return 1.0 - dot / (squared.sqrt() * target_norm)
