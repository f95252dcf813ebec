"""Adversarial examples, threat settings and adversarial data in the client step (paper 01)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedrepro.data import ImageDataset, federated_split
from fedrepro.fl import FedAvgConfig, StandardTrainer, run_fedavg
from fedrepro.quantization import QuantizedModelError, quantize_int8
from fedrepro.robustness import (EPS, STEP_SIZE, AdversarialBatches, AdversarialTrainer, AdversarialConfig, Normalized,
                                 accuracy, attack_images, fab, fgsm, generate, pgd, transfer, white_box)

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def tiny_model(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, classes))


def images(n: int = 32, seed: int = 0, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """[0, 1] images (a quarter of the pixels saturated at 0 or 1, to exercise clipping) and labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    mask = torch.rand(n, 3, 8, 8, generator=g)
    x = torch.where(mask < 0.125, torch.zeros_like(x), torch.where(mask > 0.875, torch.ones_like(x), x))
    return x, torch.randint(0, classes, (n,), generator=g)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_net() -> Normalized:
    """A tiny classifier trained in a second on faintly coloured noise: accurate, and ε = 8/255 can flip it."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (384,), generator=g)
    colours = 0.5 + 0.04 * torch.tensor([[1.0, 1, -1], [-1, 1, 1], [1, -1, 1], [-1, -1, -1]])
    x = (colours[y].view(-1, 3, 1, 1) + 0.1 * torch.randn(384, 3, 8, 8, generator=g)).clamp(0, 1)
    net = Normalized(tiny_model(), MEAN, STD)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(5):
        for start in range(0, 384, 64):
            optimizer.zero_grad()
            F.cross_entropy(net(x[start:start + 64]), y[start:start + 64]).backward()
            optimizer.step()
    net.eval()
    net.data = (x, y)
    return net


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_the_eps_ball_and_the_image_box(random_start):
    net = Normalized(tiny_model(), MEAN, STD)
    x, y = images()
    adv = pgd(net, x, y, eps=EPS, step_size=STEP_SIZE, steps=10, random_start=random_start,
              generator=torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and not adv.requires_grad
    assert (adv - x).abs().max().item() <= EPS + 1e-6
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    assert (adv - x).abs().max().item() > EPS / 2  # it moved


def test_fgsm_equals_one_pgd_step_of_size_eps_without_random_start():
    net = Normalized(tiny_model(), MEAN, STD)
    x, y = images()
    one_step = pgd(net, x, y, eps=EPS, step_size=EPS, steps=1, random_start=False)
    assert torch.allclose(fgsm(net, x, y, EPS), one_step, atol=1e-6)
    assert torch.equal(generate(net, x, y, AdversarialConfig("fgsm")), fgsm(net, x, y))


def test_pgd_matches_torchattacks_on_a_fixed_batch(trained_net):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = trained_net.data[0][:64], trained_net.data[1][:64]
    ours = pgd(trained_net, x, y, random_start=False)
    theirs = torchattacks.PGD(trained_net, eps=EPS, alpha=STEP_SIZE, steps=10, random_start=False)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_fab_cross_check_on_a_fixed_batch(trained_net):
    x, y = trained_net.data[0][:48], trained_net.data[1][:48]
    state = torch.get_rng_state()
    adv = fab(trained_net, x, y, eps=EPS, steps=10)
    assert torch.equal(torch.get_rng_state(), state)  # torchattacks reseeds; we restore the caller's RNG
    assert (adv - x).abs().max().item() <= EPS + 1e-5 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean_pred, adv_pred = trained_net(x).argmax(1), trained_net(adv).argmax(1)
    changed = (adv - x).abs().flatten(1).amax(1) > 0
    # FAB moves only images it flips: some are moved, every moved one was right and is now wrong
    assert changed.any() and (adv_pred[changed] != y[changed]).all() and (clean_pred[changed] == y[changed]).all()
    fab_accuracy = (adv_pred == y).float().mean().item()
    pgd_accuracy = accuracy(trained_net, pgd(trained_net, x, y, random_start=False), y)
    assert fab_accuracy < (clean_pred == y).float().mean().item()
    assert abs(fab_accuracy - pgd_accuracy) <= 0.25  # two strong L∞ attacks at the same ε roughly agree


def test_fab_takes_channels_last_images_as_fedavg_clients_hold_them(trained_net):
    x, y = trained_net.data[0][:16], trained_net.data[1][:16]
    adv = fab(trained_net, x.to(memory_format=torch.channels_last), y, eps=EPS, steps=3)
    assert torch.equal(adv, fab(trained_net, x, y, eps=EPS, steps=3)) and not torch.equal(adv, x)


def test_attacks_leave_parameter_gradients_and_mode_alone():
    net = Normalized(tiny_model(), MEAN, STD).train()
    x, y = images(8)
    pgd(net, x, y, steps=2)
    assert all(p.grad is None and p.requires_grad for p in net.parameters()) and net.training


def test_white_box_collapses_accuracy(trained_net):
    x, y = trained_net.data
    result = white_box(trained_net, x[:128], y[:128], AdversarialConfig("pgd"))
    assert result.clean_accuracy > 0.85
    assert result.adversarial_accuracy < result.clean_accuracy - 0.5
    # the per-image results a paired claim check pairs average to the accuracies
    assert result.clean_correct.dtype == torch.bool and result.clean_correct.shape == (128,)
    assert result.clean_correct.float().mean().item() == pytest.approx(result.clean_accuracy)
    assert result.adversarial_correct.float().mean().item() == pytest.approx(result.adversarial_accuracy)


class GradSpy(nn.Module):
    """Passes through to ``model`` and records whether autograd could reach it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls, self.grad_calls = model, 0, 0

    def forward(self, x):
        self.calls += 1
        self.grad_calls += int(torch.is_grad_enabled() or x.requires_grad)
        return self.model(x)


