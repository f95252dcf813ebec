"""DP-SGD in the FedAvg client step (clipping strategies, accounting across rounds, refusals, determinism)
and paper 02's protocol built on it (parameters, runs, claim checks, result keys)."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPPerLayerOptimizer
from torch import nn

from fedrepro import claims
from fedrepro.fl import ClientData, FedAvgConfig
from fedrepro.models import build_model
from fedrepro.privacy import (DPIncompatibleModelError, DPTrainer, LayerClippingDPOptimizer, adaptive_thresholds,
                              check_thresholds, clipping_layers, epsilon_for, layer_gradient_magnitudes,
                              noise_for_epsilon, sample_rate, steps_per_epoch, total_threshold, uniform_thresholds)
from fedrepro.papers import p02_clipping as clip
from fedrepro.papers.p02_clipping import ClippingParameters, PrivateRun
from fedrepro.privacy.clipping import clip_factors
from fedrepro.results import Report, paper_values
from fedrepro.runner import notebook_parameters, tier_parameters
from fedrepro.sweep import SweepSpec

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
    assert not any(torch.equal(a, b) for a, b in zip(results[0], tiny_model().parameters()))  # every tensor stepped
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
    assert not torch.equal(states[0]["conv1.weight"], tiny_model().conv1.weight)  # the round trained
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
    assert not torch.equal(model_a.conv1.weight, tiny_model().conv1.weight)  # the round trained
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


# --- paper 02's protocol (fedrepro.papers.p02_clipping): parameters, runs, claims, keys ---------------

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_clipping.ipynb"
SWEEP = Path(__file__).resolve().parents[1] / "parameters" / "sweeps" / "02_clipping_seeds.yaml"


def cell_parameters(tier: str) -> dict:
    """The notebook's parameters at ``tier``, as the notebook passes them to ClippingParameters."""
    values = notebook_parameters(NOTEBOOK) | tier_parameters(NOTEBOOK, tier)
    return {k: v for k, v in values.items() if k not in ("tier", "results_dir")}


@pytest.mark.parametrize("tier", ["smoke", "quick", "paper"])
def test_every_tier_and_sweep_point_gives_valid_parameters_written_whole(tier):
    values = cell_parameters(tier)
    params = ClippingParameters(**values)
    assert asdict(params) == values  # every name of the parameters cell is a field, each value kept as given
    written = json.loads(json.dumps(params.report_parameters()))
    assert {k: written[k] for k in values} == json.loads(json.dumps(values))
    assert written["optimizer"] == "sgd" and "public batch" in written["adaptive_magnitude"]
    spec = SweepSpec.from_yaml(SWEEP)
    points = spec.expand()
    assert len(points) == 6
    for point in points:
        ClippingParameters(**(cell_parameters(spec.tier) | point))


