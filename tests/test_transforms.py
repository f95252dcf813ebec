"""Paper 05's transformation library: the 50 indices, policy strings, seeding, p, hybrids, FedAvg."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedrepro.attacks import DefendedStep
from fedrepro.augment import random_crop_flip
from fedrepro.data import ImageDataset, federated_split
from fedrepro.defenses import GaussianNoise, Pruning
from fedrepro.defenses.spec import Defense
from fedrepro.defenses.transforms import (LIBRARY, NUM_OPERATIONS, Policy, PolicyBatchTransform, pil_apply,
                                          apply_policy, format_policy, hybrid, parse_policy, policy_trainer,
                                          random_policies, search_space_size, transform_images)
from fedrepro.fl import FedAvgConfig, StandardTrainer, run_fedavg


pytestmark = pytest.mark.usefixtures("one_thread")

# The table of shared/reference/ats_transforms.md: index -> (operation, p, m, value used).
# value: enhance offset / shear / translate fraction / degrees / bits / solarize threshold; None: no magnitude.
DOCUMENTED = [
    ("invert", 0.1, 7, None), ("contrast", 0.2, 6, 0.333), ("rotate", 0.7, 2, 6.67), ("translateX", 0.3, 9, 0.453),
    ("sharpness", 0.8, 1, 0.056), ("sharpness", 0.9, 3, 0.167), ("shearY", 0.5, 2, 0.067),
    ("translateY", 0.7, 2, 0.101), ("autocontrast", 0.5, 5, None), ("equalize", 0.9, 2, None),
    ("shearY", 0.2, 5, 0.167), ("posterize", 0.3, 5, 6), ("color", 0.4, 3, 0.167), ("brightness", 0.6, 5, 0.278),
    ("sharpness", 0.3, 9, 0.5), ("brightness", 0.7, 9, 0.5), ("equalize", 0.6, 5, None), ("equalize", 0.5, 1, None),
    ("contrast", 0.6, 7, 0.389), ("sharpness", 0.6, 5, 0.278), ("color", 0.7, 5, 0.278),
    ("translateX", 0.5, 5, 0.252), ("equalize", 0.3, 7, None), ("autocontrast", 0.4, 8, None),
    ("translateY", 0.4, 3, 0.151), ("sharpness", 0.2, 6, 0.333), ("brightness", 0.9, 6, 0.333),
    ("color", 0.2, 8, 0.444), ("solarize", 0.5, 0, 256), ("invert", 0.0, 0, None), ("equalize", 0.2, 0, None),
    ("autocontrast", 0.6, 0, None), ("equalize", 0.2, 8, None), ("equalize", 0.6, 4, None), ("color", 0.9, 5, 0.278),
    ("equalize", 0.6, 5, None), ("autocontrast", 0.8, 4, None), ("solarize", 0.2, 4, 142),
    ("brightness", 0.1, 3, 0.167), ("color", 0.7, 0, 0), ("solarize", 0.4, 1, 228), ("autocontrast", 0.9, 0, None),
    ("translateY", 0.9, 3, 0.151), ("translateY", 0.7, 3, 0.151), ("autocontrast", 0.9, 1, None),
    ("solarize", 0.8, 1, 228), ("equalize", 0.8, 5, None), ("invert", 0.1, 0, None), ("translateY", 0.7, 3, 0.151),
    ("autocontrast", 0.9, 1, None),
]


def images(n: int = 12, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Noise, smooth gradients, flat and low-contrast images: the cases where rounding bites."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    ramp = torch.linspace(0, 1, size)
    smooth = (ramp[None, None, :, None] * ramp[None, None, None, :] * 255 * torch.rand(n, channels, 1, 1, generator=g)
              + torch.rand(n, channels, 1, 1, generator=g) * 40).clamp(0, 255).to(torch.uint8)
    flat = torch.full((2, channels, size, size), 77, dtype=torch.uint8)
    low = (torch.randint(0, 3, (4, channels, size, size), generator=g) + 100).to(torch.uint8)
    return torch.cat([noise, smooth, flat, low])


def test_every_index_is_the_documented_operation_and_magnitude():
    assert NUM_OPERATIONS == len(LIBRARY) == len(DOCUMENTED) == 50
    for op, (name, p, m, value) in zip(LIBRARY, DOCUMENTED):
        assert (op.name, op.probability, op.magnitude_index) == (name, p, m), op.index
        if value is None:
            assert op.magnitude is None, op.index
        elif name in ("posterize", "solarize"):
            assert round(op.magnitude) == value, op.index
        else:
            decimals = len(repr(value).split(".")[1]) if "." in repr(value) else 0
            assert round(op.magnitude, decimals) == value, op.index  # the table rounds its values
    assert LIBRARY[3].magnitude == pytest.approx(150 / 331)  # the paper's lowest-S_pri operation
    assert LIBRARY[37].magnitude == pytest.approx(256 - 4 * 256 / 9)  # float threshold, as the reference
    assert {op.name for op in LIBRARY if op.signed} == {"contrast", "translateX", "sharpness", "shearY",
                                                         "translateY", "color", "brightness"}


@pytest.mark.parametrize("channels", [3, 1])
def test_batched_operations_equal_the_reference_pil_calls(channels):
    x = images(channels=channels)
    for op in LIBRARY:
        signs = torch.where(torch.arange(len(x)) % 2 == 0, 1.0, -1.0).double()
        assert torch.equal(op(x, signs), pil_apply(op, x, signs)), op.describe()


def test_policies_run_in_order_and_match_pil_end_to_end():
    x = images(6)
    for spec in ("3-1-7", "43-18-18", "21-13-3", "7-4-15", "19-15-45", "2-43-21", "6-10-2", "3-1-7+43-18-18"):
        a = apply_policy(x, spec, torch.Generator().manual_seed(5))
        b = apply_policy(x, spec, torch.Generator().manual_seed(5), backend="pil")
        assert torch.equal(a, b), spec
    # order matters: invert then solarize(142) differs from solarize then invert
    assert not torch.equal(apply_policy(x, "0-37"), apply_policy(x, "37-0"))
    assert torch.equal(apply_policy(x, "0-37"), LIBRARY[37](LIBRARY[0](x)))


def test_policy_string_round_trip():
    for text in ("3-1-7", "43-18-18", "0", "49-49-49", "3-1-7+43-18-18", "21-13-3+7-4-15+0", "none"):
        assert str(Policy(text)) == text
        assert format_policy(parse_policy(text)) == text
    assert parse_policy("3-1-7+43-18-18") == ((3, 1, 7), (43, 18, 18))
    assert parse_policy("") == parse_policy("identity") == ((),)
    assert str(Policy([3, 1, 7])) == "3-1-7" and str(Policy([[3, 1, 7], [43, 18, 18]])) == "3-1-7+43-18-18"
    assert hybrid(["3-1-7", Policy("43-18-18")]) == "3-1-7+43-18-18"
    assert Policy("3-1-7+43-18-18").operations == {1, 3, 7, 18, 43}
    for bad in ("50", "3--1", "a-b", "-1", "3-1-7+"):
        with pytest.raises(ValueError):
            Policy(bad)


def test_identical_seeds_give_identical_images():
    x = images(8)
    for spec in ("3-1-7", "6-10-12", "3-1-7+43-18-18"):
        a = apply_policy(x, spec, torch.Generator().manual_seed(11))
        b = apply_policy(x, spec, torch.Generator().manual_seed(11))
        c = apply_policy(x, spec, torch.Generator().manual_seed(12))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)  # random signs / hybrid choices differ
    # float images in [0, 1] give the same pixels; a single image works too
    f = apply_policy(x.float() / 255, "3-1-7", torch.Generator().manual_seed(11))
    assert f.dtype == torch.float32 and torch.equal((f * 255).round().to(torch.uint8),
                                                    apply_policy(x, "3-1-7", torch.Generator().manual_seed(11)))
    assert apply_policy(x[0], "0").shape == x[0].shape


def test_probability_is_ignored_by_default_and_respected_on_request():
    x = images(40)
    assert torch.equal(apply_policy(x, "29"), 255 - x)  # invert with p = 0.0 still inverts (the reference)
    assert torch.equal(apply_policy(x, "29", respect_probability=True), x)
    applied = apply_policy(x, "0", torch.Generator().manual_seed(0), respect_probability=True)  # p = 0.1
    inverted = (applied == 255 - x).flatten(1).all(1) & (applied != x).flatten(1).any(1)
    assert 0 < int(inverted.sum()) < 0.25 * len(x)
    assert torch.equal(Policy("29", respect_probability=True)(x), x)


def test_hybrid_picks_one_policy_per_image():
    x = images(30)
    out = apply_policy(x, "0+28", torch.Generator().manual_seed(3))  # invert, or solarize(256) = identity
    inverted = (out == 255 - x).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((inverted | same).all()) and 0.25 * len(x) < int(inverted.sum()) < 0.75 * len(x)


def test_random_policies_cover_the_search_space_reproducibly():
    assert search_space_size(3) == 127_550
    first = random_policies(20, torch.Generator().manual_seed(0))
    assert random_policies(10, torch.Generator().manual_seed(0)) == first[:10]
    assert len(set(first)) == 20
    assert all(1 <= len(parse_policy(p)[0]) <= 3 for p in first)


def test_batch_transform_denormalises_transforms_and_renormalises():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    x = images(4)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    normalised = (x.float() / 255 - m) / s
    identity = PolicyBatchTransform("none", mean, std)
    out, labels = identity(normalised, torch.arange(len(x)))
    assert torch.allclose(out, normalised, atol=1e-5) and torch.equal(labels, torch.arange(len(x)))
    inverted, _ = PolicyBatchTransform("0", mean, std)(normalised, labels)
    assert torch.allclose(inverted, ((255 - x).float() / 255 - m) / s, atol=1e-5)
    crop, _ = PolicyBatchTransform("none", mean, std, crop_flip=True,
                                   generator=torch.Generator().manual_seed(0))(normalised, labels)
    assert crop.shape == normalised.shape and not torch.allclose(crop, normalised)


def test_policy_plugs_into_fedavg_clients_deterministically():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (60,), generator=g)
    data = (torch.rand(60, 3, 12, 12, generator=g) * 120 + labels.view(-1, 1, 1, 1) * 60).to(torch.uint8)
    train = ImageDataset("toy", "train", data, labels, ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3)
    splits = federated_split(labels, 2, seed=0, val_fraction=0.0)
    config = FedAvgConfig(rounds=2, optimizer="sgd", lr=0.1, batch_size=16, seed=0, workers=1)
    seen = []

    class Recording(PolicyBatchTransform):
        def __call__(self, x, y):
            out = super().__call__(x, y)
            seen.append(out[0])
            return out

    def run(batch_transform):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 3))
        return run_fedavg(model, train, train, splits, config, trainer=StandardTrainer(batch_transform=batch_transform),
                          progress=False).model

    a = run(Recording("3-1-7+43-18-18", train.mean, train.std))
    b = run(PolicyBatchTransform("3-1-7+43-18-18", train.mean, train.std))
    plain = run(None)
    assert seen and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.allclose(p, q) for p, q in zip(a.parameters(), plain.parameters()))
    # what the clients trained on really are transformed images
    pixels = (seen[0] * 0.25 + 0.5) * 255
    assert math.isclose(float((pixels - pixels.round()).abs().max()), 0.0, abs_tol=1e-3)
    assert policy_trainer("3-1-7", train.mean, train.std).batch_transform.policy == Policy("3-1-7")


def test_transform_images_with_crop_flip_is_the_one_crop_flip_then_the_policy():
    x = images(5)
    a = transform_images(x, "3", torch.Generator().manual_seed(1), crop_flip=True)
    g = torch.Generator().manual_seed(1)
    expected = apply_policy(random_crop_flip(x, g), "3", g)  # same generator: crop + flip draws first
    assert torch.equal(a, expected) and a.shape == x.shape
    assert not torch.equal(a, transform_images(x, "3", torch.Generator().manual_seed(1)))


def test_batch_transform_without_generator_draws_straight_from_the_global_rng():
    # notebook 05's numbers come from this way: FedAvg reseeds the global RNG per (round, client) and
    # the transform draws its signs and hybrid choices from it directly
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    x = images(6)
    normalised = (x.float() / 255 - 0.5) / 0.25
    torch.manual_seed(3)
    out, _ = PolicyBatchTransform("3-1-7+43-18-18", mean, std)(normalised, torch.arange(6))
    after = torch.rand(2)
    torch.manual_seed(3)
    expected = apply_policy(x, "3-1-7+43-18-18")
    assert torch.equal(out, (expected.float() / 255 - 0.5) / 0.25)
    assert torch.equal(after, torch.rand(2))  # it consumed exactly the policy's draws
    torch.manual_seed(4)
    assert not torch.equal(PolicyBatchTransform("3-1-7+43-18-18", mean, std)(normalised, torch.arange(6))[0], out)


def test_policy_trainer_skips_the_identity_and_applies_a_defense_on_every_step():
    mean, std = (0.5,) * 3, (0.25,) * 3
    plain = policy_trainer("none", mean, std)
    assert plain.batch_transform is None and plain.gradient_transform is None
    assert isinstance(policy_trainer("none", mean, std, crop_flip=True).batch_transform, PolicyBatchTransform)
    defended = policy_trainer("3-1-7", mean, std, defense=Defense.of("prune", ratio=0.7))
    assert defended.batch_transform.policy == Policy("3-1-7")
    assert isinstance(defended.gradient_transform, DefendedStep)
    assert defended.gradient_transform.defense == Pruning(ratio=0.7)
    noisy = policy_trainer("0", mean, std, defense="gaussian:std0.01")
    assert noisy.gradient_transform.defense == GaussianNoise(std=0.01)


# --- the differentiable copy a policy-aware attacker uses (notebook 06's ats_aware column) ---------

@pytest.mark.parametrize("channels", [3, 1])
def test_every_soft_operation_is_the_uint8_operation_up_to_rounding(channels):
    """On uint8 images, each float operation gives the client's result to within 1.5/255 (the uint8 one
    rounds or truncates once or twice), for both signs; the exact-form ones pass a gradient to the image."""
    from fedrepro.defenses.transforms.differentiable import STRAIGHT_THROUGH, soft_operation

    x = torch.randint(0, 256, (4, channels, 32, 32), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    for op in LIBRARY:
        pixels = (x.float() / 255).requires_grad_(True)
        soft = soft_operation(op, pixels, signs)
        assert (soft - op(x, signs).float() / 255).abs().max() <= 1.5 / 255, op.describe()
        (gradient,) = torch.autograd.grad((soft * torch.linspace(0, 1, soft.numel()).view_as(soft)).sum(), pixels)
        assert gradient.abs().sum() > 0, op.describe()
        if op.name in STRAIGHT_THROUGH:  # the identity's gradient
            assert torch.equal(gradient, torch.linspace(0, 1, soft.numel()).view_as(soft))


def test_the_client_draw_is_one_of_the_attackers_hypotheses():
    """Whatever signs the client drew, one hypothesis reproduces its transformed images (to the uint8
    roundings of its three operations); a hybrid's
    hypotheses are those of its sub-policies together (2 signs per signed operation)."""
    from fedrepro.defenses.transforms.differentiable import PolicyAwareTransform, hypotheses

    assert [len(hypotheses(p)) for p in ("3-1-7", "3-1-7+43-18-18", "0-2", "3")] == [8, 16, 1, 2]
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    for policy in ("3-1-7", "3-1-7+43-18-18"):
        client = apply_policy(images, policy, torch.Generator().manual_seed(1)).float() / 255
        transform = PolicyAwareTransform(policy, mean, std)
        m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        x = ((images.float() / 255 - m) / s)[:, None]  # (P, n = 1, C, H, W) in model space
        errors = torch.stack([
            ((transform(x, torch.full((6,), h))[:, 0] * s + m) - client).abs().flatten(1).max(1).values
            for h in range(transform.count)])  # (hypotheses, images)
        assert (errors.min(0).values <= 3 * 1.5 / 255).all(), policy  # each of 3 operations rounds once
        assert (errors.max(0).values > 0.05).all()  # and the other hypotheses are other images
