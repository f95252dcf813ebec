"""The gradient-inversion engine: many victims and restarts attacked independently in one computation.

An attack *problem* is one (victim, restart) pair: dummy images ``x`` (and, for DLG, dummy label
logits) optimised so that the gradient they induce matches the victim's shared gradient (on an
``update`` view: so that the client's local training simulated on them gives the victim's model
update). All problems of a chunk are solved together:

1. one batched forward/backward computes every problem's parameter gradient
   (``vmap(grad(loss))`` over problems, via ``torch.func.functional_call``);
2. the distance to the targets, the priors and their sum over problems are formed, and one ordinary
   ``autograd.grad`` of that sum gives every problem's own gradient (problems share no variables,
   so the sum separates exactly);
3. a batched optimiser (:mod:`fedrepro.attacks.optim`) updates each problem's row.

Independence: no computation mixes problems, each problem's initialisation comes from its own seed
``derive_seed(seed, "init", victim, restart)``, and learning-rate schedules and early stopping are
tracked per problem with masks (finished problems drop out of the batch). So a victim's result does
not depend on its chunk, up to floating-point rounding of batched kernels (equal to 1e-9 in float64
in the tests). Stochastic models (CVB's sampling) are the exception: their noise comes from one
random stream per chunk.

Speed: see :mod:`fedrepro.attacks.objective` (im2col convolutions, ghost layers, fused cosine);
target norms are computed once per chunk. Memory is bounded by processing problems in chunks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from fedrepro.attacks.distances import DISTANCES
from fedrepro.attacks.labels import idlg_labels
from fedrepro.attacks.objective import Objective
from fedrepro.attacks.optim import (BatchedAdam, BatchedLBFGS, BatchedSGD, PlateauDecay, step_decay_factor,
                                    step_decay_milestones)
from fedrepro.attacks.threat import ServerView, ThreatModelError
from fedrepro.runtime import generator

INVERSION_OPTIMIZERS = ("adam", "sgd", "lbfgs")
INITS = ("gaussian", "uniform", "pattern")
LABEL_STRATEGIES = ("known", "idlg", "joint")
SCHEDULES = ("none", "step", "plateau")
OBSERVATIONS = ("any", "gradient", "update")
DRAW_MODES = ("loss", "gradient")
SPACES = ("dense", "topk")


@dataclass(frozen=True)
class AttackConfig:
    """One gradient-inversion attack: distance × optimiser × priors × initialisation × labels × layers.

    ``max_iterations`` counts gradient evaluations (one per update for every optimiser).
    ``init``: ``gaussian`` = N(0, 1) in model (normalised) space, as the reference IG code;
    ``uniform`` = uniform pixels in [0, 1], normalised; ``pattern`` = CPL's seed: one uniform
    ``ceil(H/2) × ceil(W/2)`` patch tiled 2 × 2, normalised.
    ``labels``: ``known`` (the view's labels), ``idlg`` (analytic recovery), ``joint`` (DLG: dummy
    label logits optimised with the image, soft cross-entropy on their softmax).
    ``layers``: names of the shared gradients to match (``None`` = all); see :func:`layers_before`.
    ``signed``/``boxed``: IG's signed gradient and projection onto valid images in [0, 1].
    ``schedule``: ``step`` = ×0.1 at 3/8, 5/8, 7/8 of ``max_iterations`` (Geiping); ``plateau`` = ×0.1
    after ``plateau_patience`` iterations without relative improvement (paper 04).
    Early stop per problem: objective below ``stop_loss``, or no new best for ``stop_patience``.
    ``observation``: the view kinds the attack is meant for (``any``, ``gradient`` or ``update``). Every
    config attacks both kinds: on an ``update`` view the objective simulates the client's local steps
    (see :mod:`fedrepro.attacks.local`); a preset made for one kind refuses the other.
    ``draws``: expectation over the model's own randomness (EOT). A stochastic model (PRECODE's or the
    CVB's sampling) gives another gradient in every forward pass; with ``draws = S`` each evaluation runs
    the dummy through the model S times, each with fresh noise, and the objective is the mean of the S
    gradient distances (an S-sample estimate of the expected distance) plus the priors once
    (``draw_mode="loss"``); with ``draw_mode="gradient"`` the S dummy gradients are averaged first and
    that mean is matched (the shared gradient's expectation, which notebook 06's adaptive attacks use). ``1``
    is the plain attack: one draw per evaluation. It multiplies the cost of an evaluation by S and changes
    nothing on a deterministic model but the time.
    ``space``: where gradients are compared. ``dense`` (default) compares the dummy's full gradient with the
    shared one; ``topk`` is **compression-aware** against top-k sparsification and pruning: each tensor of
    the dummy's gradient is compressed as the victim's was — its k largest magnitudes kept, k being the
    number of entries the victim sent — before the distance (the gradient flows through the kept entries).
    It computes the matched gradients explicitly (no ghost norms).
    """

    distance: str = "cosine"
    optimizer: str = "adam"
    lr: float = 0.1
    max_iterations: int = 24_000
    signed: bool = True
    boxed: bool = True
    tv_weight: float = 1e-4
    label_weight: float = 0.0
    init: str = "gaussian"
    labels: str = "known"
    layers: tuple[str, ...] | None = None
    schedule: str = "step"
    plateau_patience: int = 400
    stop_loss: float | None = None
    stop_patience: int | None = None
    restarts: int = 1
    momentum: float = 0.9
    lbfgs_history: int = 100
    source: str = ""
    observation: str = "any"
    draws: int = 1
    draw_mode: str = "loss"
    space: str = "dense"

    def __post_init__(self) -> None:
        checks = {"distance": (self.distance, tuple(DISTANCES)), "optimizer": (self.optimizer, INVERSION_OPTIMIZERS),
                  "init": (self.init, INITS), "labels": (self.labels, LABEL_STRATEGIES),
                  "schedule": (self.schedule, SCHEDULES), "observation": (self.observation, OBSERVATIONS),
                  "draw_mode": (self.draw_mode, DRAW_MODES), "space": (self.space, SPACES)}
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{key}={value!r}; choose one of {', '.join(allowed)}")
        if self.max_iterations < 1 or self.restarts < 1 or self.draws < 1:
            raise ValueError("max_iterations, restarts and draws must be >= 1")
        if self.label_weight and self.labels == "joint":
            raise ValueError("the label regulariser needs fixed labels (known or idlg), not joint optimisation")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))

    def replace(self, **changes) -> "AttackConfig":
        return replace(self, **changes)


@dataclass
class AttackResult:
    """Reconstructions of every victim (best restart by final gradient distance)."""

    images: torch.Tensor  # (V, n, C, H, W), model (normalised) space
    labels: torch.Tensor  # (V, n): the labels used (known / recovered / argmax of the joint dummy)
    loss: torch.Tensor  # (V,): gradient distance of the returned reconstruction (no priors)
    iterations: torch.Tensor  # (V,): gradient evaluations spent on the returned restart
    restart_losses: torch.Tensor  # (V, restarts)
    mean: tuple[float, ...] = field(repr=False, default=())
    std: tuple[float, ...] = field(repr=False, default=())

    def denormalized(self) -> torch.Tensor:
        """Reconstructions as images in [0, 1], shape ``(V * n, C, H, W)`` (victim-major)."""
        x = self.images.flatten(0, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0.0, 1.0)


# --- the engine ----------------------------------------------------------------------------------

def invert(view: ServerView, config: AttackConfig, seed: int = 0, chunk_size: int | None = None,
           progress: bool = True, im2col: bool = True, memory_budget: float = 2e9,
           init_keys: Sequence[int] | torch.Tensor | None = None,
           transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> AttackResult:
    """Attack every victim of ``view`` with ``config``; victims × restarts run in batched chunks.

    ``chunk_size`` problems are solved together (default: as many as ``memory_budget`` bytes allow;
    1 is the classic one-image-at-a-time loop). ``im2col`` allows the unfold + matmul convolutions of
    :mod:`fedrepro.attacks.objective`. ``init_keys`` (one integer per victim; default: its position in
    the view) names the stream each victim's starting point is drawn from, so a caller that stacks the
    victims of several experiments into one view can give a victim the same start in every stack.
    ``transform(x, restarts)`` maps the dummy images (P, n, C, H, W, model space) of problems with these
    restart indices to what the client fed its model (a known preprocessing, e.g. a transformation policy:
    :class:`fedrepro.defenses.transforms.differentiable.PolicyAwareTransform`); the attack then recovers the
    untransformed images, and the priors (TV) see the transformed ones.
    """
    if config.observation not in ("any", view.kind):
        raise ThreatModelError(f"this attack is made for a shared {config.observation}, but the server view holds "
                               f"a {view.kind}")
    names = _matched_layers(view, config)
    objective = Objective(view, config, names, im2col)
    labels = _labels(view, config)
    labels = None if labels is None else labels.to(objective.device)
    victims, restarts = view.num_victims, config.restarts
    keys = torch.arange(victims) if init_keys is None else torch.as_tensor(init_keys, dtype=torch.long).cpu()
    if keys.shape != (victims,):
        raise ValueError(f"init_keys needs one key per victim ({victims}), got shape {tuple(keys.shape)}")
    problems = victims * restarts
    size = chunk_size or auto_chunk_size(view, config, names, memory_budget)
    images = torch.empty(problems, view.num_images, *view.image_shape, dtype=objective.dtype, device=objective.device)
    found = torch.empty(problems, view.num_images, dtype=torch.long, device=objective.device)
    losses = torch.empty(problems, dtype=objective.dtype, device=objective.device)
    spent = torch.empty(problems, dtype=torch.long, device=objective.device)
    starts = range(0, problems, size)
    chunks = tqdm(starts, desc="chunks", disable=not progress or len(starts) == 1, leave=False)
    with torch.random.fork_rng(devices=[objective.device] if objective.device.type == "cuda" else []):
        for start in chunks:
            ids = torch.arange(start, min(start + size, problems), device=objective.device)
            torch.manual_seed(generator(seed, "model-noise", start).initial_seed())
            result = _solve(objective, view, config, ids // restarts, ids % restarts, labels, seed, progress,
                            keys[(ids // restarts).cpu()], transform)
            images[ids], found[ids], losses[ids], spent[ids] = result
    restart_losses = losses.view(victims, restarts)
    best = torch.nan_to_num(restart_losses, nan=math.inf).argmin(1)
    pick = torch.arange(victims, device=best.device) * restarts + best
    return AttackResult(images[pick], found[pick], losses[pick], spent[pick], restart_losses, view.mean, view.std)


def auto_chunk_size(view: ServerView, config: AttackConfig, names: Sequence[str], budget: float) -> int:
    """Problems per chunk so that per-problem gradients, autograd buffers and optimiser state fit ``budget``
    (an update view keeps every local step's activations and gradients of all trained parameters)."""
    params = sum(view.gradients[n][0].numel() for n in names)
    image = view.num_images * math.prod(view.image_shape)
    if view.kind == "update":
        steps = view.local.steps
        params = steps * sum(p.numel() for p in view.model.parameters() if p.requires_grad)
        image = image * steps * (view.local.batch_size or view.num_images) // view.num_images
    state = 2 * config.lbfgs_history * image if config.optimizer == "lbfgs" else 3 * image
    per_problem = 4 * (8 * params + 64 * image) * config.draws + 4 * state
    return int(max(1, min(view.num_victims * config.restarts, budget // per_problem)))


def _matched_layers(view: ServerView, config: AttackConfig) -> list[str]:
    if config.layers is None:
        return view.names
    missing = [n for n in config.layers if n not in view.gradients]
    if missing:
        raise ThreatModelError(f"the attack matches layers the server did not receive: {', '.join(missing)}")
    order = [n for n, _ in view.model.named_parameters()]
    return sorted(config.layers, key=order.index)


def _labels(view: ServerView, config: AttackConfig) -> torch.Tensor | None:
    if config.labels == "known":
        if view.labels is None:
            raise ThreatModelError("labels='known' but the server does not know the labels; use 'idlg' or 'joint'")
        return view.labels
    if config.labels == "idlg":
        return idlg_labels(view)
    return None


def _initial(view: ServerView, config: AttackConfig, victims: torch.Tensor, restarts: torch.Tensor,
             seed: int, num_classes: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Each problem's starting point from its own generator, flattened to one row per problem."""
    c, h, w = view.image_shape
    mean = torch.tensor(view.mean, dtype=dtype).view(-1, 1, 1)
    std = torch.tensor(view.std, dtype=dtype).view(-1, 1, 1)
    rows = []
    for v, r in zip(victims.tolist(), restarts.tolist()):
        g = generator(seed, "init", v, r)
        shape = (view.num_images, c, h, w)
        if config.init == "gaussian":
            x = torch.randn(shape, generator=g, dtype=dtype)
        elif config.init == "uniform":
            x = (torch.rand(shape, generator=g, dtype=dtype) - mean) / std
        else:
            patch = torch.rand((view.num_images, c, -(-h // 2), -(-w // 2)), generator=g, dtype=dtype)
            x = (patch.repeat(1, 1, 2, 2)[..., :h, :w] - mean) / std
        parts = [x.flatten()]
        if config.labels == "joint":
            parts.append(torch.randn(view.num_images * num_classes, generator=g, dtype=dtype))
        rows.append(torch.cat(parts))
    return torch.stack(rows).to(device)


def _solve(objective: Objective, view: ServerView, config: AttackConfig, victims: torch.Tensor,
           restarts: torch.Tensor, labels: torch.Tensor | None, seed: int, progress: bool,
           keys: torch.Tensor | None = None,
           transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
    """Run one chunk of problems to the end; returns images, labels, final distances, iterations.
    ``keys``: each problem's initialisation stream (default: its victim's position); ``transform``: see
    :func:`invert`."""
    dtype, device = objective.dtype, objective.device
    n, shape = view.num_images, view.image_shape
    image_size = n * math.prod(shape)
    targets, target_norm = objective.targets(view.gradients, victims)
    fixed = None if labels is None else labels[victims]
    num_classes = _num_classes(objective, view)
    z = _initial(view, config, victims.cpu() if keys is None else keys, restarts, seed, num_classes, dtype, device)
    count = z.shape[0]
    mean = torch.tensor(view.mean, dtype=dtype, device=device).view(-1, 1, 1)
    std = torch.tensor(view.std, dtype=dtype, device=device).view(-1, 1, 1)
    low, high = -mean / std, (1 - mean) / std  # pixel values 0 and 1 in model space

    def split(rows_z: torch.Tensor, rows: torch.Tensor | None):
        x = rows_z[:, :image_size].view(-1, n, *shape)
        if config.labels == "joint":
            return x, rows_z[:, image_size:].view(-1, n, num_classes).softmax(-1)
        return x, _get(fixed, rows)

    def evaluate(rows: torch.Tensor | None, priors: bool = True):
        rows_z = _get(z, rows).detach().requires_grad_(True)
        x, y = split(rows_z, rows)
        if transform is not None:
            x = transform(x, restarts if rows is None else restarts[rows])
        sub = targets if rows is None else [t[rows] for t in targets]
        total, distance = objective(x, y, _get(fixed, rows), sub, _get(target_norm, rows), priors)
        return rows_z, total, distance

    optimizer = _optimizer(config, z)
    lr = torch.full((count,), config.lr, dtype=dtype, device=device)
    plateau = PlateauDecay(lr, config.plateau_patience) if config.schedule == "plateau" else None
    milestones = step_decay_milestones(config.max_iterations) if config.schedule == "step" else ()
    best = torch.full((count,), math.inf, dtype=dtype, device=device)
    since_best = torch.zeros(count, dtype=torch.long, device=device)
    iterations = torch.zeros(count, dtype=torch.long, device=device)
    active = torch.ones(count, dtype=torch.bool, device=device)
    bar = tqdm(total=config.max_iterations, desc=f"inverting {count} problems", disable=not progress, leave=False)
    for iteration in range(config.max_iterations):
        rows = None if bool(active.all()) else active.nonzero().squeeze(1)
        if rows is not None and rows.numel() == 0:
            break
        rows_z, total, _ = evaluate(rows)
        (gradient,) = torch.autograd.grad(total.sum(), rows_z)
        total = total.detach()
        with torch.no_grad():
            _put(iterations, rows, _get(iterations, rows) + 1)
            improved = total < _get(best, rows)
            _put(best, rows, torch.where(improved, total, _get(best, rows)))
            wait = torch.where(improved, torch.zeros_like(since_best[:1]), _get(since_best, rows) + 1)
            _put(since_best, rows, wait)
            done = ~torch.isfinite(total)
            if config.stop_loss is not None:
                done |= total < config.stop_loss
            if config.stop_patience is not None:
                done |= wait >= config.stop_patience
            if config.signed:
                gradient[:, :image_size] = gradient[:, :image_size].sign()
            step_lr = _get(lr, rows) * step_decay_factor(iteration, milestones)
            new_z, converged = optimizer.step(rows, rows_z.detach(), gradient, total, step_lr)
            new_z = torch.where(done.unsqueeze(1), rows_z.detach(), new_z)
            if config.boxed:
                x = new_z[:, :image_size].view(-1, n, *shape)
                new_z[:, :image_size] = torch.maximum(torch.minimum(x, high), low).flatten(1)
            _put(z, rows, new_z)
            if plateau is not None:
                plateau.update(rows, total)
            _put(active, rows, ~(done | converged))
        bar.update(1)
        if iteration % 100 == 0:
            bar.set_postfix(active=int(active.sum()), loss=f"{float(total.mean()):.4g}")
    bar.close()
    with torch.no_grad():
        x, y = split(z, None)
    final = evaluate(None, priors=False)[2].detach()
    chosen = fixed if fixed is not None else y.argmax(-1)
    return x.detach(), chosen, final, iterations


def _num_classes(objective: Objective, view: ServerView) -> int:
    """Output size of the model (the server can run it), needed for DLG's dummy labels."""
    with torch.no_grad():
        probe = torch.zeros(1, *view.image_shape, dtype=objective.dtype, device=objective.device)
        return int(functional_call(objective.model, (objective.selected, *objective.fixed), (probe,)).shape[-1])


def _optimizer(config: AttackConfig, z: torch.Tensor):
    if config.optimizer == "adam":
        return BatchedAdam(z)
    if config.optimizer == "sgd":
        return BatchedSGD(z, momentum=config.momentum)
    return BatchedLBFGS(z, history=config.lbfgs_history)


def _get(tensor: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    if tensor is None or rows is None:
        return tensor
    return tensor[rows]


def _put(tensor: torch.Tensor, rows: torch.Tensor | None, value: torch.Tensor) -> None:
    if rows is None:
        tensor.copy_(value)
    else:
        tensor[rows] = value

