from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedrepro.data import ImageDataset, federated_split
from fedrepro.fl import FedAvgConfig, LRSchedule, aggregate, batch_order, model_loss, run_fedavg


def toy_dataset(n: int = 120, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = (torch.rand(n, 1, 4, 4, generator=g) * 120 + labels.view(-1, 1, 1, 1) * 60).to(torch.uint8)
    return ImageDataset("toy", "train", images, labels, ["a", "b", "c"], (0.5,), (0.25,))


def toy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def test_weighted_average_is_exact():
    a = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(7)}
    b = {"w": torch.tensor([4.0, 8.0]), "steps": torch.tensor(9)}
    out = aggregate([a, b], [1, 3])
    assert torch.allclose(out["w"], torch.tensor([3.25, 6.5]))
    assert out["steps"].item() == 7  # integer buffers are not averaged
    with pytest.raises(ValueError):
        aggregate([a], [1, 2])


def test_one_client_fedavg_equals_plain_local_training():
    train, test = toy_dataset(), toy_dataset(30, seed=1)
    splits = federated_split(train.labels, 1, seed=3, val_fraction=0.0)
    config = FedAvgConfig(rounds=3, optimizer="sgd", lr=0.1, batch_size=16, seed=3)
    result = run_fedavg(toy_model(), train, test, splits, config, progress=False)

    plain = toy_model()
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    x, y = train.tensors()
    x, y = x[splits[0].train], y[splits[0].train]
    for round_ in range(1, 4):
        for index in batch_order(len(y), 16, 3, round_, 0, 0):
            optimizer.zero_grad()
            F.cross_entropy(plain(x[index]), y[index]).backward()
            optimizer.step()
    for fed, ref in zip(result.model.parameters(), plain.parameters()):
        assert torch.allclose(fed, ref, atol=1e-6)


def test_fedavg_is_the_size_weighted_mean_of_client_models():
    train, test = toy_dataset(), toy_dataset(30, seed=1)
    splits = federated_split(train.labels, 3, seed=0, val_fraction=0.0)
    splits[2].train = splits[2].train[:10]  # unequal client sizes
    initial = toy_model()
    captured = {}

    def capture(round_, client, global_state, local_model):
        captured[client] = copy.deepcopy(local_model.state_dict())

    result = run_fedavg(copy.deepcopy(initial), train, test, splits, FedAvgConfig(rounds=1, seed=0),
                        hooks=(capture,), progress=False)
    sizes = [len(s.train) for s in splits]
    expected = aggregate([captured[k] for k in range(3)], sizes)
    for key, value in result.model.state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-6)
    assert not torch.allclose(expected["1.weight"], initial.state_dict()["1.weight"])


def test_same_seed_same_numbers_and_client_fraction():
    train, test = toy_dataset(), toy_dataset(30, seed=1)
    splits = federated_split(train.labels, 4, seed=0)
    config = FedAvgConfig(rounds=2, seed=5, client_fraction=0.5)
    visited = []
    hook = lambda r, k, g, m: visited.append((r, k))  # noqa: E731
    a = run_fedavg(toy_model(), train, test, splits, config, hooks=(hook,), progress=False)
    b = run_fedavg(toy_model(), train, test, splits, config, progress=False)
    assert [h["test_accuracy"] for h in a.history] == [h["test_accuracy"] for h in b.history]
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert len(visited) == 4 and {r for r, _ in visited} == {1, 2}


def test_early_stopping_on_mean_validation_loss():
    train, test = toy_dataset(), toy_dataset(30, seed=1)
    splits = federated_split(train.labels, 2, seed=0, val_fraction=0.3)
    # a learning rate this large makes the validation loss stop improving quickly
    config = FedAvgConfig(rounds=40, seed=0, optimizer="sgd", lr=50.0, patience=2)
    result = run_fedavg(toy_model(), train, test, splits, config, progress=False)
    assert result.stopped_early
    assert len(result.history) == result.best_round + 2
    best = min(h["val_loss"] for h in result.history)
    assert result.history[result.best_round - 1]["val_loss"] == best


def test_model_loss_adds_module_regularizers():
    class Bottleneck(nn.Module):
        def forward(self, x):
            return x

        def regularization_loss(self):
            return torch.tensor(0.75)

    model = nn.Sequential(nn.Flatten(), Bottleneck())
    logits, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert model_loss(model, logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item() + 0.75)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="optimizer"):
        FedAvgConfig(optimizer="lion")
    with pytest.raises(ValueError, match="client_fraction"):
        FedAvgConfig(client_fraction=0)


def _rates(spec: str, rounds: int = 6, lr: float = 0.1) -> list[float]:
    config = FedAvgConfig(rounds=rounds, lr=lr, lr_schedule=spec)
    return [config.round_lr(r) for r in range(1, rounds + 1)]


