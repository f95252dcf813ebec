"""Adversarial data in federated training: adversarial training and the train-time attacker.

Paper 01 mixes 10/20/30/40% adversarial data (FGSM, PGD or FAB generated) into collaborative
training in two roles:

* **adversarial training** (a defense): the adversarial images keep their **true** labels;
* **the train-time attacker**: the adversary controls that share of the training data and injects
  adversarial images **labelled by the model's own predictions** on them (the paper: "the
  adversarial labels … are inferred from model predictions"), i.e. mostly wrong labels.

Two ways to put them in:

* **online**, in the client step — :class:`AdversarialBatches`, a ``batch_transform(x, y)`` for a
  client's normalised batches, usable by any trainer with that hook (:class:`fedrepro.fl.StandardTrainer`,
  :class:`fedrepro.privacy.DPTrainer`); :class:`AdversarialTrainer` plugs it into such a trainer and
  binds it to the client's current local model each round. The examples are made on the current
  local weights (Madry-style adversarial training; the paper's ×8 PGD-vs-FGSM and ×20 FAB training
  times imply generation during training), through a hook-free eval-mode copy of the model, so a DP
  trainer's per-sample-gradient hooks (opacus) never see it and no weight gradient is touched.
  Which samples are replaced (``selection``):

  - ``"exact"`` (default): exactly ⌊p·n⌋ of the n samples a client trains on in a round, spread over
    the batches by cumulative rounding (batch with samples s+1 … s+b gets ⌊p(s+b)⌋ − ⌊p·s⌋); within a
    batch the first ones are taken, which are random samples since batch order is a random permutation.
  - ``"independent"``: each sample independently with probability p (the share is p in expectation).
    This is the one for DP-SGD: whether a record is replaced then depends on nothing but a coin of
    its own, so the transform acts per record and the accountant's ε still holds (see
    :mod:`fedrepro.privacy.trainer`). With ``"exact"`` the count per batch depends on the Poisson
    batch's size — i.e. on which other records were sampled — which couples records; ``DPTrainer``
    warns about it.
* **static**, before training — :func:`poison_dataset`, the paper's Figure 1 ("we first generate an
  adversarial dataset that is used over the course of collaborative training"): a seeded ⌊p·n⌋ of
  every client's images are replaced once by adversarial versions made on a model the attacker
  holds, then any trainer trains on the modified data unchanged.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import torch
from torch import nn

from fedrepro.robustness.attacks import AdversarialConfig, Normalized, generate
from fedrepro.runtime import derive_seed

LABELS = ("true", "predicted")
SELECTIONS = ("exact", "independent")


def _hook_free_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without forward/backward hooks and without parameter gradients."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                      "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            if hasattr(module, hooks):
                getattr(module, hooks).clear()
    for parameter in clone.parameters():
        parameter.requires_grad_(False)
        parameter.grad = None
    return clone.eval()


class AdversarialBatches:
    """``batch_transform``: replace a ``share`` of a client's samples per round by adversarial ones.

    ``labels="true"`` is adversarial training; ``labels="predicted"`` is paper 01's train-time
    attacker (each injected image is labelled with the model's prediction on it). ``selection``:
    ``"exact"`` (⌊share·n⌋ per client round) or ``"independent"`` (each sample with probability
    ``share``; per record, for DP-SGD). ``mean``/``std`` are the dataset's normalisation: batches arrive
    normalised, attacks run on [0, 1] images. Call :meth:`bind` with the local model before a client's
    round (``AdversarialTrainer`` does).
    """

    def __init__(self, share: float, attack: AdversarialConfig, mean: Sequence[float], std: Sequence[float],
                 labels: str = "true", selection: str = "exact") -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        if labels not in LABELS:
            raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        self.share = float(share)
        self._fraction = Fraction(share).limit_denominator(10**6)
        self.attack = attack
        self.mean, self.std = tuple(mean), tuple(std)
        self.labels = labels
        self.selection = selection
        self._model: nn.Module | None = None
        self._view: Normalized | None = None
        self._generator: torch.Generator | None = None
        self._seed = 0
        self.seen = 0
        self.replaced = 0
        self.flipped = 0  # injected samples whose label differs from the true one ("predicted" labels)

    @classmethod
    def for_dataset(cls, dataset, share: float, attack: AdversarialConfig, labels: str = "true",
                    selection: str = "exact") -> "AdversarialBatches":
        return cls(share, attack, dataset.mean, dataset.std, labels, selection)

    @property
    def per_record(self) -> bool:
        """Whether each sample's fate depends on that sample alone (what DP-SGD's ε assumes)."""
        return self.selection == "independent"

    def bind(self, model: nn.Module, seed: int = 0, round_: int = 0, client: int = 0) -> None:
        """Attack ``model``'s current weights from now on; reset the counters for a new client round."""
        self._model = model
        view_model = _hook_free_copy(model)
        device = next(iter(model.parameters())).device
        self._view = Normalized(view_model, self.mean, self.std).to(device)
        self._seed = derive_seed(seed, "adversarial-batches", round_, client)
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(self._seed)
        self.seen = self.replaced = self.flipped = 0

    def count(self, batch: int) -> int:
        """How many of the next ``batch`` samples to replace (cumulative rounding; exact over a round)."""
        before = math.floor(self._fraction * self.seen)
        return math.floor(self._fraction * (self.seen + batch)) - before

    def _chosen(self, y: torch.Tensor) -> torch.Tensor:
        """Positions in the batch to replace: the first ``count`` ones, or those whose own coin came up."""
        if self.selection == "exact":
            return torch.arange(self.count(len(y)), device=y.device)
        coins = torch.rand(len(y), generator=self._generator, device=self._generator.device)
        return torch.nonzero(coins.to(y.device) < self.share).flatten()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._view is None or self._model is None:
            raise RuntimeError("AdversarialBatches.bind(model) must be called before the client trains")
        chosen = self._chosen(y)
        self.seen += len(y)
        k = len(chosen)
        if k == 0:
            return x, y
        self._view.model.load_state_dict(self._model.state_dict())  # the current local weights
        mean, std = self._view.mean, self._view.std
        images = (x[chosen].detach() * std + mean).clamp(0.0, 1.0)
        adversarial = generate(self._view, images, y[chosen], self.attack, generator=self._generator,
                               seed=(self._seed + self.replaced) % 2**31)
        new_labels = y[chosen]
        if self.labels == "predicted":
            with torch.no_grad():
                new_labels = self._view(adversarial).argmax(1)
            self.flipped += int((new_labels != y[chosen]).sum())
        self.replaced += k
        if self.selection == "exact":  # the chosen ones are the first k
            return torch.cat([(adversarial - mean) / std, x[k:]]), torch.cat([new_labels.to(y.dtype), y[k:]])
        x, y = x.clone(), y.clone()
        x[chosen] = ((adversarial - mean) / std).to(x.dtype)
        y[chosen] = new_labels.to(y.dtype)
        return x, y

    def metrics(self) -> dict[str, float]:
        out = {"adversarial_share": self.replaced / self.seen if self.seen else 0.0,
               "adversarial_samples": float(self.replaced)}
        if self.labels == "predicted":
            out["flipped_labels"] = float(self.flipped)
        return out


