"""Paper 04's defended models and their FedAvg training.

A defense's model part (PRECODE, CVB) is inserted into a freshly built base network whose weights depend
only on the seed and the model name, so every defense of a table starts from the same base network. A
defense's gradient part (DP-SGD, gradient compression) is applied to every local step
(``StandardTrainer(gradient_transform=DefendedStep(...))``): the step's gradient is the one the client
would share, so training and the victim's update see the same defense.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedrepro.attacks import DefendedStep
from fedrepro.batched_clients import unbatchable
from fedrepro.data import FederatedData
from fedrepro.defenses.spec import Defense
from fedrepro.fl import FedAvgConfig, FedAvgResult, StandardTrainer, run_fedavg
from fedrepro.models import build_model, count_parameters
from fedrepro.runtime import derive_seed


def build_defended_model(model_name: str, defense: str | Defense, in_channels: int = 3, num_classes: int = 10,
                         image_size: int = 32, seed: int = 0) -> nn.Module:
    """A fresh model with the defense's bottleneck(s); the base weights depend only on ``seed`` and the
    model name, so every defense of a table starts from the same base network."""
    defense = Defense.parse(defense)
    torch.manual_seed(derive_seed(seed, "model-init", model_name))
    model = build_model(model_name, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    return defense.apply(model, (in_channels, image_size, image_size))


def parameter_row(model_name: str, defense: str | Defense, in_channels: int = 3, num_classes: int = 10,
                  image_size: int = 32) -> dict[str, Any]:
    """Trainable parameters of the defended model and what the defense adds (absolute and % of the base)."""
    base = count_parameters(build_model(model_name, in_channels=in_channels, num_classes=num_classes,
                                        image_size=image_size))
    total = count_parameters(build_defended_model(model_name, defense, in_channels, num_classes, image_size))
    return {"defense": Defense.parse(defense).label, "parameters": total, "added": total - base,
            "percent": 100.0 * (total - base) / base}


@dataclass
class DefendedRun:
    """A FedAvg run of one (dataset, model, defense): the round-0 and the trained global model."""

    dataset: str
    model_name: str
    defense: Defense
    initial: nn.Module
    model: nn.Module
    result: FedAvgResult

    @property
    def accuracy(self) -> float:
        """Test accuracy (%) in the round with the lowest mean client validation loss."""
        return 100.0 * self.result.best_accuracy

    @property
    def rounds(self) -> int:
        return len(self.result.history)


def train_model(model_name: str, defense: str | Defense, data: FederatedData, config: FedAvgConfig,
                seed: int | None = None, progress: bool = True) -> DefendedRun:
    """FedAvg of the defended model on ``data`` (paper 04's protocol when ``config`` has its defaults)."""
    defense = Defense.parse(defense)
    seed = config.seed if seed is None else seed
    model = build_defended_model(model_name, defense, data.train.channels, data.train.num_classes,
                                 data.train.image_size, seed)
    initial = copy.deepcopy(model)
    gradient = defense.gradient_defense()
    trainer = StandardTrainer(gradient_transform=DefendedStep(gradient)) if gradient is not None else None
    if config.batched_clients and unbatchable(model, trainer):  # "where possible": DP-SGD, pruning, BatchNorm
        config = dataclasses.replace(config, batched_clients=False)
    result = run_fedavg(model, data.train, data.test, data.splits, config, trainer=trainer, progress=progress)
    return DefendedRun(data.train.name, model_name, defense, initial, result.model, result)
