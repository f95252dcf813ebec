"""Paper 05's two scores of a transformation policy: the privacy score S_pri and the accuracy score S_acc.

S_pri (eqs. 6–7) — how steadily the gradient similarity grows along the straight path from a random
start ``u`` to the transformed image ``x̂ = T(x)``. For every image, K points
``x_i = (1 − t_i)·u + t_i·x̂`` are taken and ``GradSim(x_i, x̂)`` is the cosine between the loss
gradients of ``x_i`` and of ``x̂`` (true label, model in eval mode). Lower = more private. Defaults
follow the reference code (ATSPrivacy ``benchmark/search_transform_attack.py``), which the paper's
numbers come from:

* ``points=21``, ``t_i = i/20`` including both ends, integrated with the trapezoid rule (its
  ``area_ratio``); ``rule="riemann"`` is eq. 7 literally (``t_j = j/K``, j = 0..K−1, plain mean);
* ``similarity="layer"``: the cosine per parameter tensor, averaged over tensors (the reference);
  ``"global"`` is eq. 5 literally (one cosine over all parameters);
* ``u`` is uniform noise in [0, 1] pixel space, normalised like the images;
* the same noise and the same transformation randomness for every policy (the reference reseeds
  every run identically), so policies are compared on common random numbers.

All K points of all images of a chunk are one ``torch.func.vmap(grad(...))`` call (per-sample
gradients), reduced at once to per-layer dot products and norms; ``batched=False`` is the
reference's loop (one image, one point at a time) kept for checking and for the benchmark. On
this project's 2 idle CPU cores the vmapped path is no faster than the loop
(``benchmarks/policy_search_speed.py``: 0.8× at width 64, 1.0× at width 8). It stays the default
because it gains more from each added thread (width 64: 1.83× from 1 to 2 threads, the loop 1.68×),
and under load the loop's many small passes suffer more.

S_acc (eqs. 8–10) — on a randomly initialised model in eval mode: for a mini-batch of transformed
images with distinct labels, ``J = d(Σ logits)/dx`` per image, ``C = corrcoef(J)``, eigenvalues λ,
``S_acc = −Σ[log(λ + 1e-5) + 1/(λ + 1e-5)]`` (the reference's sign and sum: higher = better; its best
value is −N for N images), averaged over ``runs=10`` mini-batches. ``normalize=True`` divides by N as
eq. 10 writes. Eigenvalues are clamped at 0 (the reference's ``np.linalg.eig`` can return tiny
negative values whose log is NaN) and a Jacobian row without variance correlates 0 with the others.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fedrepro.augment import random_crop_flip
from fedrepro.data import ImageDataset
from fedrepro.defenses.transforms import Policy, PolicyLike, transform_images
from fedrepro.runtime import generator

Transform = Union[PolicyLike, Callable[[torch.Tensor, torch.Generator], torch.Tensor]]
"""A policy (string / indices / Policy) or any ``f(uint8 images, generator) -> uint8 images``."""

EPS_ACC = 1e-5
EPS_COS = 1e-8
DEAD_WARNING = 0.05  # share of zero-gradient parameter tensors above which S_pri warns


# --- shared helpers ------------------------------------------------------------------------------

def _transform(images: torch.Tensor, policy: Transform, g: torch.Generator, respect_probability: bool,
               crop_flip: bool) -> torch.Tensor:
    if callable(policy) and not isinstance(policy, (str, Policy)):
        if crop_flip:
            images = random_crop_flip(images, g)
        return policy(images, g)
    return transform_images(images, policy, g, respect_probability=respect_probability, crop_flip=crop_flip)


def _normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device) -> torch.Tensor:
    x = images.to(device)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (x - m) / s


class _EvalMode:
    """Put a model in eval mode for a block and restore its mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _dtype_of(model: nn.Module) -> torch.dtype:
    try:
        return next(model.parameters()).dtype
    except StopIteration:
        return torch.float32