def test_transfer_never_differentiates_the_int8_model(trained_net):
    x, y = trained_net.data[0][:64], trained_net.data[1][:64]
    int8 = Normalized(quantize_int8(trained_net.model, (x - trained_net.mean) / trained_net.std), MEAN, STD)
    spy = GradSpy(int8)
    result = transfer({"fp32": trained_net}, {"fp32": trained_net, "int8": spy}, x, y,
                      AdversarialConfig("pgd", steps=3))
    assert spy.calls > 0 and spy.grad_calls == 0
    assert set(result.accuracy["fp32"]) == {"fp32", "int8"}
    assert result.accuracy["fp32"]["fp32"] < result.clean["fp32"]
    assert result.accuracy_loss("fp32", "int8") == pytest.approx(result.clean["int8"] - result.accuracy["fp32"]["int8"])
    for target, hits in result.correct["fp32"].items():
        assert hits.shape == (64,) and hits.float().mean().item() == pytest.approx(result.accuracy["fp32"][target])
    with pytest.raises(QuantizedModelError):
        transfer({"int8": int8}, {"fp32": trained_net}, x, y)
    for attack in (fgsm, pgd, fab):
        with pytest.raises(QuantizedModelError):
            attack(int8, x, y)


def test_attack_images_are_a_random_subset_in_unit_range():
    labels = torch.arange(40) // 10  # stored sorted by class, like the class-folder datasets
    dataset = ImageDataset("toy", "test", torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8), labels,
                           list("abcd"), MEAN, STD)
    x, y = attack_images(dataset, 12, seed=0)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and len(set(y.tolist())) > 1
    assert torch.equal(attack_images(dataset, 12, seed=0)[1], y)
    assert not torch.equal(attack_images(dataset, 12, seed=1)[0], x)


# --- adversarial data in the client step ---------------------------------------------------------

def test_adversarial_share_is_exact_over_a_client_round():
    model = tiny_model()
    batches = AdversarialBatches(0.3, AdversarialConfig("fgsm"), MEAN, STD)
    batches.bind(model)
    x, y = images(64)
    xn = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    counts = []
    for size in (64, 64, 64, 17):
        before = batches.replaced
        out_x, out_y = batches(xn[:size], y[:size])
        counts.append(batches.replaced - before)
        assert out_x.shape == xn[:size].shape and torch.equal(out_y, y[:size])  # "true" labels kept
        assert torch.equal(out_x[counts[-1]:], xn[counts[-1]:size])  # the rest untouched
        assert (out_x[:counts[-1]] != xn[:counts[-1]]).flatten(1).any(1).all()  # the chosen ones attacked
    assert sum(counts) == math.floor(0.3 * 209) and batches.metrics()["adversarial_share"] == pytest.approx(62 / 209)
    batches.bind(model)  # a new client round starts from zero
    assert batches.count(10) == 3 and batches.seen == 0


