"""Paper 01's experiment grid in a few calls: train (normal / DP / with adversarial data), quantize, attack.

The notebook loops over settings; what each setting does lives here so tests can reach it.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedrepro.fl import FedAvgConfig, FedAvgResult, run_fedavg
from fedrepro.models import build_model
from fedrepro.runtime import get_device
from fedrepro.robustness.attacks import AttackConfig, Normalized
from fedrepro.robustness.threat import WhiteBoxResult, white_box
from fedrepro.robustness.training import AdversarialBatches, AdversarialTrainer


@dataclass
class TrainedModel:
    """One trained global model and how it was obtained."""

    label: str
    model: nn.Module
    result: FedAvgResult
    epsilon: float | None = None  # the target ε (None: non-private)
    spent_epsilon: float | None = None  # what the accountant reports after training
    noise_multiplier: float | None = None
    adversarial: dict[str, Any] = field(default_factory=dict)  # method, share, labels
    seconds: float = 0.0
    quantization: Any = None  # a fedrepro.quantization.QuantizationReport once quantized

    @property
    def accuracy(self) -> float:
        return self.result.final_accuracy

    def net(self, dataset) -> Normalized:
        """The model behind the dataset normalisation (takes [0, 1] images), for attacks."""
        return Normalized.for_dataset(self.model, dataset)


def client_subset(data, samples: int | None, seed: int = 0):
    """``data`` with each client training on a seeded ``samples`` of its own training images.

    Validation splits and the test set are kept, so public calibration images drawn from the
    validation splits stay disjoint from every client's training data. ``None`` returns ``data``.
    """
    from fedrepro.data import ClientSplit
    from fedrepro.runtime import generator

    if samples is None:
        return data
    splits = []
    for client, split in enumerate(data.splits):
        order = torch.randperm(len(split.train), generator=generator(seed, "client-subset", client))
        splits.append(ClientSplit(split.train[order[:samples]].sort().values, split.val))
    return dataclasses.replace(data, splits=splits)


@functools.lru_cache(maxsize=64)
def noise_multiplier(epsilon: float, delta: float, num_samples: int, batch_size: int, epochs: int) -> float:
    """σ for ``epochs`` local epochs in total over a run (``fedrepro.privacy``'s RDP search), cached."""
    from fedrepro.privacy import noise_for_epsilon, sample_rate, steps_per_epoch

    return noise_for_epsilon(epsilon, delta, sample_rate(num_samples, batch_size),
                             epochs * steps_per_epoch(num_samples, batch_size))


def dp_trainer(epsilon: float, delta: float, max_grad_norm: float, data=None, config: FedAvgConfig | None = None):
    """fedrepro.privacy's DP-SGD client step (flat clipping) for a target ε.

    With ``data`` and ``config`` and equally sized clients, σ is found once (and cached across the
    notebook's many trainings) and passed as ``noise_multiplier`` — the same σ the trainer's own
    per-client search (``target_epsilon``) would find, without repeating it for every client.
    """
    from fedrepro.privacy import DPTrainer

    sizes = {len(split.train) for split in data.splits} if data is not None else set()
    if config is not None and len(sizes) == 1:
        sigma = noise_multiplier(float(epsilon), float(delta), sizes.pop(), config.batch_size,
                                 config.rounds * config.local_epochs)
        return DPTrainer(clipping="flat", max_grad_norm=max_grad_norm, noise_multiplier=sigma, delta=delta)
    return DPTrainer(clipping="flat", max_grad_norm=max_grad_norm, target_epsilon=epsilon, delta=delta)


def train_federated(model_name: str, data, config: FedAvgConfig, *, label: str | None = None,
                    epsilon: float | None = None, delta: float = 1e-5, max_grad_norm: float = 1.0,
                    adversarial_share: float = 0.0, attack: AttackConfig | None = None, labels: str = "true",
                    progress: bool = False) -> TrainedModel:
    """FedAvg of a fresh ``model_name`` (initialised from ``config.seed``), optionally with DP-SGD at
    target ``epsilon`` and/or ``adversarial_share`` of adversarial data (``labels="true"``: adversarial
    training; ``"predicted"``: the train-time attacker)."""
    torch.manual_seed(config.seed)
    model = build_model(model_name, in_channels=data.train.channels, num_classes=data.train.num_classes,
                        image_size=data.train.image_size)
    base = dp_trainer(epsilon, delta, max_grad_norm, data, config) if epsilon is not None else None
    if base is not None and config.workers is None and get_device(config.device).type == "cpu":
        # DPTrainer keeps per-client accountants, so FedAvg would train it in one process; in worker
        # processes each client's accountant stays in its worker and ε comes back in the metrics.
        config = dataclasses.replace(config, workers=max(1, torch.get_num_threads()))
    trainer = base
    adversarial: dict[str, Any] = {}
    if adversarial_share > 0:
        attack = attack or AttackConfig("pgd")
        # under DP-SGD each record gets its own coin, so the transform is per record and ε holds
        selection = "exact" if epsilon is None else "independent"
        batches = AdversarialBatches.for_dataset(data.train, adversarial_share, attack, labels, selection)
        trainer = AdversarialTrainer(batches, base)
        adversarial = {"method": attack.method, "share": adversarial_share, "labels": labels, "selection": selection}
    started = time.perf_counter()
    result = run_fedavg(model, data.train, data.test, data.splits, config, trainer=trainer, progress=progress)
    seconds = time.perf_counter() - started
    spent = sigma = None
    if epsilon is not None:
        last = [m for h in result.history for m in h["clients"].values() if "epsilon" in m]
        spent = max(m["epsilon"] for m in last) if last else None
        sigma = last[-1]["noise_multiplier"] if last else None
    if label is None:
        label = "normal" if epsilon is None else f"DP ε={epsilon:g}"
        if adversarial:
            label += f" + {adversarial_share:.0%} {adversarial['method'].upper()}" + (
                " (attacker)" if labels == "predicted" else "")
    return TrainedModel(label, result.model, result, epsilon, spent, sigma, adversarial, seconds)


@dataclass
class ModelPool:
    """One architecture's normal and DP-SGD models by regime, each trained, quantized and attacked once.

    The notebook's sections ask for ``trained(ε)``, ``int8(ε)`` and ``white_box(ε, method)`` (ε None:
    the normal model) in whatever order they need them; the quick tier keeps two pools — ResNet-9
    for the headline numbers, a small CNN for the many-trainings grid.
    """

    model_name: str
    data: Any
    config: FedAvgConfig
    attack: AttackConfig
    x_attack: torch.Tensor
    y_attack: torch.Tensor
    calibration: torch.Tensor
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    models: dict[str, TrainedModel] = field(default_factory=dict)
    _int8: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    _white: dict[tuple[str, str], WhiteBoxResult] = field(default_factory=dict, repr=False)

    @staticmethod
    def label(epsilon: float | None) -> str:
        return "normal" if epsilon is None else f"DP ε={epsilon:g}"

    def trained(self, epsilon: float | None = None) -> TrainedModel:
        label = self.label(epsilon)
        if label not in self.models:
            self.models[label] = train_federated(self.model_name, self.data, self.config, epsilon=epsilon,
                                                 delta=self.delta, max_grad_norm=self.max_grad_norm)
        return self.models[label]

    def int8(self, epsilon: float | None = None) -> nn.Module:
        """The int8 version, calibrated on the public ``calibration`` images."""
        from fedrepro.quantization import quantize_int8

        label = self.label(epsilon)
        if label not in self._int8:
            self._int8[label] = quantize_int8(self.trained(epsilon).model, self.calibration)
        return self._int8[label]

    def white_box(self, epsilon: float | None, method: str) -> WhiteBoxResult:
        """``method`` on the fp32 model itself over the attack images (seeded by the run's seed)."""
        key = (self.label(epsilon), method)
        if key not in self._white:
            net = self.trained(epsilon).net(self.data.test)
            self._white[key] = white_box(net, self.x_attack, self.y_attack, self.attack.replace(method=method),
                                         seed=self.config.seed)
        return self._white[key]