@pytest.mark.parametrize("changes, message", [
    (dict(rounds=0), r"rounds = 0 is invalid: expected an integer ≥ 1$"),
    (dict(rounds=True), r"rounds = True is invalid: expected an integer ≥ 1$"),
    (dict(samples_per_client=0), r"samples_per_client = 0 is invalid: expected an integer ≥ 1, or None$"),
    (dict(public_samples=0), r"public_samples = 0 is invalid: expected an integer ≥ 1$"),
    (dict(lr=-0.1), r"lr = -0.1 is invalid: expected a finite number > 0$"),
    (dict(lr=math.inf), r"lr = inf is invalid: expected a finite number > 0$"),
    (dict(momentum=1.0), r"momentum = 1.0 is invalid: expected a number in \[0, 1\)$"),
    (dict(delta=1.0), r"delta = 1.0 is invalid: expected a number in \(0, 1\)$"),
    (dict(max_grad_norm=0), r"max_grad_norm = 0 is invalid: expected a finite number > 0$"),
    (dict(accountant="moments"), r"accountant = 'moments' is invalid: choose one of rdp, prv$"),
    (dict(noise_multipliers=[]),
     r"noise_multipliers = \[\] is invalid: expected a non-empty list of finite numbers > 0"),
    (dict(noise_multipliers=[1.0, -0.5]), r"noise_multipliers\[1\] = -0.5 is invalid: expected a finite number > 0"),
    (dict(noise_multipliers=0.22), r"noise_multipliers = 0.22 is invalid: expected a non-empty list of"),
    (dict(strategies=["flat", "uniform"]),
     r"strategies\[1\] = 'uniform' is invalid: choose one of flat, per_layer_adaptive, per_layer_uniform$"),
    (dict(strategies=["flat", "flat"]), r"strategies = \['flat', 'flat'\] is invalid: each name at most once"),
    (dict(strategies="flat"), r"strategies = 'flat' is invalid: expected a non-empty list of names from flat, "),
    (dict(repeat_seeds=[1, -1]), r"repeat_seeds\[1\] = -1 is invalid: expected an integer ≥ 0$"),
    (dict(clip_only="yes"), r"clip_only = 'yes' is invalid: expected True or False$"),
    (dict(paper_layer_list=[], paper_list_noise_multipliers=[0.22]), r"paper_layer_list = \[\] is invalid: "),
    (dict(extension_clients=4), r"extension_noise_multipliers = \[\] is invalid: expected a non-empty list"),
    (dict(samples_per_client=160, extension_clients=400, extension_noise_multipliers=[2.0]),
     r"extension_clients = 400 is invalid: it leaves no image per client"),
    (dict(backend="ray"), r"backend = 'ray' is invalid: choose one of flower, simulator$"),
    (dict(model_name="nosuchnet"), r"model_name = 'nosuchnet' is invalid: choose one of .*tanhnet"),
    (dict(device="gpu"), r"device = 'gpu' is invalid: expected 'auto', 'cpu', 'cuda' or 'cuda:<index>'$"),
    (dict(data_root=3), r"data_root = 3 is invalid: expected a folder path, or None$"),
])
def test_a_bad_parameter_is_refused_naming_it_and_its_valid_range(changes, message):
    with pytest.raises(ValueError, match=message):
        ClippingParameters(**changes)


def private_run(strategy: str, sigma: float, accuracy: float, label: str = "2 clients",
                test_size: int = 2000) -> PrivateRun:
    return PrivateRun(strategy, sigma, 1.0 / sigma if sigma else math.inf, {}, 1e-5, "rdp", accuracy, accuracy, [],
                      label=label, test_size=test_size)


def sweep_of(table: dict[str, list[float]], sigmas=(2.0, 1.0, 0.22)) -> list[PrivateRun]:
    return [private_run(strategy, sigma, value) for strategy, values in table.items() for sigma, value in zip(sigmas, values)]


def seeds_at_smallest(offsets: list[float], base=(0.40, 0.38, 0.37)) -> list[PrivateRun]:
    return [private_run(strategy, 0.22, value + offset, f"seed {k}") for k, offset in enumerate(offsets, start=1)
            for strategy, value in zip(clip.PAPER_ORDER, base)]


PAPERLIKE = {"flat": [0.30, 0.35, 0.40], "per_layer_adaptive": [0.29, 0.33, 0.38], "per_layer_uniform": [0.28, 0.32, 0.37]}


