"""Adversarial examples on images in [0, 1]: FGSM and PGD (L∞, in-house, batched) and FAB (torchattacks).

Every attack takes a model that maps **[0, 1] images** to logits — wrap a trained model with
:class:`Normalized`, which applies the dataset's normalisation inside the forward pass, so the
perturbation budget is measured in pixel space (ε = 8/255 means 8 grey levels) and the loss is
differentiated through the normalisation. Outputs are clipped to the ε-ball around the input and
to [0, 1].

Paper 01's defaults (its Appendix 6.1): ε = 8/255, step size 2/255, 10 steps. PGD starts from a
uniform random point in the ε-ball by default (Madry et al.; torchattacks' default too); pass
``random_start=False`` for the deterministic variant, of which one step of size ε is exactly FGSM.

Speed: one forward and one input-gradient per step for the whole batch (``torch.autograd.grad``
with respect to the images only). The parameters are frozen for the attack, so autograd does not
record the weight-gradient half of the graph at all (torchattacks leaves them trainable), and the
model's ``.grad`` fields are untouched, which adversarial training inside a client step needs. The
model is put in eval mode for the attack; mode and ``requires_grad`` are restored afterwards.
It produces exactly torchattacks' PGD images at the same speed (``benchmarks/pgd_speed.py``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedrepro.quantization import require_float

EPS = 8 / 255
STEP_SIZE = 2 / 255
STEPS = 10
METHODS = ("fgsm", "pgd", "fab")


class Normalized(nn.Module):
    """``model`` behind the dataset normalisation: takes images in [0, 1], returns the model's logits."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def for_dataset(cls, model: nn.Module, dataset) -> "Normalized":
        """Wrap with an :class:`fedrepro.data.ImageDataset`'s mean and std (on the model's device)."""
        wrapped = cls(model, dataset.mean, dataset.std)
        return wrapped.to(model_device(model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for an int8 model)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the block, both restored afterwards.

    With ``requires_grad`` off, autograd records no weight-gradient paths, so a backward pass
    computes (and the forward keeps activations for) the input gradient only.
    """
    frozen = [p for p in model.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        with eval_mode(model):
            yield model
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂/∂x of the summed cross-entropy (per-sample gradients are independent: sum, not mean)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al., 2014): ``clip(x + ε·sign(∇ₓ CE), 0, 1)``."""
    require_float(model)
    with attack_mode(model):
        grad = _input_gradient(model, x, y)
    return (x.detach() + eps * grad.sign()).clamp(0.0, 1.0)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = EPS, step_size: float = STEP_SIZE,
        steps: int = STEPS, random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """L∞ projected gradient descent (Madry et al., 2017), untargeted, on a whole batch at once.

    Each step: ``x' ← x + clip(x' + α·sign(∇ CE) − x, −ε, ε)``, then clip to [0, 1] (torchattacks'
    update, so the two agree to rounding). ``random_start`` begins at a uniform point of the ε-ball
    drawn from ``generator`` (the global RNG when None).
    """
    require_float(model)
    if steps < 0 or eps < 0 or step_size < 0:
        raise ValueError("eps, step_size and steps must be non-negative")
    x = x.detach()
    adv = x.clone()
    if random_start:
        noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
        adv = (adv + noise).clamp(0.0, 1.0)
    with attack_mode(model):
        for _ in range(steps):
            adv = adv + step_size * _input_gradient(model, adv, y).sign()
            adv = (x + (adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)
    return adv.detach()


def fab(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = EPS, steps: int = STEPS,
        restarts: int = 1, seed: int = 0, num_classes: int | None = None) -> torch.Tensor:
    """Fast Adaptive Boundary attack (Croce & Hein, 2019), L∞, untargeted — torchattacks' implementation.

    FAB searches the smallest perturbation that changes the prediction; an image it cannot flip
    within ε is returned unchanged. torchattacks reseeds the global RNG with ``seed`` inside the
    call; that is undone here (the caller's RNG stream is not disturbed).
    """
    require_float(model)
    import torchattacks

    home = x.device  # images may live on the CPU beside a model on the GPU (int8 twins run on the CPU)
    x, y = x.to(model_device(model)), y.to(model_device(model))
    if num_classes is None:
        with torch.no_grad(), eval_mode(model):
            num_classes = model(x[:1]).shape[1]
    attack = torchattacks.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=restarts, seed=seed,
                              multi_targeted=False, n_classes=num_classes)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), attack_mode(model):
        adv = attack(x.detach().contiguous(), y)  # torchattacks .view()s the images: channels-last fails
    return adv.detach().to(home)


@dataclass(frozen=True)
class AdversarialConfig:
    """An inference- or train-time attack: method and budget (paper 01: ε 8/255, step 2/255, 10 steps)."""

    method: str = "pgd"
    eps: float = EPS
    step_size: float = STEP_SIZE
    steps: int = STEPS
    random_start: bool = True
    fab_restarts: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown attack {self.method!r}; choose one of {METHODS}")

    def replace(self, **changes) -> "AdversarialConfig":
        return replace(self, **changes)

    @property
    def gradient_passes(self) -> int:
        """Forward+backward passes per image (FAB: steps × (classes + 1), counted here as 11 per step)."""
        return {"fgsm": 1, "pgd": self.steps, "fab": 11 * self.steps}[self.method]


def generate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AdversarialConfig = AdversarialConfig(),
             generator: torch.Generator | None = None, seed: int = 0) -> torch.Tensor:
    """Adversarial versions of the [0, 1] images ``x`` (labels ``y``) against ``model`` with ``config``."""
    if config.method == "fgsm":
        return fgsm(model, x, y, config.eps)
    if config.method == "pgd":
        return pgd(model, x, y, config.eps, config.step_size, config.steps, config.random_start, generator)
    return fab(model, x, y, config.eps, config.steps, config.fab_restarts, seed=seed)


def attack_dataset(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AdversarialConfig = AdversarialConfig(),
                   batch_size: int = 256, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """:func:`generate` over a whole set of [0, 1] images in batches, on the model's device; returns CPU images."""
    from tqdm.auto import tqdm

    from fedrepro.runtime import generator as make_generator

    device = model_device(model)
    outputs = []
    starts = range(0, len(y), batch_size)
    for i, start in enumerate(tqdm(starts, desc=f"{config.method} attack", disable=not progress)):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        g = make_generator(seed, "attack", config.method, i, device=device)
        outputs.append(generate(model, xb, yb, config, generator=g, seed=seed + i).cpu())
    return torch.cat(outputs) if outputs else x.clone()