def test_train_time_attacker_labels_by_the_models_own_predictions():
    model = tiny_model()
    attacker = AdversarialBatches(0.5, AdversarialConfig("pgd", steps=3), MEAN, STD, labels="predicted")
    attacker.bind(model)
    x, y = images(16, seed=3)
    xn = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    out_x, out_y = attacker(xn, y)
    with torch.no_grad():
        predicted = model(out_x[:8]).argmax(1)
    assert torch.equal(out_y[:8], predicted) and torch.equal(out_y[8:], y[8:])
    assert attacker.metrics()["flipped_labels"] == float((predicted != y[:8]).sum())
    with pytest.raises(ValueError):
        AdversarialBatches(1.5, AdversarialConfig(), MEAN, STD)


def toy_federation(n: int = 80):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (n,), generator=g)
    images_u8 = (torch.rand(n, 3, 8, 8, generator=g) * 200).to(torch.uint8)
    train = ImageDataset("toy", "train", images_u8, labels, list("abcd"), MEAN, STD)
    return train, train.subset(torch.arange(40)), federated_split(labels, 2, seed=0, val_fraction=0.0)


def test_adversarial_trainer_in_fedavg_reports_the_exact_share():
    train, test, splits = toy_federation()
    trainer = AdversarialTrainer(AdversarialBatches.for_dataset(train, 0.2, AdversarialConfig("pgd", steps=2)))
    config = FedAvgConfig(rounds=2, batch_size=16, seed=0, workers=1)
    result = run_fedavg(tiny_model(), train, test, splits, config, trainer=trainer, progress=False)
    for h in result.history:
        for client, metrics in h["clients"].items():
            n = len(splits[client].train)
            assert metrics["adversarial_samples"] == math.floor(0.2 * n)
    # a base trainer with its own batch_transform keeps it and gets the adversarial batches after it
    calls = []
    base = StandardTrainer(batch_transform=lambda x, y: (calls.append(len(y)) or (x, y)))
    run_fedavg(tiny_model(), train, test, splits, FedAvgConfig(rounds=1, batch_size=16, workers=1),
               trainer=AdversarialTrainer(AdversarialBatches.for_dataset(train, 0.5, AdversarialConfig("fgsm")), base),
               progress=False)
    assert sum(calls) == sum(len(s.train) for s in splits) and base.batch_transform is not None


def test_independent_selection_replaces_each_sample_by_its_own_coin():
    model = tiny_model()
    batches = AdversarialBatches(0.3, AdversarialConfig("fgsm"), MEAN, STD, selection="independent")
    assert batches.per_record and not AdversarialBatches(0.3, AdversarialConfig("fgsm"), MEAN, STD).per_record
    batches.bind(model, seed=0)
    x, y = images(400, seed=5)
    xn = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    out_x, out_y = batches(xn, y)
    changed = (out_x != xn).flatten(1).any(1)
    assert int(changed.sum()) == batches.replaced and torch.equal(out_y, y)
    assert 0.2 < batches.replaced / 400 < 0.4  # Binomial(400, 0.3): 120 ± 9
    assert changed[:200].any() and changed[200:].any() and not changed[:int(changed.sum())].all()  # not the first k


def test_adversarial_data_under_dp_sgd_leaves_the_privacy_budget_unchanged():
    privacy = pytest.importorskip("fedrepro.privacy")
    train, test, splits = toy_federation()
    config = FedAvgConfig(rounds=2, batch_size=16, seed=0)
    runs = {}
    for share in (0.0, 0.25):
        dp = privacy.DPTrainer(noise_multiplier=1.0, max_grad_norm=1.0)
        batches = AdversarialBatches.for_dataset(train, share, AdversarialConfig("fgsm"), labels="predicted",
                                                 selection="independent")
        trainer = AdversarialTrainer(batches, dp)
        assert not trainer.stateless
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # per-record selection: no warning about ε
            result = run_fedavg(tiny_model(), train, test, splits, config, trainer=trainer, progress=False)
        runs[share] = (dp, batches, result)
    (clean_dp, _, clean), (adv_dp, batches, adv) = runs[0.0], runs[0.25]
    assert adv_dp.client_epsilons() == clean_dp.client_epsilons() and adv_dp.epsilon() > 0
    assert [c.steps for c in adv_dp.clients.values()] == [c.steps for c in clean_dp.clients.values()]
    metrics = adv.history[-1]["clients"][1]
    assert batches.replaced == metrics["adversarial_samples"] > 0 and dp_trainer_left_alone(adv_dp)
    assert any(not torch.equal(a, b) for a, b in zip(adv.model.state_dict().values(), clean.model.state_dict().values()))
    with pytest.warns(UserWarning, match="per record"):  # exact shares couple the records of a Poisson batch
        exact = AdversarialBatches.for_dataset(train, 0.25, AdversarialConfig("fgsm"))
        run_fedavg(tiny_model(), train, test, splits, FedAvgConfig(rounds=1, batch_size=16, seed=0),
                   trainer=AdversarialTrainer(exact, privacy.DPTrainer(noise_multiplier=1.0)), progress=False)