def test_the_order_claim_follows_the_criterion_over_seeds_or_else_the_test_images():
    runs = sweep_of(PAPERLIKE)
    tight = clip.order_claim(runs, seeds_at_smallest([0.002, -0.002]))
    assert tight.seeds == 3 and tight.means == pytest.approx({"flat": 0.40, "per_layer_adaptive": 0.38,
                                                              "per_layer_uniform": 0.37})
    assert tight.verdict == "confirmed"  # gaps 0.02 and 0.01 against 2 se = 0.0033 over 3 seeds
    assert [(c.key, c.verdict) for c in tight.checks()] == [("claim/flat_beats_adaptive", "confirmed"),
                                                            ("claim/adaptive_beats_uniform", "confirmed")]
    assert "over 3 seeds" in tight.checks()[0].evidence
    # the same seed means, but one strategy moves by 0.03 from seed to seed: 2 se = 0.024, the gaps are inside
    loose = clip.order_claim(runs, seeds_at_smallest([0.015, -0.015]))
    assert loose.verdict == "inside the spread" and "by the claim criterion: inside the spread" in loose.text()
    # one seed: the binomial error of each run over its 2000 test images, 2 se = 0.031 for 0.40 against 0.38
    single = clip.order_claim(runs)
    assert single.seeds == 1 and single.verdict == "inside the spread"
    assert "binomial over 2000 test images" in single.checks()[0].evidence
    many = clip.order_claim([replace(r, test_size=100_000) for r in runs])
    assert many.verdict == "confirmed"
    swapped = clip.order_claim(sweep_of({**PAPERLIKE, "per_layer_uniform": [0.3, 0.3, 0.385]}),
                               seeds_at_smallest([0.001, -0.001], base=(0.40, 0.38, 0.385)))
    assert swapped.verdict == "contradicted"  # adaptive below uniform by 0.005, 2 se = 0.0016
    assert [c.verdict for c in swapped.checks()] == ["confirmed", "contradicted"]
    assert clip.order_claim(sweep_of({"flat": [0.3, 0.35, 0.4]})).verdict == "no spread"  # one strategy: no order
    verdict = clip.compare_with_paper(runs, repeats=seeds_at_smallest([0.015, -0.015]))
    assert verdict["seed_spread"] == pytest.approx(0.03) and verdict["order"] == loose.verdict
    assert verdict["text"].endswith(loose.text())


def test_kendall_tau():
    assert clip.kendall_tau([1, 2, 3], [3, 2, 1]) == -1
    assert clip.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert clip.kendall_tau([1, 2, 3], [5, 5, 5]) == 0
    assert math.isnan(clip.kendall_tau([1], [1]))


def test_accuracy_rises_as_noise_falls_only_beyond_the_spread():
    table = {"flat": [0.30, 0.35, 0.40], "per_layer_adaptive": [0.33, 0.33, 0.33], "per_layer_uniform": [0.34, 0.33, 0.35]}
    runs = sweep_of(table)
    trends = {t.strategy: t for t in clip.noise_trends(runs)}
    flat = trends["flat"]
    assert flat.verdict == "confirmed" and flat.tau == -1 and flat.comparison.difference == pytest.approx(0.10)
    assert flat.sigmas == (2.0, 0.22) and flat.accuracies == (0.30, 0.40)
    assert flat.comparison.standard_error == pytest.approx(math.sqrt((0.4 * 0.6 + 0.3 * 0.7) / 2000))
    assert trends["per_layer_adaptive"].verdict == "inside the spread" and trends["per_layer_adaptive"].tau == 0
    # +0.01 with τ < 0 counted as a rise before; against the binomial 2 se = 0.030 it is inside the spread
    assert trends["per_layer_uniform"].verdict == "inside the spread"
    assert "binomial over 2000 test images" in trends["per_layer_uniform"].check().evidence
    # seeds at the smallest σ: their mean against the largest σ's run, with their spread s = 0.03 at both ends
    repeats = [private_run(strategy, 0.22, table[strategy][-1] + offset, f"seed {k}")
               for k, offset in enumerate([0.03, -0.03], start=1) for strategy in table]
    seeded = {t.strategy: t for t in clip.noise_trends(runs, repeats)}
    assert seeded["flat"].comparison.standard_error == pytest.approx(0.03 * math.sqrt(1 / 3 + 1))
    assert seeded["flat"].verdict == "confirmed" and seeded["per_layer_uniform"].verdict == "inside the spread"
    assert "seed spread over 3 seeds at σ = 0.22" in seeded["flat"].check().evidence
    summary = clip.claims_summary(clip.order_claim(runs), list(seeded.values()))
    assert summary == {"order": "inside the spread",  # one seed: adaptive 0.33 against uniform 0.35, binomial
                       "order_steps": {"claim/flat_beats_adaptive": "confirmed",
                                       "claim/adaptive_beats_uniform": "inside the spread"},
                       "accuracy_rises_as_noise_falls": {"flat": "confirmed", "per_layer_adaptive": "inside the spread",
                                                         "per_layer_uniform": "inside the spread"}}
    assert clip.noise_trends(sweep_of(PAPERLIKE, sigmas=(0.22,))) == []  # one σ: no trend to judge


