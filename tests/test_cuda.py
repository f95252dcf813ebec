"""Each engine on a CUDA GPU against the same computation on the CPU (marker ``cuda``; ``pytest -m cuda``).

Skipped where no GPU is present. ``FEDREPRO_TEST_DEVICE=cpu`` runs the same comparisons CPU against CPU,
which checks the tests themselves on a machine without a GPU.

TF32 is switched off in these tests (:func:`full_float32`): cuDNN's default runs float32 convolutions in TF32
(a 10-bit mantissa), and Adam's normalised steps and the attacks' signed steps turn that rounding into
differences of a whole step. On the first H200 run (2026-12-04, torch 2.11.0+cu130, TF32 on) the FedAvg and
the batched-IG comparisons below failed; the run was cut before pytest printed by how much, so TF32 as the
cause is our reading, not yet confirmed on a GPU. The notebooks keep torch's defaults (TF32 convolutions).

Tolerances, stated once: the devices use other summation orders, so results agree to float rounding
amplified by training, not bit for bit:
* weights after one FedAvg round or one DP-SGD step: ``rtol=1e-3, atol=1e-4`` (the same for every
  clipping mode, noise off); test accuracy within 2 points;
* an inversion attack (IG, Ignore, model update): mean SSIM over the same victims within 0.05;
* S_pri within 1e-3; ε identical (it depends only on σ, q and the step count);
* FGSM: ≥ 99% of the adversarial pixels identical; FGSM and PGD (whose random start comes from the
  device's own generator): accuracy under attack within 5 points.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch

from fedrepro.attacks import LocalTraining, ServerView, client_update, layers_before, run_attack
from fedrepro.data import federated_split
from fedrepro.defenses.spec import Defense
from fedrepro.defenses.variational import decoder_name
from fedrepro.fl import ClientData, FedAvgConfig, run_fedavg
from fedrepro.metrics import ssim
from fedrepro.models import build_model

DEVICE = os.environ.get("FEDREPRO_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="no CUDA GPU here: these tests compare each engine on CUDA with the CPU "
                              "(FEDREPRO_TEST_DEVICE=cpu runs them CPU against CPU)"),
]


@pytest.fixture(autouse=True)
def full_float32():
    """Full float32 on the GPU for the test's duration (TF32 off for cuDNN and matrix products)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def cifar(cifar10):
    return cifar10


def victims(data, count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.linspace(0, len(data) - 1, count).long()  # the cache is sorted by class: distinct labels
    return data.normalize(data.images[index]), data.labels[index]


def attack_ssim(data, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str,
                preset: str = "ig", local: LocalTraining | None = None, **overrides) -> float:
    """Mean SSIM of ``preset`` over the victims, the attack on ``device``.

    The victims' update is computed on the CPU with a fixed seed (a bottleneck samples noise from the
    device's own generator), so both devices attack the very same update.
    """
    torch.manual_seed(0)
    update = client_update(model, images, labels, local=local)
    model = copy.deepcopy(model).to(device)
    update = {name: value.to(device) for name, value in update.items()}
    view = ServerView(model, update, num_images=1, image_shape=tuple(images.shape[1:]), mean=data.mean,
                      std=data.std, labels=labels[:, None].to(device),
                      **({"kind": "update", "local": local} if local else {}))
    result = run_attack(view, preset, seed=0, progress=False, **overrides)
    return float(ssim(data.denormalize(images), result.denormalized().cpu()).mean())


def test_fedavg_round_on_the_device_matches_the_cpu(cifar):
    train = cifar.subset(torch.arange(0, len(cifar), 50))  # 1,000 images, every class
    splits = federated_split(train.labels, 4, seed=0, val_fraction=0.1)
    results = {}
    for device in ("cpu", DEVICE):
        torch.manual_seed(0)
        config = FedAvgConfig(rounds=1, batch_size=32, lr=1e-3, seed=0, device=device, workers=1)
        results[device] = run_fedavg(build_model("cnn"), train, train, splits, config, progress=False)
    cpu, dev = results["cpu"], results[DEVICE]
    assert abs(cpu.final_accuracy - dev.final_accuracy) <= 0.02
    for a, b in zip(cpu.model.state_dict().values(), dev.model.state_dict().values()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-4)


def test_batched_clients_on_the_device_match_the_sequential_cpu_simulator(cifar):
    """fedrepro.batched_clients on the GPU against the sequential simulator on the CPU, one round."""
    train = cifar.subset(torch.arange(0, len(cifar), 50))
    splits = federated_split(train.labels, 4, seed=0, val_fraction=0.1)
    results = {}
    for device, batched in (("cpu", False), (DEVICE, True)):
        torch.manual_seed(0)
        config = FedAvgConfig(rounds=1, batch_size=32, lr=1e-3, seed=0, device=device, workers=1,
                              batched_clients=batched)
        results[device] = run_fedavg(build_model("cnn"), train, train, splits, config, progress=False)
    cpu, dev = results["cpu"], results[DEVICE]
    assert abs(cpu.final_accuracy - dev.final_accuracy) <= 0.02
    for a, b in zip(cpu.model.state_dict().values(), dev.model.state_dict().values()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-4)


def test_batched_ig_with_restarts_and_early_stopping_matches_the_cpu(cifar):
    images, labels = victims(cifar)
    torch.manual_seed(0)
    model = build_model("cnn")
    options = dict(max_iterations=200, restarts=2, stop_patience=50)
    cpu = attack_ssim(cifar, model, images, labels, "cpu", **options)
    dev = attack_ssim(cifar, model, images, labels, DEVICE, **options)
    assert cpu > 0.2  # the attack works at all at this budget
    assert abs(cpu - dev) <= 0.05


@pytest.mark.parametrize("spec", ["precode:P3", "cvb"])
def test_the_ignore_attack_on_a_bottleneck_matches_the_cpu(cifar, spec):
    images, labels = victims(cifar)
    torch.manual_seed(0)
    model = Defense.parse(spec).apply(build_model("cnn"), (3, 32, 32))
    layers = layers_before(model, decoder_name(model))
    scores = [attack_ssim(cifar, model, images, labels, device, "ig_cvb", max_iterations=150, layers=layers)
              for device in ("cpu", DEVICE)]
    assert abs(scores[0] - scores[1]) <= 0.05


def test_the_model_update_attack_matches_the_cpu(cifar):
    images, labels = victims(cifar)
    torch.manual_seed(0)
    model = build_model("cnn")
    local = LocalTraining(steps=3, lr=0.01)
    cpu_update = client_update(model, images, labels, local=local)
    device_update = client_update(copy.deepcopy(model).to(DEVICE), images.to(DEVICE), labels.to(DEVICE), local=local)
    for name, value in cpu_update.items():
        torch.testing.assert_close(device_update[name].cpu(), value, rtol=1e-3, atol=1e-5)
    scores = [attack_ssim(cifar, model, images, labels, device, "ig_multistep", local=local, max_iterations=100)
              for device in ("cpu", DEVICE)]
    assert abs(scores[0] - scores[1]) <= 0.05


@pytest.mark.parametrize("engine", ["ghost", "opacus"])
@pytest.mark.parametrize("clipping", ["flat", "per_layer_uniform", "per_layer_adaptive", "per_layer"])
def test_dp_sgd_step_without_noise_matches_the_cpu_and_epsilon_is_identical(clipping, engine):
    from fedrepro.privacy import DPTrainer

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(48, 3, 16, 16, generator=g), torch.randint(0, 10, (48,), generator=g)
    options: dict = {"max_grad_norm": 0.5}  # small: most samples are clipped
    if clipping == "per_layer":
        options["thresholds"] = [0.5, 0.4, 0.3, 0.2, 0.1]
    if clipping == "per_layer_adaptive":
        options["public_data"] = (x[:16], y[:16])
    models, epsilons = {}, {}
    for device in ("cpu", DEVICE):
        torch.manual_seed(0)
        model = build_model("tanhnet", image_size=16).to(device)
        config = FedAvgConfig(rounds=1, optimizer="sgd", lr=0.1, batch_size=16, seed=0, device=device)
        data = ClientData(0, x.to(device), y.to(device), x[:0].to(device), y[:0].to(device))
        DPTrainer(clipping=clipping, noise_multiplier=0.0, engine=engine, **options)(model, data, config, 1)
        models[device] = model
        noisy = DPTrainer(clipping=clipping, noise_multiplier=1.0, engine=engine, **options)
        noisy(build_model("tanhnet", image_size=16).to(device), data, config, 1)
        epsilons[device] = noisy.epsilon()
    for a, b in zip(models["cpu"].parameters(), models[DEVICE].parameters()):
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=1e-3, atol=1e-4)
    assert epsilons["cpu"] == epsilons[DEVICE]