def dp_trainer_left_alone(trainer) -> bool:
    """AdversarialTrainer restores the base trainer's own hook after each client round."""
    return trainer.batch_transform is None


def test_client_subset_keeps_validation_and_draws_from_each_clients_own_share():
    from fedrepro.data import FederatedData
    from fedrepro.papers.p01_robustness import client_subset

    train, test, splits = toy_federation()
    splits = federated_split(train.labels, 2, seed=0, val_fraction=0.25)
    data = FederatedData(train, test, splits)
    small = client_subset(data, 10, seed=0)
    assert client_subset(data, None) is data
    for full, sub in zip(data.splits, small.splits):
        assert len(sub.train) == 10 and torch.equal(sub.val, full.val)
        assert set(sub.train.tolist()) <= set(full.train.tolist())
    assert not torch.equal(small.splits[0].train, client_subset(data, 10, seed=1).splits[0].train)


def test_static_poisoning_replaces_an_exact_share_inside_the_eps_ball():
    from fedrepro.data import FederatedData
    from fedrepro.robustness import poison_dataset

    train, test, splits = toy_federation()
    splits = federated_split(train.labels, 2, seed=0, val_fraction=0.25)
    data = FederatedData(train, test, splits)
    net = Normalized(tiny_model(), MEAN, STD)
    poisoned = poison_dataset(data, net, 0.3, AdversarialConfig("pgd", steps=3), labels="predicted", seed=0)
    assert poisoned.replaced == sum(math.floor(0.3 * len(s.train)) for s in splits)
    changed = poisoned.indices
    assert set(changed.tolist()) <= set(torch.cat([s.train for s in splits]).tolist())  # never validation data
    new, old = poisoned.data.train.images.int(), train.images.int()
    assert (new[changed] - old[changed]).abs().max() <= 8 and (new[changed] != old[changed]).any()
    untouched = torch.ones(len(train), dtype=torch.bool)
    untouched[changed] = False
    assert torch.equal(new[untouched], old[untouched]) and torch.equal(poisoned.data.train.labels[untouched], train.labels[untouched])
    with torch.no_grad():
        predicted = net(poisoned.data.train.images[changed].float() / 255).argmax(1)
    assert torch.equal(poisoned.data.train.labels[changed], predicted)
    assert poisoned.flipped == int((predicted != train.labels[changed]).sum())
    assert torch.equal(train.images, old.to(torch.uint8))  # the original data is not modified


def test_fab_generated_adversarial_training_batches():
    model = tiny_model()
    batches = AdversarialBatches(0.25, AdversarialConfig("fab", steps=3), MEAN, STD)
    batches.bind(model)
    x, y = images(16, seed=5)
    xn = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    out_x, out_y = batches(xn, y)
    assert batches.replaced == 4 and torch.equal(out_y, y) and torch.equal(out_x[4:], xn[4:])
    back = out_x[:4] * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert 0 < (back - x[:4]).abs().max() <= EPS + 1e-5


# --- paper 01's protocol (fedrepro.papers.p01_robustness) -----------------------------------------

def test_parameters_default_to_the_smoke_tier_and_record_every_value_as_json():
    import dataclasses
    import json

    from fedrepro.papers.p01_robustness import RobustnessParameters

    params = RobustnessParameters(epsilons=[1.7], grid_rounds=3, size_models=["resnet9", "resnet18"])
    assert params.epsilons == (1.7,) and params.size_models == ("resnet9", "resnet18")  # lists stored as tuples
    assert params.grid_model_name == "cnn" and params.grid_rounds_used == 3 and params.rounds == 1
    assert params.grid_regimes == [1.7, 3.4, 7.0]  # transfer 7.0/1.7, adversarial 1.7, attacker 3.4
    recorded = json.loads(json.dumps(dataclasses.asdict(params)))
    assert recorded["epsilons"] == [1.7] and recorded["grid_model"] is None and len(recorded) == 37


