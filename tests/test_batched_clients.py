"""Clients trained together (fedrepro.batched_clients) against the sequential simulator they replace."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fedrepro.attacks import DefendedStep
from fedrepro.data import ImageDataset, federated_split
from fedrepro.defenses import GaussianNoise
from fedrepro.fl import FedAvgConfig, StandardTrainer, run_fedavg
from fedrepro.models import build_model
from tests.test_fl import toy_dataset, toy_model


def images(n: int, seed: int) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageDataset("rand", "train", x, labels, [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3)


def both(model_fn, train, test, splits, **config) -> tuple:
    runs = [run_fedavg(model_fn(), train, test, splits, FedAvgConfig(**config, batched_clients=b, workers=1),
                       progress=False) for b in (False, True)]
    return runs[0], runs[1]


@pytest.mark.parametrize("config", [
    {"optimizer": "adam", "lr": 1e-2},
    {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
    {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-2, "local_epochs": 2, "client_fraction": 0.6},
])
def test_batched_clients_train_as_the_sequential_simulator(config):
    """Same batches, loss and optimiser: every weight and every client's loss agree to float32 rounding, also
    with clients of unequal size (batched in groups) and a sampled fraction of clients."""
    train, test = toy_dataset(150), toy_dataset(30, seed=1)
    splits = federated_split(train.labels, 5, seed=0, scheme="dirichlet", alpha=1.0)
    assert len({len(s.train) for s in splits}) > 1  # unequal shares: several groups
    sequential, batched = both(toy_model, train, test, splits, rounds=3, seed=2, batch_size=8, **config)
    for p, q in zip(sequential.model.parameters(), batched.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    for a, b in zip(sequential.history, batched.history):
        assert a["clients"].keys() == b["clients"].keys()
        for k in a["clients"]:
            assert a["clients"][k]["train_loss"] == pytest.approx(b["clients"][k]["train_loss"], rel=1e-4)
        assert a["test_accuracy"] == b["test_accuracy"]


def test_batched_clients_train_paper_04s_cnn_as_the_simulator():
    train, test = images(160, 0), images(40, 1)
    splits = federated_split(train.labels, 4, seed=0)
    def cnn() -> nn.Module:
        torch.manual_seed(0)
        return build_model("cnn")

    sequential, batched = both(cnn, train, test, splits, rounds=2, seed=0, batch_size=16, channels_last=False)
    for p, q in zip(sequential.model.parameters(), batched.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)


class Penalised(nn.Module):
    """A toy model with a regularisation term cached in its forward pass, as PRECODE and the CVB keep their KL."""

    def __init__(self) -> None:
        super().__init__()
        self.body = toy_model(3)
        self._penalty: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        self._penalty = 0.05 * out.pow(2).mean()
        return out

    def regularization_loss(self) -> torch.Tensor:
        return self._penalty


def test_a_regularisation_term_enters_each_clients_loss():
    train, test = toy_dataset(), toy_dataset(30, seed=1)
    splits = federated_split(train.labels, 3, seed=0)
    sequential, batched = both(Penalised, train, test, splits, rounds=2, seed=0, batch_size=10, lr=1e-2)
    for p, q in zip(sequential.model.parameters(), batched.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    plain = run_fedavg(toy_model(3), train, test, splits, FedAvgConfig(rounds=2, seed=0, batch_size=10, lr=1e-2,
                                                                        batched_clients=True), progress=False)
    assert not torch.allclose(next(plain.model.parameters()), next(batched.model.parameters()))  # the term counted


@pytest.mark.parametrize("model, trainer, message", [
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)), None, "BatchNorm"),
    (toy_model, StandardTrainer(gradient_transform=DefendedStep(GaussianNoise(0.1))), "plain StandardTrainer"),
])
def test_what_cannot_be_batched_is_refused_with_the_reason(model, trainer, message):
    train, test = toy_dataset(), toy_dataset(30, seed=1)
    splits = federated_split(train.labels, 2, seed=0)
    with pytest.raises(ValueError, match=message):
        run_fedavg(model(), train, test, splits, FedAvgConfig(rounds=1, batched_clients=True), trainer=trainer,
                   progress=False)


def test_notebook_04_batches_where_it_can_and_trains_the_rest_one_by_one(monkeypatch):
    """batched_clients in notebook 04 means "where possible": a CVB row trains batched, a DP-SGD row (a gradient
    defense on every local step) falls back to the sequential simulator instead of failing."""
    from fedrepro import batched_clients
    from fedrepro.data import FederatedData
    from fedrepro.papers.p04_training import train_model

    train = images(64, 0)
    data = FederatedData(train, images(16, 1), federated_split(train.labels, 2, seed=0))
    used = []
    monkeypatch.setattr(batched_clients.BatchedClients, "train",
                        lambda self, *a, real=batched_clients.BatchedClients.train: used.append(1) or real(self, *a))
    config = FedAvgConfig(rounds=1, batch_size=16, seed=0, workers=1, batched_clients=True)
    train_model("cnn", "cvb", data, config, progress=False)
    assert used == [1]
    run = train_model("cnn", "dp:sigma0.01", data, config, progress=False)
    assert used == [1] and run.result.history[-1]["clients"].keys() == {0, 1}