@dataclass
class AdversarialTrainer:
    """A ``LocalTrainer``: ``base`` trains the client with ``transform`` added to its ``batch_transform``.

    ``base`` is any trainer with a ``batch_transform`` hook — :class:`fedrepro.fl.StandardTrainer`
    when None, or :class:`fedrepro.privacy.DPTrainer` (use ``selection="independent"`` there). The
    transform is bound to the client's local model each round and applied after the base's own
    transform, if any. Returns the base trainer's metrics plus the adversarial share of the round.
    """

    transform: AdversarialBatches
    base: object | None = None

    def __post_init__(self) -> None:
        if self.base is not None and not hasattr(self.base, "batch_transform"):
            raise TypeError(f"{type(self.base).__name__} has no batch_transform hook to put adversarial batches in")

    @property
    def stateless(self) -> bool:
        """As stateless as the base trainer (a trainer that does not say is assumed to keep state)."""
        return True if self.base is None else bool(getattr(self.base, "stateless", False))

    def __call__(self, model: nn.Module, data, config, round_: int) -> dict[str, float]:
        from fedrepro.fl import StandardTrainer

        base = self.base if self.base is not None else StandardTrainer()
        self.transform.bind(model, seed=config.seed, round_=round_, client=data.client)
        previous = base.batch_transform
        base.batch_transform = self.transform if previous is None else _Chain(previous, self.transform)
        try:
            metrics = dict(base(model, data, config, round_))
        finally:
            base.batch_transform = previous
        metrics.update(self.transform.metrics())
        return metrics