@pytest.mark.parametrize("name, value, message", [
    ("tier", "fast", "tier = 'fast' is invalid: choose one of smoke, quick, gpu, paper"),
    ("model_name", "resnet7", "model_name = 'resnet7' is invalid: choose one of "),
    ("grid_model", "x", "grid_model = 'x' is invalid: choose None or one of "),
    ("rounds", 0, "rounds = 0 is invalid: expected an integer ≥ 1"),
    ("rounds", True, "rounds = True is invalid: expected an integer ≥ 1"),
    ("samples_per_client", 0, "samples_per_client = 0 is invalid: expected an integer ≥ 1, or None"),
    ("lr", 0.0, "lr = 0.0 is invalid: expected a number > 0"),
    ("val_fraction", 1.0, "val_fraction = 1.0 is invalid: expected a number in [0, 1)"),
    ("delta", 1.5, "delta = 1.5 is invalid: expected a number in (0, 1)"),
    ("attack_eps_255", 300, "attack_eps_255 = 300 is invalid: expected a number in [0, 255]"),
    ("attack_steps", -1, "attack_steps = -1 is invalid: expected an integer ≥ 0"),
    ("epsilons", [1.7, 0.0], "epsilons[1] = 0.0 is invalid: expected a number > 0"),
    ("epsilons", "1.7", "epsilons = '1.7' is invalid: expected a list of numbers > 0"),
    ("adv_shares", [0.2, 1.5], "adv_shares[1] = 1.5 is invalid: expected a number in (0, 1]"),
    ("poison_shares", [0.0], "poison_shares[0] = 0.0 is invalid: expected a number in (0, 1]"),
    ("attack_methods", ["fgsm"], "attack_methods = ['fgsm'] is invalid: expected a list that includes pgd"),
    ("adv_methods", ["cw"], "adv_methods[0] = 'cw' is invalid: choose one of fgsm, pgd, fab"),
    ("poison_method", "cw", "poison_method = 'cw' is invalid: choose one of fgsm, pgd, fab"),
    ("poison_mode", "live", "poison_mode = 'live' is invalid: choose one of static, online"),
    ("size_models", ["resnet7"], "size_models[0] = 'resnet7' is invalid: choose one of "),
])
def test_parameters_name_the_bad_value_and_the_valid_range(name, value, message):
    from fedrepro.papers.p01_robustness import RobustnessParameters

    with pytest.raises(ValueError) as error:
        RobustnessParameters(**{name: value})
    assert str(error.value).startswith(message)


def test_result_keys_are_those_the_paper_values_are_stored_under():
    from fedrepro.papers import p01_robustness as p01
    from fedrepro.results import paper_values

    keys = [p01.accuracy_key("cifar10", "resnet9", None), p01.accuracy_key("pneumoniamnist", "resnet18", None),
            p01.size_reduction_key("resnet9"), p01.size_reduction_key("resnet18"), p01.MAX_INT8_ACCURACY_CHANGE,
            p01.transfer_key("pneumoniamnist", "resnet18", 1.7, "normal", "dp", "pgd"),
            p01.transfer_key("pneumoniamnist", "resnet18", 1.7, "normal", "normal", "pgd"),
            p01.max_clean_loss_key("resnet18"), p01.FAB_TIME_FACTOR, p01.FAB_MAX_ACCURACY, p01.PGD_OVER_FGSM_TIME]
    assert all(("01", key) in paper_values() for key in keys)
    assert p01.accuracy_key("cifar10", "cnn", 7.0, int8=True) == "cifar10/cnn/dp7/int8/accuracy"
    assert p01.white_box_key("cifar10", "cnn", 1.7, "pgd") == "cifar10/cnn/dp1.7/white_box/pgd"
    assert p01.adversarial_training_key("cifar10", "cnn", None, "fgsm", 0.2, "robust_accuracy") == \
        "cifar10/cnn/adversarial_training/normal/fgsm/share0.2/robust_accuracy"
    assert p01.train_time_key("cifar10", "cnn", 3.4, "pgd", 0.4, "accuracy_drop") == \
        "cifar10/cnn/train_time/dp3.4/pgd/share0.4/accuracy_drop"
    assert p01.transfer_roles(1.7) == {"normal": "normal", "DP ε=1.7": "dp", "normal int8": "normal_int8",
                                       "DP ε=1.7 int8": "dp_int8"}