def _torch_rates(make_scheduler, epochs: int, lr: float = 0.1) -> list[float]:
    """The learning rate of each epoch under a torch scheduler stepped once per epoch."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler, rates = make_scheduler(optimizer), []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_lr_schedule_gives_each_round_its_rate_exactly():
    assert _rates("constant") == [0.1] * 6
    assert _rates("multistep:3,5:0.5") == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert _rates("multistep:9:0.5") == [0.1] * 6  # a milestone after the last round never applies
    cosine = _rates("cosine", rounds=4)
    assert cosine == [0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 4)), 0.05, 0.1 * 0.5 * (1 + math.cos(3 * math.pi / 4))]
    # round r is epoch r - 1 of torch's schedulers
    assert _rates("multistep:3,5:0.5") == pytest.approx(
        _torch_rates(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2, 4], gamma=0.5), 6), rel=1e-12)
    assert cosine == pytest.approx(
        _torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4), 4), rel=1e-12)
    assert LRSchedule.parse("multistep:75,125,176:0.1") == LRSchedule("multistep", (75, 125, 176), 0.1)


@pytest.mark.parametrize("spec, rates", [("constant", [0.1, 0.1, 0.1]), ("multistep:2,3:0.5", [0.1, 0.05, 0.025])])
def test_fedavg_trains_round_r_at_its_scheduled_rate_bit_for_bit(spec, rates):
    """One client, fresh SGD with momentum each round: FedAvg equals plain training at each round's rate
    exactly, so the constant schedule (the default) leaves every run as it was."""
    train, test = toy_dataset(), toy_dataset(30, seed=1)
    splits = federated_split(train.labels, 1, seed=3, val_fraction=0.0)
    config = FedAvgConfig(rounds=3, optimizer="sgd", lr=0.1, momentum=0.9, batch_size=16, seed=3, lr_schedule=spec,
                          workers=1)
    result = run_fedavg(toy_model(), train, test, splits, config, progress=False)

    plain = toy_model()
    x, y = train.tensors()
    x, y = x[splits[0].train], y[splits[0].train]
    for round_, lr in enumerate(rates, 1):
        optimizer = torch.optim.SGD(plain.parameters(), lr=lr, momentum=0.9)
        for index in batch_order(len(y), 16, 3, round_, 0, 0):
            optimizer.zero_grad()
            F.cross_entropy(plain(x[index]), y[index]).backward()
            optimizer.step()
    assert all(torch.equal(fed, ref) for fed, ref in zip(result.model.parameters(), plain.parameters()))


@pytest.mark.parametrize("spec, reason", [
    ("step:30:0.1", "unknown schedule 'step'; expected 'constant', 'cosine' or 'multistep:"),
    ("multistep:30", "expected 'constant', 'cosine' or 'multistep:"),
    ("multistep:5,3:0.1", "multistep needs increasing rounds ≥ 1 and a factor"),
    ("multistep:0:0.1", "multistep needs increasing rounds ≥ 1 and a factor"),
    ("multistep:30:0", "multistep's factor must be a finite number > 0, got 0"),
    ("multistep:30:nan", "multistep's factor must be a finite number > 0, got nan"),
    ("cosine:10", "cosine takes no arguments"),
    (0.1, "expected 'constant', 'cosine' or 'multistep:"),
])
def test_a_bad_lr_schedule_is_refused_naming_it_and_why(spec, reason):
    with pytest.raises(ValueError, match=f"^lr_schedule = {re.escape(repr(spec))} is invalid: {re.escape(reason)}"):
        FedAvgConfig(lr_schedule=spec)


def test_parallel_workers_match_sequential_training():
    train, test = toy_dataset(), toy_dataset(30, seed=1)
    splits = federated_split(train.labels, 4, seed=0)
    runs = [run_fedavg(toy_model(), train, test, splits, FedAvgConfig(rounds=2, seed=1, workers=w), progress=False)
            for w in (1, 2)]
    for p, q in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
    assert runs[0].history[-1]["clients"].keys() == runs[1].history[-1]["clients"].keys() == {0, 1, 2, 3}


def test_a_failing_client_in_a_worker_raises_in_the_caller():
    train, test = toy_dataset(), toy_dataset(30, seed=1)
    splits = federated_split(train.labels, 2, seed=0)

    def broken(x, y):
        raise ValueError("transform exploded")

    from fedrepro.fl import StandardTrainer
    with pytest.raises(RuntimeError, match="transform exploded"):
        run_fedavg(toy_model(), train, test, splits, FedAvgConfig(rounds=1, workers=2),
                   trainer=StandardTrainer(batch_transform=broken), progress=False)