def test_the_claim_checks_are_recorded_as_claim_metrics():
    runs = sweep_of(PAPERLIKE)
    order = clip.order_claim(runs, seeds_at_smallest([0.002, -0.002]))
    checks = clip.claim_checks(order, clip.noise_trends(runs))
    report = Report("02_clipping", paper="02", tier="smoke", parameters={})
    claims.record(report, checks)
    assert report.metrics == {"claim/flat_beats_adaptive": 1.0, "claim/adaptive_beats_uniform": 1.0,
                              "claim/accuracy_rises_as_noise_falls": 1.0}
    table = claims.checks_table(checks, claim="claim (paper 02)")
    assert table.count("| confirmed |") == 5 and table.endswith(claims.CRITERION)


def test_the_result_keys_are_the_papers_and_record_results_fills_them():
    paper_keys = {key for paper, key in paper_values() if paper == "02"}
    assert paper_keys == {clip.final_key(s) for s in clip.PAPER_ORDER} | {clip.MAX_EPSILON}
    params = ClippingParameters(noise_multipliers=[2.0, 1.0, 0.22], paper_list_noise_multipliers=[0.22], clip_only=True,
                                repeat_seeds=[1, 2], extension_clients=4, extension_noise_multipliers=[2.0, 0.22])
    runs = sweep_of(PAPERLIKE)
    repeats = seeds_at_smallest([0.015, -0.015])
    list_runs = [private_run("per_layer", 0.22, 0.36, "paper's list")]
    clip_runs = [private_run(s, 0.0, 0.41, "clip only") for s in clip.PAPER_ORDER]
    baseline = private_run(clip.NON_PRIVATE, 0.0, 0.5)
    wide = [private_run(s, sigma, acc, "4 clients") for s in clip.PAPER_ORDER for sigma, acc in ((2.0, 0.2), (0.22, 0.25))]
    verdict = clip.compare_with_paper(runs, repeats=repeats)
    report = Report("02_clipping", paper="02", tier="smoke", parameters=params.report_parameters())
    order = clip.order_claim(runs, repeats)
    clip.record_results(report, params, baseline, runs, list_runs, repeats, clip_runs, verdict,
                        clip.Extension(None, baseline, wide), claims=clip.claims_summary(order, clip.noise_trends(runs)))
    expected = {"final/flat/accuracy": 0.40, "final/per_layer_adaptive/accuracy": 0.38,
                "final/per_layer_uniform/accuracy": 0.37, "sweep/max_epsilon": 1 / 0.22, "sweep/min_epsilon": 0.5,
                "baseline/accuracy": 0.5, "sweep/flat/mean_accuracy": 0.35, "sweep/per_layer_adaptive/mean_accuracy": 1 / 3,
                "sweep/per_layer_uniform/mean_accuracy": 0.32 + 0.01 / 3, "paper_list/sigma=0.22/accuracy": 0.36,
                "clip_only/flat/accuracy": 0.41, "clip_only/per_layer_adaptive/accuracy": 0.41,
                "clip_only/per_layer_uniform/accuracy": 0.41, "repeats/max_seed_spread": 0.03,
                "clients=4/flat/accuracy": 0.25, "clients=4/per_layer_adaptive/accuracy": 0.25,
                "clients=4/per_layer_uniform/accuracy": 0.25}
    assert list(report.metrics) == list(expected)
    assert report.metrics == pytest.approx(expected)
    assert [r["paper"] for r in report.rows[:3]] == [0.40, 0.38, 0.37]
    assert len(report.parameters["runs"]) == len(runs) + 1 + len(repeats) + len(clip_runs)
    assert report.parameters["order"] == "inside the spread"  # 0.02 and 0.01 apart, seeds moving by 0.03
    assert report.parameters["claims"] == {
        "order": "inside the spread", "order_steps": {"claim/flat_beats_adaptive": "inside the spread",
                                                      "claim/adaptive_beats_uniform": "inside the spread"},
        "accuracy_rises_as_noise_falls": {s: "confirmed" for s in clip.PAPER_ORDER}}
    assert clip.paper_final(report) == {"flat": 0.40, "per_layer_adaptive": 0.38, "per_layer_uniform": 0.37}