# --- paper 01's claim checks (fedrepro.claims' criterion) on synthetic per-image results ----------

def hits(n: int, right: int, flip_wrong: int = 0, flip_right: int = 0) -> torch.Tensor:
    """``n`` images, the first ``right`` classified right; then the first ``flip_wrong`` of those wrong and the
    first ``flip_right`` of the others right: a second model scored on the same images."""
    out = torch.arange(n) < right
    out[:flip_wrong] = False
    out[right:right + flip_right] = True
    return out


def quantized(n: int, right: int, flip_wrong: int, flip_right: int):
    from types import SimpleNamespace

    from fedrepro.quantization import QuantizationReport

    fp32, int8 = hits(n, right), hits(n, right, flip_wrong, flip_right)
    report = QuantizationReport(1000, 260, fp32.float().mean().item(), int8.float().mean().item(), fp32, int8)
    return SimpleNamespace(quantization=report)


def test_int8_keeps_accuracy_only_when_the_paired_band_lies_within_one_point():
    from fedrepro.papers import p01_robustness as p01

    checks = p01.int8_checks({"normal": quantized(2000, 900, 4, 2),  # −0.1 point ± 0.24: clearly within ±1
                              "DP ε=1.7": quantized(2000, 900, 80, 0),  # −4 points: clearly beyond
                              "DP ε=7": quantized(100, 45, 2, 1)})  # −1 point on 100 images: the band is ±3.5
    assert [c.verdict for c in checks] == ["confirmed", "contradicted", "inside the spread"]
    assert all(c.key == "claim/int8_keeps_accuracy" for c in checks)
    assert checks[0].evidence == ("fp32 45.0% → int8 44.9% on 2000 test images, change -0.05 ± 0.24 (2 se); "
                                  "room inside ±1 point: +0.95 ± 0.24 (2 se)")  # McNemar: |4 − 2| less one image
    # unpaired, the binomial band of two 45% accuracies over 2000 images is ±3.1 points: nothing could be confirmed
    from fedrepro.claims import compare_proportions, within

    assert within(compare_proportions(0.449, 2000, 0.45, 2000), 0.01).verdict == "inside the spread"


def test_white_box_collapse_and_transfer_checks_pair_the_attack_images():
    from fedrepro.papers import p01_robustness as p01
    from fedrepro.robustness import TransferResult, WhiteBoxResult

    def result(clean: int, attacked: int, n: int = 500) -> WhiteBoxResult:
        return WhiteBoxResult(clean / n, attacked / n, torch.zeros(0), hits(n, clean), hits(n, attacked))

    assert p01.white_box_check(result(225, 40)).verdict == "confirmed"  # 45% → 8%: far below half
    assert p01.white_box_check(result(225, 105)).verdict == "inside the spread"  # 21% against half of 45%
    assert p01.white_box_check(result(225, 200)).verdict == "contradicted"
    dp = "DP ε=1.7"
    correct = {g: {"normal": hits(500, 25), dp: hits(500, 150), "normal int8": hits(500, 25, 0, 50),
                   f"{dp} int8": hits(500, 150, 1, 2)} for g in ("normal", dp)}
    accuracy = {g: {t: h.float().mean().item() for t, h in per.items()} for g, per in correct.items()}
    checks = p01.transfer_checks({(1.7, "pgd"): TransferResult({}, accuracy, {}, correct)})
    verdicts = {(c.key, c.statement): c.verdict for c in checks}
    assert verdicts[("claim/int8_resists_transfer", "int8 normal more robust than fp32 to PGD from DP ε=1.7 (ε 1.7)")] \
        == "confirmed"  # 5% → 15%
    assert verdicts[("claim/int8_resists_transfer", f"int8 {dp} more robust than fp32 to PGD from normal (ε 1.7)")] \
        == "inside the spread"  # 30% → 30.2%
    (dp_check,) = [c for c in checks if c.key == "claim/dp_resists_transfer"]
    assert dp_check.holds and "DP ε=1.7 30.0% vs normal 5.0% on 500 images" in dp_check.evidence
    assert len(checks) == 4 + 1
    assert not [c for c in p01.transfer_checks({(1.7, "fgsm"): TransferResult({}, accuracy, {}, correct)})
                if c.key == "claim/dp_resists_transfer"]  # the paper's 30% vs 5% is a PGD number