def pick_images(dataset: ImageDataset, per_class: int = 1, seed: int = 0, classes: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random images of each class (of the first ``classes`` classes): uint8 images, labels.

    The reference scores S_pri on 5 validation images per class; the paper says 100 random
    validation images (and attacks the first 100, which it keeps out of the score).
    """
    g = generator(seed, "pick-images")
    chosen = []
    labels = dataset.labels
    wanted = range(dataset.num_classes if classes is None else min(classes, dataset.num_classes))
    for cls in wanted:
        idx = (labels == cls).nonzero().flatten()
        if len(idx) == 0:
            continue
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    index = torch.cat(chosen).sort().values
    return dataset.images[index], labels[index]


# --- S_pri ---------------------------------------------------------------------------------------

@dataclass
class PrivacyScore:
    """S_pri of one policy: ``value`` (mean over images), per image, and the mean GradSim curve.

    ``dead_fraction`` is the share of (image, parameter tensor) pairs whose gradient at x̂ is exactly
    zero. A healthy model has none; a model with dead ReLUs (e.g. a narrow ConvNet semi-trained with
    too high a learning rate) has many, and then the per-layer GradSim counts those tensors as 0 at
    every point — even at x̂ itself — so S_pri measures the dead units, not the policy.
    """

    value: float
    per_image: torch.Tensor
    curve: torch.Tensor
    points: torch.Tensor
    dead_fraction: float = 0.0

    @property
    def std(self) -> float:
        return float(self.per_image.std(unbiased=False)) if len(self.per_image) > 1 else 0.0


def path_points(points: int = 21, rule: str = "trapezoid") -> torch.Tensor:
    """t values: ``linspace(0, 1, K)`` for the trapezoid rule, ``j/K`` (j < K) for eq. 7's sum."""
    if points < 2:
        raise ValueError(f"need at least 2 points, got {points}")
    if rule == "trapezoid":
        return torch.tensor([i / (points - 1) for i in range(points)], dtype=torch.float64)
    if rule == "riemann":
        return torch.tensor([j / points for j in range(points)], dtype=torch.float64)
    raise ValueError(f"rule must be 'trapezoid' or 'riemann', got {rule!r}")


def _integrate(sims: torch.Tensor, rule: str) -> torch.Tensor:
    """(..., K) similarities -> (...) area under the curve over [0, 1]."""
    if rule == "trapezoid":
        return ((sims[..., 1:] + sims[..., :-1]) / 2).sum(-1) / (sims.shape[-1] - 1)
    return sims.mean(-1)


def _similarity(dots: torch.Tensor, norms: torch.Tensor, target_norms: torch.Tensor, similarity: str) -> torch.Tensor:
    """Per-layer dot products/squared norms (..., L) -> GradSim (...)."""
    if similarity == "layer":
        cos = dots / (norms.sqrt().clamp(min=EPS_COS) * target_norms.sqrt().clamp(min=EPS_COS))
        return cos.mean(-1)
    if similarity == "global":
        return dots.sum(-1) / (norms.sum(-1).sqrt().clamp(min=EPS_COS) * target_norms.sum(-1).sqrt().clamp(min=EPS_COS))
    raise ValueError(f"similarity must be 'layer' or 'global', got {similarity!r}")


def _parameters(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    return params, buffers


def privacy_inputs(images: torch.Tensor, policy: Transform, *, mean: Sequence[float], std: Sequence[float],
                   seed: int = 0, respect_probability: bool = False, crop_flip: bool = False,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised transformed images x̂ and random starts u that S_pri uses (same for every policy)."""
    device = torch.device(device)
    transformed = _transform(images, policy, generator(seed, "spri-transform"), respect_probability, crop_flip)
    x = _normalise(transformed, mean, std, device)
    noise = torch.rand(x.shape, generator=generator(seed, "spri-noise"), dtype=torch.float32)
    u = _normalise(noise, mean, std, device)
    return x, u


def privacy_score(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, policy: Transform, *,
                  mean: Sequence[float], std: Sequence[float], points: int = 21, rule: str = "trapezoid",
                  similarity: str = "layer", seed: int = 0, respect_probability: bool = False,
                  crop_flip: bool = False, batched: bool = True, chunk_size: int | None = None,
                  memory_budget: float = 1.5e9) -> PrivacyScore:
    """S_pri of ``policy`` on ``model`` (the semi-trained M^s) over uint8 ``images`` with true ``labels``.

    ``chunk_size`` images (default: as many as ``memory_budget`` bytes of per-sample gradients allow)
    and all their K points go through one vmapped per-sample-gradient call.
    """
    device, dtype = _device_of(model), _dtype_of(model)
    x, u = privacy_inputs(images, policy, mean=mean, std=std, seed=seed, respect_probability=respect_probability,
                          crop_flip=crop_flip, device=device)
    x, u = x.to(dtype), u.to(dtype)
    y = labels.to(device)
    ts = path_points(points, rule)
    with _EvalMode(model):
        if batched:
            dots, norms, target_norms = _layer_products_batched(model, x, u, y, ts, rule, chunk_size, memory_budget)
        else:
            dots, norms, target_norms = _layer_products_looped(model, x, u, y, ts)
    sims = _similarity(dots, norms, target_norms[:, None, :], similarity)  # (N, K)
    per_image = _integrate(sims, rule)
    dead = float((target_norms == 0).double().mean())
    if dead > DEAD_WARNING:
        warnings.warn(f"S_pri: {100 * dead:.0f}% of the parameter tensors have no gradient at the transformed "
                      "images (dead units); the score reflects the model, not the policy — train the "
                      "semi-trained model with a lower learning rate", RuntimeWarning, stacklevel=2)
    return PrivacyScore(float(per_image.mean()), per_image.cpu(), sims.mean(0).cpu(), ts, dead)


def _interpolate(x: torch.Tensor, u: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) × (K,) -> (n, K, C, H, W): (1 − t)·u + t·x, as the reference computes it."""
    t = ts.to(x.dtype).to(x.device).view(1, -1, 1, 1, 1)
    return (1 - t) * u[:, None] + t * x[:, None]


def _layer_products_batched(model: nn.Module, x: torch.Tensor, u: torch.Tensor, y: torch.Tensor, ts: torch.Tensor,
                            rule: str, chunk_size: int | None, memory_budget: float
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, point and layer: <g_i, g>, |g_i|², and per image and layer |g|² (g: gradient at x̂)."""
    params, buffers = _parameters(model)
    names = list(params)

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    include_target = not (rule == "trapezoid" and float(ts[-1]) == 1.0)
    steps = len(ts) + (1 if include_target else 0)
    n = x.shape[0]
    if chunk_size is None:
        size = sum(p.numel() * p.element_size() for p in params.values())
        chunk_size = max(1, int(memory_budget // (3 * size * steps)))  # gradients + products, with headroom
    dots, norms, targets = [], [], []
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            xs, us, ys = x[start:start + chunk_size], u[start:start + chunk_size], y[start:start + chunk_size]
            m = xs.shape[0]
            path = _interpolate(xs, us, ts)
            if include_target:
                path = torch.cat([path, xs[:, None]], 1)
            grads = per_sample(params, path.flatten(0, 1), ys.repeat_interleave(steps))
            d, q, t = [], [], []
            for name in names:
                g = grads[name].reshape(m, steps, -1)
                target = g[:, -1]  # x̂ itself: the last point (t = 1) or the appended target
                d.append(torch.bmm(g, target.unsqueeze(-1)).squeeze(-1))
                q.append((g * g).sum(-1))
                t.append((target * target).sum(-1))
            del grads
            keep = slice(0, len(ts))
            dots.append(torch.stack(d, -1)[:, keep])
            norms.append(torch.stack(q, -1)[:, keep])
            targets.append(torch.stack(t, -1))
    return torch.cat(dots).double(), torch.cat(norms).double(), torch.cat(targets).double()


def _layer_products_looped(model: nn.Module, x: torch.Tensor, u: torch.Tensor, y: torch.Tensor, ts: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference's loop: the target gradient, then one backward pass per image and point."""
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient(xi: torch.Tensor, yi: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(F.cross_entropy(model(xi[None]), yi[None]), params))

    dots = torch.zeros(len(x), len(ts), len(params), dtype=torch.float64)
    norms = torch.zeros_like(dots)
    targets = torch.zeros(len(x), len(params), dtype=torch.float64)
    for i in range(len(x)):
        target = gradient(x[i], y[i])
        targets[i] = torch.stack([(g * g).sum() for g in target]).double().cpu()
        path = _interpolate(x[i:i + 1], u[i:i + 1], ts)[0]
        for k in range(len(ts)):
            grads = gradient(path[k], y[i])
            dots[i, k] = torch.stack([(g * h).sum() for g, h in zip(grads, target)]).double().cpu()
            norms[i, k] = torch.stack([(g * g).sum() for g in grads]).double().cpu()
    return dots, norms, targets


# --- S_acc ---------------------------------------------------------------------------------------

@dataclass
class AccuracyScore:
    """S_acc of one policy: ``value`` (mean over runs), per run, and the mini-batch size N."""

    value: float
    per_run: torch.Tensor
    batch_size: int


def accuracy_batches(labels: torch.Tensor, runs: int = 10, batch_size: int | None = None, seed: int = 0
                     ) -> list[torch.Tensor]:
    """For each run, indices of one random image per class (``batch_size`` classes at most, random ones)."""
    classes = labels.unique()
    chosen = []
    for run in range(runs):
        g = generator(seed, "sacc-batch", run)
        order = classes[torch.randperm(len(classes), generator=g)]
        if batch_size is not None:
            order = order[:batch_size]
        picks = []
        for cls in order.tolist():
            idx = (labels == cls).nonzero().flatten()
            picks.append(idx[torch.randint(len(idx), (1,), generator=g)])
        chosen.append(torch.cat(picks))
    return chosen


def jacobian_score(jacobian: torch.Tensor, normalize: bool = False) -> float:
    """−Σ_i [log(λ_i + 1e-5) + 1/(λ_i + 1e-5)] over the eigenvalues of corrcoef of the rows of ``jacobian``."""
    j = jacobian.flatten(1).double()
    corr = torch.corrcoef(j)
    corr = torch.nan_to_num(corr, nan=0.0)
    corr.fill_diagonal_(1.0)
    eig = torch.linalg.eigvalsh(corr).clamp(min=0.0)
    score = -(torch.log(eig + EPS_ACC) + 1.0 / (eig + EPS_ACC)).sum()
    return float(score / len(eig)) if normalize else float(score)


def accuracy_score(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, policy: Transform, *,
                   mean: Sequence[float], std: Sequence[float], runs: int = 10, batch_size: int | None = None,
                   seed: int = 0, respect_probability: bool = False, crop_flip: bool = False,
                   normalize: bool = False, batched: bool = True) -> AccuracyScore:
    """S_acc of ``policy`` on ``model`` (randomly initialised M^r) from a pool of uint8 images and labels.

    Each run takes one image per class (at most ``batch_size`` classes) — the reference's "distinct
    labels" mini-batch — transformed by ``policy``. All runs are one forward/backward pass
    (``batched``), or one per run (the reference).

    The scale depends on N (the best value is −N): the reference keeps the distinct labels among 100
    consecutive validation images — all 10 for a 10-class dataset, ≈ 63 for CIFAR-100 — so its
    T_acc = −85 (CIFAR-100, ResNet20) compares with ``batch_size=63`` there.
    """
    device = _device_of(model)
    batches = accuracy_batches(labels, runs, batch_size, seed)
    index = torch.cat(batches)
    transformed = _transform(images[index], policy, generator(seed, "sacc-transform"), respect_probability, crop_flip)
    x = _normalise(transformed, mean, std, device).to(_dtype_of(model))
    sizes = [len(b) for b in batches]
    if sizes[0] < 2:
        raise ValueError("S_acc needs images of at least 2 distinct labels in the pool")
    with _EvalMode(model):
        if batched:
            jac = _input_jacobian(model, x)
            parts = torch.split(jac, sizes)
        else:
            parts = [_input_jacobian(model, part) for part in torch.split(x, sizes)]
    scores = torch.tensor([jacobian_score(p, normalize) for p in parts], dtype=torch.float64)
    return AccuracyScore(float(scores.mean()), scores, sizes[0])


def _input_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """d(Σ logits)/dx for each image (exact per image in eval mode: samples do not interact)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (jac,) = torch.autograd.grad(logits.sum(), x)
    return jac.detach()