def test_privacy_score_and_accuracy_score_match_the_cpu(cifar):
    from fedrepro.search import accuracy_score, privacy_score

    index = torch.linspace(0, len(cifar) - 1, 6).long()
    images, labels = cifar.images[index], cifar.labels[index]
    torch.manual_seed(0)
    model = build_model("convnet", width=8)
    scores = {}
    for device in ("cpu", DEVICE):
        net = copy.deepcopy(model).to(device)
        s_pri = privacy_score(net, images, labels, "3-1-7", mean=cifar.mean, std=cifar.std, points=5)
        s_acc = accuracy_score(net, images, labels, "3-1-7", mean=cifar.mean, std=cifar.std)
        scores[device] = (s_pri.value, s_acc.value)
    assert scores["cpu"][0] == pytest.approx(scores[DEVICE][0], abs=1e-3)
    assert scores["cpu"][1] == pytest.approx(scores[DEVICE][1], rel=1e-2, abs=1e-3)


def test_fgsm_and_pgd_match_the_cpu(cifar):
    from fedrepro.robustness import Normalized, fgsm, pgd

    index = torch.linspace(0, len(cifar) - 1, 64).long()
    x, y = cifar.images[index].float() / 255, cifar.labels[index]
    torch.manual_seed(0)
    model = build_model("cnn").eval()
    out = {}
    for device in ("cpu", DEVICE):
        net = Normalized.for_dataset(copy.deepcopy(model).to(device), cifar)
        xd, yd = x.to(device), y.to(device)
        adversarial = [fgsm(net, xd, yd), pgd(net, xd, yd, generator=torch.Generator(device).manual_seed(0))]
        accuracy = [float((net(a).argmax(1) == yd).float().mean()) for a in adversarial]
        out[device] = ([a.cpu() for a in adversarial], accuracy)
    for a, b in zip(out["cpu"][0][:1], out[DEVICE][0][:1]):  # FGSM: one signed step, deterministic
        assert (a == b).float().mean() >= 0.99
    for a, b in zip(out["cpu"][1], out[DEVICE][1]):
        assert abs(a - b) <= 0.05


def test_int8_quantization_takes_a_model_on_the_device():
    from fedrepro.quantization import quantize_int8

    torch.manual_seed(0)
    model = build_model("cnn").eval()
    calibration = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    on_cpu = quantize_int8(model, calibration)
    from_device = quantize_int8(copy.deepcopy(model).to(DEVICE), calibration.to(DEVICE))
    assert all(p.device.type == "cpu" for p in from_device.parameters())
    assert next(model.parameters()).device.type == "cpu"  # the caller's model is not moved
    torch.testing.assert_close(from_device(calibration[:4]), on_cpu(calibration[:4]))
