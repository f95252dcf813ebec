"""DP-SGD in the FedAvg client step: clipping strategies, accounting across rounds, refusals, determinism."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPPerLayerOptimizer
from torch import nn

from fedrepro.fl import ClientData, FedAvgConfig
from fedrepro.models import build_model
from fedrepro.privacy import (DPIncompatibleModelError, DPTrainer, LayerClippingDPOptimizer, adaptive_thresholds,
                              check_thresholds, clipping_layers, epsilon_for, layer_gradient_magnitudes,
                              noise_for_epsilon, sample_rate, steps_per_epoch, total_threshold, uniform_thresholds)
from fedrepro.privacy.clipping import clip_factors

PAPER_LIST = [1.2, 1.1, 1.0, 0.5, 0.3]


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("tanhnet", image_size=16)  # paper 02's net on 16×16 inputs: same layers, fast


def client_data(n: int = 48, client: int = 0, seed: int = 1) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return ClientData(client, x, y, x[:0], y[:0])


def config(**overrides) -> FedAvgConfig:
    values = dict(rounds=3, optimizer="sgd", lr=0.1, batch_size=16, seed=0)
    values.update(overrides)
    return FedAvgConfig(**values)


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    module = GradSampleModule(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook")
        F.cross_entropy(module(x), y).backward()
    grads = [p.grad_sample.clone() for p in model.parameters()]
    module._close()
    model.zero_grad(set_to_none=True)
    return grads


# --- thresholds -------------------------------------------------------------------------------

def test_tanhnet_has_the_papers_five_clipping_layers():
    layers = clipping_layers(tiny_model())
    assert [layer.name for layer in layers] == ["conv1+gn1", "conv2+gn2", "fc1", "fc2", "fc3"]
    assert [layer.lead for layer in layers] == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
    assert sorted(i for layer in layers for i in layer.indices) == list(range(14))
    assert len(clipping_layers(tiny_model(), "tensor")) == 14
    # the paper's explicit list is one value per such layer and is normalised to S = 2
    assert check_thresholds(PAPER_LIST, layers) == PAPER_LIST
    assert total_threshold(PAPER_LIST) == pytest.approx(2.0, abs=0.005)


@pytest.mark.parametrize("total", [0.5, 2.0, 3.7])
@pytest.mark.parametrize("m", [1, 2, 5, 14])
def test_uniform_thresholds_compose_to_S_exactly(total, m):
    values = uniform_thresholds(total, m)
    assert len(values) == m and len(set(values)) == 1
    assert math.sqrt(sum(v * v for v in values)) == pytest.approx(total, rel=1e-12)


def test_adaptive_thresholds_are_proportional_to_magnitudes_and_sum_to_S():
    magnitudes = [0.8, 0.5, 0.05, 0.02, 0.3]
    values = adaptive_thresholds(magnitudes, 2.0)
    ratios = [s / m for s, m in zip(values, magnitudes)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-12)
    for j in range(len(values) - 1):  # the paper's S_j = S_{j+1} · M_j / M_{j+1}
        assert values[j] == pytest.approx(values[j + 1] * magnitudes[j] / magnitudes[j + 1], rel=1e-12)
    assert math.sqrt(sum(v * v for v in values)) == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="positive"):
        adaptive_thresholds([1.0, 0.0], 2.0)


def test_adaptive_thresholds_follow_the_measured_magnitudes_on_public_data():
    model, data = tiny_model(), client_data()
    public = (data.x_train[:16], data.y_train[:16])
    trainer = DPTrainer(clipping="per_layer_adaptive", max_grad_norm=2.0, noise_multiplier=1.0, public_data=public)
    expected_m = layer_gradient_magnitudes(model, *public, clipping_layers(model))
    trainer(model, data, config(), 1)
    used = trainer.log[0]["thresholds"]
    assert used == pytest.approx(adaptive_thresholds(expected_m, 2.0), rel=1e-6)
    assert trainer.adaptive_source == "public batch (free)"
    with pytest.warns(UserWarning, match="not counted"):
        DPTrainer(clipping="adaptive", max_grad_norm=2.0, noise_multiplier=1.0)


# --- clipping ---------------------------------------------------------------------------------

def test_per_sample_per_layer_norms_are_bounded_by_their_thresholds():
    model, data = tiny_model(), client_data(12)
    layers = clipping_layers(model)
    thresholds = [0.05, 0.04, 0.03, 0.02, 0.01]  # small enough that every sample is clipped
    grads = per_sample_grads(model, data.x_train, data.y_train)
    factors = clip_factors(grads, layers, thresholds)
    for layer, factor, threshold in zip(layers, factors, thresholds):
        clipped = torch.cat([(factor.view(-1, *[1] * (grads[i].ndim - 1)) * grads[i]).flatten(1) for i in layer.indices], 1)
        norms = clipped.norm(dim=1)
        assert (norms <= threshold * (1 + 1e-5)).all()
        assert norms.max() == pytest.approx(threshold, rel=1e-4)  # clipping binds: it is not just shrinking to zero


@pytest.mark.parametrize("clipping", ["flat", "per_layer"])
def test_the_optimizer_clips_a_single_sample_to_its_threshold(clipping):
    model, data = tiny_model(), client_data(1)
    params = list(model.parameters())
    layers = clipping_layers(model) if clipping == "per_layer" else [clipping_layers(model)[0].__class__(
        "all", tuple(n for n, _ in model.named_parameters()), tuple(range(len(params))), "conv1.weight")]
    thresholds = [0.05, 0.04, 0.03, 0.02, 0.01] if clipping == "per_layer" else [0.05]
    module = GradSampleModule(model)
    optimizer = LayerClippingDPOptimizer(torch.optim.SGD(params, lr=0.0), noise_multiplier=0.0, layers=layers,
                                         thresholds=thresholds, expected_batch_size=None, loss_reduction="sum")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook")
        F.cross_entropy(module(data.x_train), data.y_train, reduction="sum").backward()
    optimizer.step()
    for layer, threshold in zip(layers, thresholds):
        norm = torch.cat([params[i].grad.flatten() for i in layer.indices]).norm()
        assert norm == pytest.approx(threshold, rel=1e-4)
    module._close()


def test_one_tensor_per_layer_is_exactly_opacus_per_layer_clipping():
    model, data = tiny_model(), client_data(10)
    layers = clipping_layers(model, "tensor")
    thresholds = [0.01 * (i + 1) for i in range(len(layers))]
    results = []
    for cls in (LayerClippingDPOptimizer, DPPerLayerOptimizer):
        model = tiny_model()
        params = list(model.parameters())
        module = GradSampleModule(model)
        extra = dict(layers=layers, thresholds=thresholds) if cls is LayerClippingDPOptimizer else dict(max_grad_norm=thresholds)
        optimizer = cls(torch.optim.SGD(params, lr=0.1), noise_multiplier=0.7, expected_batch_size=10,
                        generator=torch.Generator().manual_seed(5), **extra)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook")
            F.cross_entropy(module(data.x_train), data.y_train).backward()
        optimizer.step()
        module._close()
        results.append([p.detach().clone() for p in params])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_sigma_zero_with_a_huge_threshold_is_the_non_private_update():
    data = client_data(32)
    dp_model, plain = tiny_model(), tiny_model()
    trainer = DPTrainer(clipping="flat", max_grad_norm=1e9, noise_multiplier=0.0)
    trainer(dp_model, data, config(batch_size=32, rounds=1), 1)  # q = 1: the Poisson batch is every sample
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    F.cross_entropy(plain(data.x_train), data.y_train).backward()
    optimizer.step()
    for a, b in zip(dp_model.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert trainer.epsilon() == math.inf


def test_physical_batches_give_the_same_step_as_the_whole_poisson_batch():
    data, states = client_data(32), []
    for physical in (None, 5):
        model = tiny_model()
        DPTrainer(clipping="per_layer_uniform", max_grad_norm=1.0, noise_multiplier=0.8,
                  physical_batch_size=physical)(model, data, config(), 1)
        states.append(model.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-5, atol=1e-6)


def test_batch_transform_changes_the_poisson_batch_before_the_forward_pass():
    data = client_data(32)
    calls = []

    def shift(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(y))
        return 2 * x, (y + 1) % 10

    plain = tiny_model()
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    x, y = shift(data.x_train, data.y_train)
    F.cross_entropy(plain(x), y).backward()
    optimizer.step()
    calls.clear()
    for physical in (None, 5):  # transformed once per Poisson batch, then split into physical batches
        model = tiny_model()
        DPTrainer(clipping="flat", max_grad_norm=1e9, noise_multiplier=0.0, physical_batch_size=physical,
                  batch_transform=shift)(model, data, config(batch_size=32, rounds=1), 1)
        for a, b in zip(model.parameters(), plain.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert calls == [32, 32]


def test_channels_last_models_and_batches_get_the_same_dp_step():
    # run_fedavg makes models and client tensors channels-last on CPU; opacus's conv per-sample
    # gradients are wrong in that layout, so the trainer must train in the default one
    data = client_data(32)
    last = ClientData(0, data.x_train.contiguous(memory_format=torch.channels_last), data.y_train,
                      data.x_val, data.y_val)
    model_a = tiny_model()
    model_b = tiny_model().to(memory_format=torch.channels_last)
    for model, d in ((model_a, data), (model_b, last)):
        DPTrainer(clipping="flat", max_grad_norm=0.1, noise_multiplier=0.5)(model, d, config(), 1)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- accounting -------------------------------------------------------------------------------

def test_epsilon_composes_over_rounds_with_one_persistent_accountant():
    data, cfg = client_data(48), config(rounds=3)
    q, steps = sample_rate(48, 16), steps_per_epoch(48, 16)
    trainer = DPTrainer(clipping="flat", max_grad_norm=1.0, noise_multiplier=1.1, delta=1e-5)
    model = tiny_model()
    epsilons, accountant = [], None
    for round_ in (1, 2, 3):
        trainer(model, data, cfg, round_)
        accountant = accountant or trainer.clients[0].accountant
        assert trainer.clients[0].accountant is accountant  # never recreated
        epsilons.append(trainer.epsilon(0))
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert trainer.clients[0].steps == 3 * steps
    assert epsilons[2] == pytest.approx(epsilon_for(1.1, q, 3 * steps, 1e-5), rel=1e-12)
    assert epsilons[2] > epsilon_for(1.1, q, steps, 1e-5) * 1.2  # not the ε of a single round
    reference = RDPAccountant()  # opacus's own accountant for the same (q, σ, steps, δ)
    reference.history = [(1.1, q, 3 * steps)]
    assert epsilons[2] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
    assert epsilon_for(2.0, q, 3 * steps, 1e-5) < epsilons[2]  # more noise, less ε
    with pytest.raises(RuntimeError, match="new DPTrainer"):
        trainer(model, data, cfg, 2)


def test_sigma_from_target_epsilon_round_trip():
    q, steps = sample_rate(25_000, 256), 5 * steps_per_epoch(25_000, 256)
    for target in (0.5, 8.0):
        sigma = noise_for_epsilon(target, 1e-5, q, steps)
        assert target - 0.02 <= epsilon_for(sigma, q, steps, 1e-5) <= target
        assert epsilon_for(sigma * 0.95, q, steps, 1e-5) > target
    trainer = DPTrainer(clipping="flat", max_grad_norm=1.0, target_epsilon=4.0)
    data, cfg, model = client_data(48), config(rounds=2), tiny_model()
    for round_ in (1, 2):
        trainer(model, data, cfg, round_)
    assert 4.0 - 0.02 <= trainer.epsilon() <= 4.0
    with pytest.raises(ValueError, match="exactly one"):
        DPTrainer(noise_multiplier=1.0, target_epsilon=3.0)


# --- refusals ---------------------------------------------------------------------------------

def test_batchnorm_models_are_refused_naming_the_fix():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    with pytest.raises(DPIncompatibleModelError, match=r"BatchNorm \(1\).*ModuleValidator\.fix.*GroupNorm"):
        DPTrainer(noise_multiplier=1.0)(model, client_data(), config(), 1)
    inplace = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    with pytest.raises(DPIncompatibleModelError, match="inplace=False"):
        DPTrainer(noise_multiplier=1.0)(inplace, client_data(), config(), 1)


def test_a_per_layer_list_that_does_not_match_the_layers_is_refused():
    trainer = DPTrainer(clipping="per_layer", thresholds=[1.2, 1.1, 1.0], noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"3 value\(s\) but the model has 5 clipping layer\(s\) \(14 parameter "
                                         r"tensors\): conv1\+gn1, conv2\+gn2, fc1, fc2, fc3"):
        trainer(tiny_model(), client_data(), config(), 1)
    tensor_level = DPTrainer(clipping="per_layer", thresholds=PAPER_LIST, noise_multiplier=1.0, granularity="tensor")
    with pytest.raises(ValueError, match="14 clipping layer"):
        tensor_level(tiny_model(), client_data(), config(), 1)
    with pytest.raises(ValueError, match="unknown clipping strategy"):
        DPTrainer(clipping="perlayer", noise_multiplier=1.0)


# --- determinism ------------------------------------------------------------------------------

@pytest.mark.parametrize("clipping", ["flat", "per_layer_adaptive"])
def test_same_seed_gives_the_same_model_after_a_dp_round(clipping):
    data = client_data(32)
    public = (data.x_train[:8], data.y_train[:8])
    states = []
    for seed in (0, 0, 1):
        model = tiny_model()
        trainer = DPTrainer(clipping=clipping, max_grad_norm=1.0, noise_multiplier=1.0,
                            public_data=public if clipping == "per_layer_adaptive" else None)
        trainer(model, data, config(seed=seed), 1)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_a_sweep_reads_epsilon_from_the_history_also_with_worker_processes():
    from fedrepro.data import ClientSplit, ImageDataset
    from fedrepro.papers.p02_clipping import noise_sweep

    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (72, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (72,), generator=g)
    train = ImageDataset("toy", "train", images[:64], labels[:64], [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3)
    test = ImageDataset("toy", "test", images[64:], labels[64:], train.classes, train.mean, train.std)
    splits = [ClientSplit(torch.arange(0, 32), torch.arange(0)), ClientSplit(torch.arange(32, 64), torch.arange(0))]
    results = []
    for workers in (1, 2):
        cfg = config(rounds=2, workers=workers)
        (run,) = noise_sweep(lambda: build_model("tanhnet", image_size=16), train, test, splits, cfg, ["uniform"], [0.9],
                             max_grad_norm=1.0, progress=False)
        results.append(run)
    one, two = results
    expected = epsilon_for(0.9, sample_rate(32, 16), 2 * steps_per_epoch(32, 16), 1e-5)
    assert one.client_epsilons == pytest.approx({0: expected, 1: expected}) and one.epsilon == pytest.approx(expected)
    assert two.client_epsilons == one.client_epsilons and two.thresholds == one.thresholds
    assert one.thresholds == [uniform_thresholds(1.0, 5)] * 2
    assert two.final_accuracy == one.final_accuracy
    assert all(torch.equal(a, b) for a, b in zip(one.model.state_dict().values(), two.model.state_dict().values()))