def test_the_tables_show_each_strategy_at_each_sigma():
    runs = sweep_of(PAPERLIKE)
    table = clip.sweep_table(runs).splitlines()
    assert table[0] == "| σ | ε | flat | per_layer_adaptive | per_layer_uniform |"
    assert table[2:] == ["| 2 | 0.5 | 0.300 | 0.290 | 0.280 |", "| 1 | 1 | 0.350 | 0.330 | 0.320 |",
                         "| 0.22 | 4.55 | 0.400 | 0.380 | 0.370 |"]
    costs = clip.clipping_or_noise_table(runs, [private_run("flat", 0.0, 0.41)], private_run(clip.NON_PRIVATE, 0.0, 0.5),
                                         list(clip.PAPER_ORDER)).splitlines()
    assert costs[0] == "| strategy | clip only (σ = 0) | σ = 0.22 (ε = 4.55) | σ = 2 (ε = 0.5) |"
    assert costs[2:] == ["| non-private | 0.500 | | |", "| flat | 0.410 | 0.400 | 0.300 |",
                         "| adaptive | — | 0.380 | 0.290 |", "| uniform | — | 0.370 | 0.280 |"]
    params = ClippingParameters(noise_multipliers=[2.0, 0.22], batch_size=64, rounds=5)
    budget = clip.budget_text(params, 1200).splitlines()
    assert budget[0].startswith("client: n = 1200, B = 64: q = 0.05263, 19 steps per round, 95 in 5 rounds (RDP")
    eps = epsilon_for(0.22, sample_rate(1200, 64), 95, 1e-5)
    assert budget[3].split()[:2] == ["0.22", f"{eps:.4g}"] and len(budget) == 2 + 2 + 3


def toy_federation(seed: int = 3):
    from fedrepro.data import ClientSplit, FederatedData, ImageDataset

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (80, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (80,), generator=g)
    train = ImageDataset("toy", "train", images[:64], labels[:64], [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3)
    test = ImageDataset("toy", "test", images[64:], labels[64:], train.classes, train.mean, train.std)
    splits = [ClientSplit(torch.arange(0, 32), torch.arange(0)), ClientSplit(torch.arange(32, 64), torch.arange(0))]
    return FederatedData(train, test, splits), test.tensors()


def test_the_protocol_runs_what_the_notebook_ran_before_it_was_moved():
    data, public = toy_federation()
    params = ClippingParameters(dataset="toy", rounds=1, batch_size=16, noise_multipliers=[1.0],
                                strategies=["flat", "per_layer_adaptive"], repeat_seeds=[1])
    protocol = clip.Protocol(params, data, data.test, public)
    runs = protocol.sweep()
    config = FedAvgConfig(rounds=1, local_epochs=1, batch_size=16, optimizer="sgd", lr=0.01, momentum=0.9, seed=0)
    direct = clip.noise_sweep(lambda: build_model("tanhnet", image_size=32), data.train, data.test, data.splits, config,
                              ["flat", "per_layer_adaptive"], [1.0], max_grad_norm=2.0, delta=1e-5, public_data=public,
                              progress=False)
    for ours, theirs in zip(runs, direct, strict=True):
        assert (ours.strategy, ours.epsilon, ours.final_accuracy, ours.thresholds) == \
               (theirs.strategy, theirs.epsilon, theirs.final_accuracy, theirs.thresholds)
        assert all(torch.equal(a, b) for a, b in zip(ours.model.state_dict().values(), theirs.model.state_dict().values()))
    assert not torch.equal(runs[0].model.conv1.weight, protocol.initial_model().conv1.weight)  # the run trained
    repeats = protocol.repeats()
    assert [(r.strategy, r.noise_multiplier, r.label) for r in repeats] == [("flat", 1.0, "seed 1"),
                                                                          ("per_layer_adaptive", 1.0, "seed 1")]
    assert not torch.equal(repeats[0].model.conv1.weight, runs[0].model.conv1.weight)  # another seed, another run
    assert protocol.paper_list() == [] and protocol.clip_only() == [] and protocol.extension() is None
