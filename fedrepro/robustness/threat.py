"""Paper 01's inference-time threat settings: white-box on a float model, and transfer.

* **White-box** (WB): the adversary has the trained fp32 model and attacks it directly.
* **Transfer** ("partially WB"): adversarial examples are made on a *generator* model the
  adversary holds (the normal or the DP-trained fp32 model) and shown to *target* models deployed
  elsewhere (normal, DP, their int8 versions, adversarially trained models).

Targets are only ever run forward, under ``torch.no_grad`` on detached inputs, and a quantized
model is refused as a generator (:func:`fedrepro.quantization.require_float`): an int8 model is
never differentiated.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fedrepro.quantization import require_float
from fedrepro.robustness.attacks import AdversarialConfig, attack_dataset, eval_mode, model_device


def attack_images(dataset, count: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of ``count`` images of an :class:`~fedrepro.data.ImageDataset` in [0, 1], and labels.

    Random, not the first ``count``: class-folder datasets are stored sorted by class.
    """
    from fedrepro.runtime import generator

    index = torch.arange(len(dataset))
    if count is not None and count < len(dataset):
        index = torch.randperm(len(dataset), generator=generator(seed, "attack-images"))[:count].sort().values
    return dataset.images[index].float() / 255.0, dataset.labels[index].clone()


@torch.no_grad()
def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Per image, whether ``model``'s top-1 class is the label (bool, on the CPU), forward only, in eval mode:
    what an accuracy averages, and what a paired comparison of two models on the same images pairs."""
    device = model_device(model)
    hits = [torch.zeros(0, dtype=torch.bool)]
    with eval_mode(model):
        for start in range(0, len(y), batch_size):
            logits = model(x[start:start + batch_size].detach().to(device))
            hits.append(logits.argmax(1).cpu() == y[start:start + batch_size].cpu())
    return torch.cat(hits)


def hit_rate(hits: torch.Tensor) -> float:
    """The share of ``True`` in :func:`correct`'s result (an exact fraction); NaN without images."""
    return hits.sum().item() / len(hits) if len(hits) else float("nan")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (taking [0, 1] images) on ``x``, forward only, in eval mode."""
    return hit_rate(correct(model, x, y, batch_size))


@dataclass
class WhiteBoxResult:
    """Clean and attacked accuracy; ``*_correct`` say which attack images each got right (None when built
    from the accuracies alone)."""

    clean_accuracy: float
    adversarial_accuracy: float
    adversarial: torch.Tensor = field(repr=False)
    clean_correct: torch.Tensor | None = field(default=None, repr=False)
    adversarial_correct: torch.Tensor | None = field(default=None, repr=False)

    @property
    def accuracy_loss(self) -> float:
        return self.clean_accuracy - self.adversarial_accuracy


def white_box(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AdversarialConfig = AdversarialConfig(),
              batch_size: int = 256, seed: int = 0, progress: bool = False) -> WhiteBoxResult:
    """Attack the float ``model`` itself; clean and adversarial accuracy on the [0, 1] images ``x``."""
    require_float(model)
    adversarial = attack_dataset(model, x, y, config, batch_size, seed, progress)
    clean, attacked = correct(model, x, y), correct(model, adversarial, y)
    return WhiteBoxResult(hit_rate(clean), hit_rate(attacked), adversarial, clean, attacked)


@dataclass
class TransferResult:
    """``accuracy[generator][target]``: target accuracy on the generator's adversarial examples;
    ``correct[generator][target]``: which of them the target still classifies right."""

    clean: dict[str, float]
    accuracy: dict[str, dict[str, float]]
    adversarial: dict[str, torch.Tensor] = field(repr=False)
    correct: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    def accuracy_loss(self, generator: str, target: str) -> float:
        """Clean minus adversarial accuracy of ``target`` (paper 01's Figure 4 quantity)."""
        return self.clean[target] - self.accuracy[generator][target]

    def rows(self) -> list[dict[str, float | str]]:
        return [{"generator": g, "target": t, "clean": self.clean[t], "adversarial": a, "loss": self.clean[t] - a}
                for g, per_target in self.accuracy.items() for t, a in per_target.items()]


def transfer(generators: dict[str, nn.Module], targets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
             config: AdversarialConfig = AdversarialConfig(), batch_size: int = 256, seed: int = 0,
             adversarial: dict[str, torch.Tensor] | None = None, progress: bool = False) -> TransferResult:
    """Examples made once per (float) generator, evaluated forward-only on every target.

    ``adversarial`` may pass examples already made for some generators (e.g. by :func:`white_box`);
    they are reused, not regenerated.
    """
    made = dict(adversarial or {})
    for name, generator in generators.items():
        require_float(generator)
        if name not in made:
            made[name] = attack_dataset(generator, x, y, config, batch_size, seed, progress)
    clean = {name: accuracy(target, x, y) for name, target in targets.items()}
    hits = {g: {t: correct(target, made[g], y) for t, target in targets.items()} for g in generators}
    result = {g: {t: hit_rate(h) for t, h in per_target.items()} for g, per_target in hits.items()}
    return TransferResult(clean, result, {g: made[g] for g in generators}, hits)
