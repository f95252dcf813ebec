"""Notebook 00's parameters: FedAvg of paper 04's CNN (its Sec. V-A protocol), checked before a kernel starts.

The quickstart notebook stays bare (it calls the data, model and FedAvg modules itself); this dataclass
exists so that ``fedrepro run 00`` refuses a bad value in a second, naming it, like the other notebooks.
"""
from __future__ import annotations

from dataclasses import dataclass

from fedrepro.federation import BACKENDS
from fedrepro.models import MODELS
from fedrepro.results import TIERS
from fedrepro.validation import choice, device, integer, number, require, text


@dataclass(frozen=True)
class QuickstartParameters:
    """Notebook 00's parameters cell (every name but ``results_dir``); defaults are the smoke tier's."""

    tier: str = "smoke"
    seed: int = 0
    dataset: str = "cifar10"
    model_name: str = "cnn"
    num_clients: int = 10
    rounds: int = 3
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.001
    val_fraction: float = 0.1
    patience: int = 40
    samples_per_client: int | None = 500
    test_samples: int | None = 2000
    backend: str = "simulator"
    batched_clients: bool = False
    device: str = "auto"
    data_root: str | None = None

    def __post_init__(self) -> None:
        choice("tier", self.tier, TIERS)
        integer("seed", self.seed)
        text("dataset", self.dataset, "a dataset name")
        choice("model_name", self.model_name, MODELS)
        for name in ("num_clients", "rounds", "local_epochs", "batch_size", "patience"):
            integer(name, getattr(self, name), 1)
        for name in ("samples_per_client", "test_samples"):
            integer(name, getattr(self, name), 1, optional=True)
        number("lr", self.lr, 0, low_open=True)
        number("val_fraction", self.val_fraction, 0, 1, high_open=True)
        choice("backend", self.backend, BACKENDS)
        require(isinstance(self.batched_clients, bool), "batched_clients", self.batched_clients, "true or false")
        require(not (self.batched_clients and self.backend != "simulator"), "batched_clients", self.batched_clients,
                "false with backend 'flower' (only fedrepro's simulator trains clients batched)")
        device("device", self.device)
        text("data_root", self.data_root, "a folder", optional=True)