@dataclass
class _Chain:
    """``second(*first(x, y))``; per record only if both are."""

    first: object
    second: AdversarialBatches

    @property
    def per_record(self) -> bool:
        return bool(getattr(self.first, "per_record", True)) and self.second.per_record

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.second(*self.first(x, y))


@dataclass
class PoisonedData:
    """A federation whose clients' training data carry an attacker's adversarial samples."""

    data: object  # fedrepro.data.FederatedData with the modified training images and labels
    indices: torch.Tensor  # training-set indices the attacker replaced
    flipped: int  # how many of them now carry a label different from the true one

    @property
    def replaced(self) -> int:
        return len(self.indices)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    from fedrepro.robustness.attacks import eval_mode, model_device

    device = model_device(model)
    with eval_mode(model):
        return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def poison_dataset(data, generator: nn.Module, share: float, attack: AdversarialConfig, labels: str = "predicted",
                   seed: int = 0, batch_size: int = 256) -> PoisonedData:
    """Paper 01's adversarial dataset, made once before training ("static" train-time attacker).

    In every client's training split a seeded ⌊share·n⌋ of the images is replaced by adversarial
    versions made on ``generator`` (a float model taking [0, 1] images, e.g. the attacker's
    white-box model), stored as 8-bit images like any other (rounding keeps them inside the ε-ball,
    whose bounds are on the 1/255 grid), and labelled with the generator's predictions on the stored
    images (``labels="predicted"``) or kept with their true labels (``"true"``). Validation splits
    and the test set are untouched. Any trainer (plain or DP-SGD) then trains on it unchanged.
    """
    from fedrepro.data import FederatedData, ImageDataset
    from fedrepro.robustness.attacks import attack_dataset
    from fedrepro.runtime import generator as make_generator

    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    fraction = Fraction(share).limit_denominator(10**6)
    chosen = []
    for client, split in enumerate(data.splits):
        order = torch.randperm(len(split.train), generator=make_generator(seed, "poison", client))
        chosen.append(split.train[order[:math.floor(fraction * len(split.train))]])
    indices = torch.cat(chosen).sort().values if chosen else torch.zeros(0, dtype=torch.long)
    train = data.train
    images, new_labels = train.images.clone(), train.labels.clone()
    flipped = 0
    if len(indices):
        x = train.images[indices].float() / 255.0
        adversarial = attack_dataset(generator, x, train.labels[indices], attack, batch_size, seed)
        stored = (adversarial * 255.0).round().clamp(0, 255).to(torch.uint8)
        images[indices] = stored
        if labels == "predicted":
            new_labels[indices] = _predict(generator, stored.float() / 255.0, batch_size).to(new_labels.dtype)
            flipped = int((new_labels[indices] != train.labels[indices]).sum())
    poisoned = ImageDataset(train.name, train.split, images, new_labels, train.classes, train.mean, train.std)
    return PoisonedData(FederatedData(poisoned, data.test, data.splits), indices, flipped)
