"""Notebook 03's experiment rows: victims, training snapshots, augmentation, defenses, claim checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrepro.attacks.victims import pick_victims
from fedrepro.data import ImageDataset
from fedrepro.papers.p03_inversion import (CropFlip, InversionRow, attack_options, attack_row, build_paper_model,
                                            check_decreasing, check_order, check_recovered, check_spread,
                                            claims_table, defense_explorer, defense_label, make_defense, per_model,
                                            reconstruction_grid, results_table, train_snapshots,
                                            training_states, training_steps)
from fedrepro.models import build_model

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(count: int = 60, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(count) % 10
    return ImageDataset("synthetic", "train", images, labels, [str(c) for c in range(10)], MEAN, STD)


def test_models_are_seeded_with_batchnorm_where_the_paper_has_it():
    data = synthetic(10)
    a, b = build_paper_model("resnet18", data, seed=0), build_paper_model("resnet18", data, seed=0)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)
    assert isinstance(a.bn1, torch.nn.BatchNorm2d)
    assert not torch.equal(build_paper_model("cnn", data, 0).layers.fc.weight,
                           build_paper_model("cnn", data, 1).layers.fc.weight)
    assert per_model({"cnn": 3, "default": 1}, "cnn", "victims") == 3
    assert per_model({"cnn": 3, "default": 1}, "resnet18", "victims") == 1
    with pytest.raises(KeyError, match="iterations has no entry for model 'resnet18'"):
        per_model({"cnn": 3}, "resnet18", "iterations")


def test_crop_flip_moves_pixels_and_pads_black():
    data = synthetic(4)
    x = data.normalize(data.images)
    out, y = CropFlip(MEAN, STD, seed=0)(x, data.labels)
    assert out.shape == x.shape and torch.equal(y, data.labels)
    unpadded = CropFlip(MEAN, STD, padding=0, seed=0)(x, y)[0]
    for a, b in zip(unpadded, x):  # without padding each image is itself or its mirror image
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    black = data.denormalize(CropFlip(MEAN, STD, padding=31, seed=3)(x, y)[0])
    assert (black == 0).all(dim=1).any()  # pixels from the padding are black in pixel space
    again = CropFlip(MEAN, STD, seed=0)(x, y)[0]
    assert torch.equal(again, out)


def test_training_snapshots_are_independent_copies():
    data = synthetic(40)
    torch.manual_seed(0)
    model = build_model("cnn")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    assert training_steps(1.5, 40, 16) == 4
    snaps = train_snapshots(model, data, data, [0, 1, 4], batch_size=16, augment=True, progress=False, device="cpu")
    assert sorted(snaps) == [0, 1, 4] and snaps[4].epochs == pytest.approx(4 / 3)
    for k, v in snaps[0].model.state_dict().items():
        assert torch.equal(v, initial[k])
    assert not torch.equal(snaps[1].model.layers.fc.weight, snaps[4].model.layers.fc.weight)
    assert torch.equal(snaps[4].model.layers.fc.weight, model.layers.fc.weight)
    assert all(not s.model.training and 0 <= s.accuracy <= 1 for s in snaps.values())
    torch.manual_seed(0)
    again = train_snapshots(build_model("cnn"), data, data, [1], batch_size=16, augment=True, progress=False,
                            device="cpu")
    torch.testing.assert_close(again[1].model.state_dict(), snaps[1].model.state_dict(), rtol=0, atol=0)


def test_training_states_share_one_run():
    data = synthetic(40)
    states = training_states("cnn", data, data, epochs=2.0, partial_fraction=0.25, compare_no_augmentation=True,
                             batch_size=16, progress=False, device="cpu")
    assert list(states) == ["untrained", "partially trained", "trained", "trained, no augmentation"]
    assert [s.steps for s in states.values()] == [0, 1, 5, 5]  # ceil(2 * 40 / 16), round(0.25 * 5)
    assert not torch.equal(states["trained"].model.layers.fc.weight,
                           states["trained, no augmentation"].model.layers.fc.weight)
    with pytest.raises(ValueError, match="partial_fraction"):
        training_states("cnn", data, data, epochs=1.0, partial_fraction=1.0, progress=False, device="cpu")


def test_defenses_use_the_slides_parametrisation():
    assert make_defense(None) is None and make_defense("none") is None
    assert make_defense("gaussian", 1e-2).std == pytest.approx(0.1)  # σ² is the variance
    assert make_defense("prune", 0.75).ratio == 0.75
    assert defense_label("gaussian", 0.1) == "σ² = 0.1" and defense_label("prune", 0.25) == "pruned 25%"
    with pytest.raises(ValueError, match="unknown defense"):
        make_defense("blur", 1.0)


def test_attack_row_measures_every_victim_and_noise_hurts():
    data = synthetic(20)
    torch.manual_seed(0)
    model = build_model("cnn").eval()
    victims = pick_victims(data, 2, seed=0, policy="class_cycle")
    options = attack_options(iterations=60, restarts=1, tv_weight=1e-2)
    clean = attack_row(model, data.images[victims], data.labels[victims], data, experiment="noise",
                       setting="no defense", attack_options=options, progress=False)
    noisy = attack_row(model, data.images[victims], data.labels[victims], data, experiment="noise",
                       setting="σ² = 1", attack_options=options, defense=make_defense("gaussian", 1.0),
                       progress=False)
    assert clean.victims == 2 and clean.reconstructions.shape == (2, 3, 32, 32)
    assert clean.originals.min() >= 0 and clean.originals.max() <= 1
    torch.testing.assert_close(clean.originals, data.images[victims].float() / 255)
    assert np.all(np.isfinite(clean.psnr)) and clean.gradient_distance.shape == (2,)
    assert noisy.gradient_distance.mean() > clean.gradient_distance.mean()
    assert not model.training  # restored
    summary = clean.summary()
    assert {"psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "asr"} <= set(summary)
    table = results_table([clean, noisy])
    assert table.count("\n") == 3 and "σ² = 1" in table
    fig = reconstruction_grid([clean, noisy])
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="batchnorm"):
        attack_row(model, data.images[victims], data.labels[victims], data, experiment="x", setting="y",
                   batchnorm="frozen")


def test_batchnorm_mode_is_applied_and_restored():
    data = synthetic(10)
    torch.manual_seed(0)
    model = build_model("resnet18", norm="batch")
    model.train()
    seen = []
    model.bn1.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    attack_row(model, data.images[:1], data.labels[:1], data, experiment="bn", setting="eval",
               attack_options=attack_options(1, 1, 0.0), progress=False)
    assert model.training and seen and not any(seen)


def row(setting: str, psnr: list[float], ssim: list[float] | None = None) -> InversionRow:
    image = torch.zeros(len(psnr), 3, 4, 4)
    ssim = ssim or [0.1] * len(psnr)
    mse = [10 ** (-p / 10) for p in psnr]
    return InversionRow("e", setting, image, image, np.array(mse), np.array(psnr), np.array(ssim),
                        np.zeros(len(psnr)), 0.0)


def test_claim_checks():
    a, b, c = row("a", [20, 22]), row("b", [15, 15]), row("c", [12, 11], [0.6, 0.2])
    assert check_order("k", "a beats b", a, b).holds and not check_order("k", "b beats a", b, a).holds
    assert check_decreasing("k", "falls", [a, b, c]).holds
    assert not check_decreasing("k", "falls", [a, c, b]).holds
    assert check_decreasing("k", "falls", [a, c, b], tolerance=5.0).holds
    assert check_spread("k", "a spreads more", a, b).holds
    assert check_recovered("k", "recovered", c).holds and not check_recovered("k", "recovered", a).holds
    assert math.isclose(float(np.mean(a.psnr)), 21.0)
    assert "**no**" in claims_table([check_order("k", "b beats a", b, a)])


def test_defense_explorer_draws_the_default_and_redraws_on_change(monkeypatch):
    import fedrepro.papers.p03_inversion as inversion

    drawn = []
    original = inversion.reconstruction_grid
    def grid(rows, max_images=None):
        drawn.append(rows[0].setting)
        return original(rows, max_images)

    monkeypatch.setattr(inversion, "reconstruction_grid", grid)
    rows = [row("no defense", [20, 21]), row("σ² = 1", [8, 9])]
    picker = defense_explorer(rows, max_images=2)
    assert drawn == ["no defense"] and picker.value == 0
    picker.value = 1
    assert drawn == ["no defense", "σ² = 1"]
    with pytest.raises(ValueError, match="no rows"):
        defense_explorer([])