def test_adversarial_training_and_train_time_checks():
    from fedrepro.papers import p01_robustness as p01

    rows = [{"regime": "normal", "method": "PGD", "share": share, "robust": (40 - lost + won) / 500,
             "robust_correct": hits(500, 40, lost, won)} for share, lost, won in ((0.0, 0, 0), (0.2, 5, 60), (0.4, 15, 20))]
    rows.append({**rows[1], "method": "FGSM"})  # only PGD training is checked
    checks = p01.adversarial_training_checks(rows)
    # 8% → 19%; 8% → 9% with 35 images changing sides
    assert [c.verdict for c in checks] == ["confirmed", "inside the spread"]
    assert "8.0% → 19.0% on 500 attack images" in checks[0].evidence

    def attacker(normal_drop: float, dp_drop: float) -> list[dict]:
        return [{"panel": "ε = 3.4", "model": model, "share": share, "accuracy": 0.45 - drop * (share > 0)}
                for model, drop in (("normal", normal_drop), ("DP ε=3.4", dp_drop)) for share in (0.0, 0.4)]

    (clear,) = p01.train_time_checks(attacker(0.10, 0.0), 2000, [3.4], [0.4])
    assert clear.verdict == "confirmed" and clear.key == "claim/dp_damps_attacker"
    # the quick tier's kind of difference: 3 points against −0.7, each drop ± 3.1 points (binomial, 2000 images)
    (small,) = p01.train_time_checks(attacker(0.03, -0.007), 2000, [3.4], [0.4])
    assert small.verdict == "inside the spread" and "on 2000 test images (binomial)" in small.evidence
    (reversed_,) = p01.train_time_checks(attacker(0.0, 0.12), 2000, [3.4], [0.4])
    assert reversed_.verdict == "contradicted"


def test_claim_checks_are_recorded_as_each_claims_share_of_settings():
    from types import SimpleNamespace

    from fedrepro import claims
    from fedrepro.papers import p01_robustness as p01
    from fedrepro.results import Report
    from fedrepro.robustness import TransferResult, WhiteBoxResult

    params = p01.RobustnessParameters(poison_epsilons=(3.4,), poison_shares=(0.4,))
    setup = SimpleNamespace(params=params, data=SimpleNamespace(test=range(2000)))
    models = {"normal": quantized(2000, 900, 4, 2), "DP ε=1.7": quantized(2000, 900, 80, 0)}
    white = {("normal", "pgd"): WhiteBoxResult(0.45, 0.08, torch.zeros(0), hits(500, 225), hits(500, 40))}
    same = {g: {t: hits(500, 100) for t in ("normal", "DP ε=7", "normal int8", "DP ε=7 int8")}
            for g in ("normal", "DP ε=7")}
    transfers = {(7.0, "pgd"): TransferResult({}, {g: {t: 0.2 for t in per} for g, per in same.items()}, {}, same)}
    rows = [{"regime": "normal", "method": "PGD", "share": s, "robust": 0.08, "robust_correct": hits(500, 40)}
            for s in (0.0, 0.2)]
    attacker = [{"panel": "ε = 3.4", "model": m, "share": s, "accuracy": a} for m, s, a in
                (("normal", 0.0, 0.45), ("normal", 0.4, 0.30), ("DP ε=3.4", 0.0, 0.30), ("DP ε=3.4", 0.4, 0.30))]
    checks = p01.claim_checks(setup, models, white, transfers, rows, attacker)
    report = Report("01_robustness", paper="01", tier="smoke", parameters={})
    assert claims.record(report, checks) is checks
    assert report.metrics == {"claim/int8_keeps_accuracy": 0.5, "claim/white_box_collapses": 1.0,
                              "claim/int8_resists_transfer": 0.0, "claim/dp_resists_transfer": 0.0,
                              "claim/adversarial_training_helps": 0.0, "claim/dp_damps_attacker": 1.0}
    table = claims.checks_table(checks, claim="claim (paper 01)")
    assert table.startswith("| claim (paper 01) | verdict | evidence |") and table.endswith(claims.CRITERION)
    assert table.count("**inside the spread**") == 4 + 1 + 1  # identical transfer results, unchanged training
    assert all(line.count("|") == 4 for line in table.splitlines()[:-2])  # no evidence breaks the table's columns
