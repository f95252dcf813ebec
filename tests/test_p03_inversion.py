"""Notebook 03's protocol: parameters, victims, training snapshots, defenses, rows, keys, the study, claims."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedrepro import metrics
from fedrepro.attacks.victims import pick_victims
from fedrepro.augment import CropFlip
from fedrepro.data import ImageDataset
from fedrepro.defenses import DEFENSES
from fedrepro.defenses.spec import Defense
from fedrepro.papers.p03_inversion import (InversionParameters, InversionRow, InversionStudy, attack_options, attack_row,
                                            baseline_key, build_paper_model, check_decreasing, check_order,
                                            check_recovered, check_spread, claim_checks, claims_table,
                                            defense_explorer, defense_key, defense_label, multistep_key,
                                            noise_defense, per_model, prune_defense, reconstruction_grid,
                                            results_table, state_key, train_snapshots, training_grids,
                                            training_states, training_steps)
from fedrepro.models import build_model
from fedrepro.results import Report
from fedrepro.runner import notebook_parameters, tier_parameters

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "03_inversion.ipynb"

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
    assert noise_defense(1e-2).gradient_defense().std == pytest.approx(0.1)  # σ² is the variance
    assert prune_defense(0.75) == Defense.parse("gc:p0.75") and prune_defense(0.75).gradient_defense().ratio == 0.75
    assert defense_label(noise_defense(0.1)) == "σ² = 0.1" and defense_label(prune_defense(0.25)) == "pruned 25%"
    assert defense_label(Defense.parse("none")) == "no defense"
    assert defense_label(Defense.of("gaussian", std=0.1)) == "gaussian:std0.1"  # not the slides' σ²
    with pytest.raises(ValueError, match="non-negative"):
        noise_defense(-1.0)


@pytest.mark.parametrize("variance", [0.01, 0.1, 1.0, 10.0, 3])
def test_noise_defense_draws_what_the_variance_parametrisation_drew(variance):
    """The slides' σ² is a variance: the noise drawn is that of std = √σ², draw for draw."""
    grads = {"w": torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1)), "b": torch.ones(2, 4)}
    new = noise_defense(variance).gradient_defense()(grads, generator=torch.Generator().manual_seed(7))
    old = DEFENSES.get("gaussian")(std=math.sqrt(variance))(grads, generator=torch.Generator().manual_seed(7))
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in grads)
    assert not torch.equal(new["w"], grads["w"])
    pruned = prune_defense(0.5).gradient_defense()(grads)
    expected = DEFENSES.get("prune")(ratio=0.5)(grads)
    assert all(torch.equal(pruned[k], expected[k]) for k in grads) and (pruned["w"] == 0).sum() == 2 * 7


def test_result_keys_are_those_of_the_published_runs():
    assert state_key("cnn", "trained, no augmentation") == "training/cnn/trained_no_augmentation"
    assert state_key("resnet18", "partially trained") == "training/resnet18/partially_trained"
    assert baseline_key("cnn") == "defenses/cnn/none"
    assert defense_key("noise", "cnn", noise_defense(0.01)) == "noise/cnn/0.01"
    assert defense_key("noise", "cnn", noise_defense(10)) == "noise/cnn/10"
    assert defense_key("pruning", "cnn", prune_defense(0.25)) == "pruning/cnn/0.25"
    with pytest.raises(ValueError, match="not one of paper 03's defenses"):
        defense_key("noise", "cnn", Defense.of("gaussian", std=0.1))
    gradient, update = row("gradient", [1.0]), row("update", [1.0])
    gradient.info, update.info = dict(steps=0, lr=None), dict(steps=5, lr=0.01)
    assert multistep_key("cnn", gradient) == "multistep/cnn/gradient"
    assert multistep_key("cnn", update) == "multistep/cnn/update_K5_lr0.01"


def test_attack_row_measures_every_victim_and_noise_hurts():
    data = synthetic(20)
    torch.manual_seed(0)
    model = build_model("cnn").eval()
    victims = pick_victims(data, 2, seed=0, policy="class_cycle")
    options = attack_options(iterations=60, restarts=1, tv_weight=1e-2)
    clean = attack_row(model, data.images[victims], data.labels[victims], data, experiment="noise",
                       setting="no defense", attack_options=options, progress=False)
    noisy = attack_row(model, data.images[victims], data.labels[victims], data, experiment="noise",
                       setting="σ² = 1", attack_options=options, defense=noise_defense(1.0).gradient_defense(),
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
    a, b, c = row("a", [20, 22]), row("b", [15, 16]), row("c", [12, 11], [0.6, 0.2])
    assert check_order("k", "a beats b", a, b).holds and not check_order("k", "b beats a", b, a).holds
    assert check_decreasing("k", "falls", [a, b, c]).holds
    assert not check_decreasing("k", "falls", [a, c, b]).holds  # 11.5 -> 15.5 rises beyond the spread
    assert check_decreasing("k", "falls", [a, c, b], tolerance=5.0).holds
    assert check_spread("k", "a spreads more", row("a", [10, 20, 30]), row("b", [15, 15.5, 16])).holds
    assert not check_spread("k", "a spreads more", a, b).holds  # ratio 2 from two victims each: inside the spread
    assert check_recovered("k", "recovered", row("r", [20, 21], [0.8, 0.9])).holds
    assert not check_recovered("k", "recovered", c).holds  # one victim above SSIM 0.5 is not a mean above it
    assert "**contradicted**" in claims_table([check_order("k", "b beats a", b, a)])


def test_row_summary_of_known_reconstructions():
    """PSNR from reconstructions off by a known constant: 0.1 -> MSE 1e-2 -> 20 dB, 0.01 -> 40 dB."""
    originals = 0.2 + 0.6 * torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reconstructions = originals + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    scores = metrics.reconstruction_metrics(originals, reconstructions)
    known = InversionRow("noise", "σ² = 1", originals, reconstructions, scores["mse"], scores["psnr"], scores["ssim"],
                         np.zeros(2), 3.0)
    summary = known.summary()
    assert summary["psnr_mean"] == pytest.approx(30.0, abs=1e-3)
    assert summary["psnr_std"] == pytest.approx(10.0, abs=1e-3)
    assert summary["mse_mean"] == pytest.approx((1e-2 + 1e-4) / 2, rel=1e-4)
    assert summary["asr"] == float(np.mean(scores["ssim"] >= 0.5))
    assert "| 30.00 ± 10.00 |" in results_table([known]) and known.captions()[1].startswith("40.0 dB")


def training_row(model: str, state: str, psnr: list[float], ssim: list[float] | None = None) -> InversionRow:
    made = row(f"{model}: {state}", psnr, ssim)
    made.info = dict(model=model)
    return made


def test_claim_checks_read_each_claim_from_the_right_rows():
    rows = {
        "training": [training_row("cnn", "untrained", [25, 23, 24], [0.9, 0.8, 0.85]),
                     training_row("cnn", "partially trained", [20, 21, 19]),
                     training_row("cnn", "trained", [15, 17, 16]),
                     training_row("cnn", "trained, no augmentation", [16, 15, 17]),
                     training_row("resnet18", "untrained", [9, 12, 8], [0.2, 0.6, 0.1]),
                     training_row("resnet18", "partially trained", [8, 9, 7]),
                     training_row("resnet18", "trained", [13, 14, 12])],
        "architectures": [training_row("resnet18", "trained", [10, 12, 11]),
                          training_row("resnet50", "trained", [9, 20, 14])],
        "noise": [row("no defense", [20, 20.2, 19.8]), row("σ² = 0.01", [15, 15.2, 14.8]),
                  row("σ² = 1", [15.6, 15.8, 15.4]), row("σ² = 10", [8, 8.2, 7.8])],
        "pruning": [row("no defense", [20, 21, 19]), row("pruned 25%", [19, 20, 18]), row("pruned 75%", [21, 22, 20])],
    }
    checks = claim_checks(rows, ["cnn", "resnet18"], "cnn", tolerance=1.0)
    scores = _scores(checks)
    assert scores == {"claim/recovery": 0.5,  # cnn untrained's mean SSIM clears 0.5, resnet18's does not
                      "claim/untrained_beats_trained": 0.5,  # confirmed for cnn, contradicted for resnet18
                      "claim/untrained_beats_partially_trained": 0.5,  # resnet18: 9.7 vs 8.0 inside the spread
                      "claim/augmentation_hurts": 0.0,  # equal means
                      "claim/width_helps": 0.0,  # 14.3 vs 11.0, but ResNet-50's victims spread ±5.5 dB
                      "claim/width_spreads": 1.0,  # sample std 5.5 vs 1.0
                      "claim/noise_degrades": 1.0,  # 15 -> 15.6 rises beyond the spread but within 1 dB
                      "claim/noise_destroys": 1.0, "claim/pruning_degrades": 0.0, "claim/pruning_destroys": 0.0}
    assert [c.statement for c in dict(checks)["claim/untrained_beats_trained"]] == [
        "untrained reconstructs better than trained (cnn)", "untrained reconstructs better than trained (resnet18)"]
    assert [c.verdict for c in dict(checks)["claim/untrained_beats_trained"]] == ["confirmed", "contradicted"]
    assert _scores(claim_checks(rows, ["cnn", "resnet18"], "cnn", tolerance=0.5))["claim/noise_degrades"] == 0.0
    published = yaml.safe_load((REPO / "fedrepro" / "paper_results" / "03.yaml").read_text())
    assert set(published) <= set(scores)  # every claim the paper file records is measured under its key
    assert claim_checks({"noise": rows["noise"]}, ["cnn"], "cnn", 0.5)[0][0] == "claim/noise_degrades"
    single = {"noise": [row("no defense", [20]), row("σ² = 10", [8])]}
    assert [c.verdict for c in dict(claim_checks(single, ["cnn"], "cnn", 0.5))["claim/noise_destroys"]] == ["no spread"]


def test_params_defaults_are_the_smoke_tier_and_every_tier_validates():
    cell = notebook_parameters(NOTEBOOK)
    smoke = {k: v for k, v in cell.items() if k not in ("tier", "results_dir")}
    assert dataclasses.asdict(InversionParameters()) == smoke
    for tier in ("quick", "gpu", "paper"):
        values = {**smoke, **{k: v for k, v in tier_parameters(NOTEBOOK, tier).items() if k != "tier"}}
        assert dataclasses.asdict(InversionParameters(**values)) == values
    assert InversionParameters(experiments=["noise"], defense_model="resnet18").used_models() == ["resnet18"]
    assert InversionParameters().used_models() == ["cnn"]


@pytest.mark.parametrize("change, message", [
    (dict(experiments=["trainig"]), r"experiments\[0\] = 'trainig' is invalid: choose one of training, "),
    (dict(training_models=["resnet99"]), r"training_models\[0\] = 'resnet99' is invalid: choose one of "),
    (dict(defense_state="half trained"), r"defense_state = 'half trained' is invalid: choose one of untrained, "),
    (dict(defense_state="trained, no augmentation", no_augmentation_models=[]),
     r"defense_state = 'trained, no augmentation' is invalid: it needs 'cnn' in no_augmentation_models"),
    (dict(batchnorm="frozen"), r"batchnorm = 'frozen' is invalid: choose one of eval, train$"),
    (dict(noise_variances=[0.1, -1.0]), r"noise_variances\[1\] = -1.0 is invalid: expected a number ≥ 0$"),
    (dict(prune_ratios=[1.5]), r"prune_ratios\[0\] = 1.5 is invalid: expected a number in \[0, 1\]$"),
    (dict(victims={"resnet18": 2}), r"victims = \{'resnet18': 2\} is invalid: expected an entry for \['cnn'\] or"),
    (dict(victims={"default": 0}), r"victims\['default'\] = 0 is invalid: expected an integer ≥ 1$"),
    (dict(iterations=100), r"iterations = 100 is invalid: expected a mapping from model names"),
    (dict(train_epochs={"default": 0}), r"train_epochs\['default'\] = 0 is invalid: expected a number > 0$"),
    (dict(partial_fraction=1.0), r"partial_fraction = 1.0 is invalid: expected a number in \(0, 1\)$"),
    (dict(multistep_steps=[0, 5]), r"multistep_steps\[0\] = 0 is invalid: expected an integer ≥ 1$"),
    (dict(train_samples=0), r"train_samples = 0 is invalid: expected an integer ≥ 1, or None$"),
    (dict(restarts=True), r"restarts = True is invalid: expected an integer ≥ 1$"),
])
def test_params_refuse_bad_values_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        InversionParameters(**change)


def small_study(experiments: list[str], log: list[str]) -> InversionStudy:
    params = InversionParameters(experiments=experiments, victims={"default": 2}, iterations={"default": 2},
                             noise_variances=[0.01, 1.0], prune_ratios=[0.5], train_epochs={"default": 1.0},
                             batch_size=16, multistep_steps=[1, 2], multistep_iterations=2, device="cpu")
    report = Report("03_inversion", paper="03", tier="smoke", parameters=dataclasses.asdict(params))
    return InversionStudy(params, report, synthetic(40), synthetic(20, seed=1), synthetic(60, seed=2), log.append)


def test_study_records_every_key_and_trains_each_network_once():
    log: list[str] = []
    study = small_study(["training", "noise", "pruning", "multistep"], log)
    assert study.victim_labels.tolist() == [0, 1]  # one per class in turn
    assert "2 victims: 0, 1" in study.describe_data()
    training = study.training()
    noise, pruning, multistep = study.defense("noise"), study.defense("pruning"), study.multistep()
    claims = study.claims()
    states = ["untrained", "partially_trained", "trained", "trained_no_augmentation"]
    expected = [f"training/cnn/{s}/{m}" for s in states for m in ("psnr", "ssim", "accuracy")]
    expected += [f"{k}/{m}" for k in ("defenses/cnn/none", "noise/cnn/0.01", "noise/cnn/1", "pruning/cnn/0.5",
                                      "multistep/cnn/gradient", "multistep/cnn/update_K1_lr0.01",
                                      "multistep/cnn/update_K2_lr0.01") for m in ("psnr", "ssim")]
    expected += ["claim/recovery", "claim/untrained_beats_trained", "claim/untrained_beats_partially_trained",
                 "claim/augmentation_hurts", "claim/noise_degrades", "claim/noise_destroys", "claim/pruning_degrades",
                 "claim/pruning_destroys"]
    assert list(study.report.metrics) == expected
    assert len(training) == 4 and [r.setting for r in noise] == [
        "cnn trained: no defense", "cnn trained: σ² = 0.01", "cnn trained: σ² = 1"]
    assert pruning[0] is noise[0] and pruning[1].setting == "cnn trained: pruned 50%"
    # the undefended row is the training experiment's attack on the trained CNN, not a second attack
    assert np.array_equal(noise[0].psnr, training[2].psnr) and noise[0].experiment == "no defense"
    assert study.report.metrics["defenses/cnn/none/psnr"] == study.report.metrics["training/cnn/trained/psnr"]
    assert [r.info["steps"] for r in multistep] == [0, 1, 2] and len(claims) == 8
    assert study.explorer_rows() == noise + pruning[1:]
    assert len(log) == 2 and log[0].startswith("cnn: untrained") and log[1] == "cnn (untrained), 1 clients × 2 images"
    assert len(training_grids(training)) == 1
    facts = study.network_facts()
    assert "cnn: 65,962 parameters" in facts and "σ² = 0.01: noise std 0.1 per gradient entry" in facts


def test_study_attacks_the_undefended_network_when_training_did_not_run():
    study = small_study(["pruning"], [])
    rows = study.defense("pruning")
    assert [r.setting for r in rows] == ["cnn trained: no defense", "cnn trained: pruned 50%"]
    assert list(study.states["cnn"]) == ["untrained", "partially trained", "trained", "trained, no augmentation"]
    assert list(study.report.metrics) == [f"{k}/{m}" for k in ("defenses/cnn/none", "pruning/cnn/0.5")
                                          for m in ("psnr", "ssim")]


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


def _scores(checks):
    """Each claim's share of confirmed checks, from claim_checks' (key, checks) pairs."""
    from fedrepro.claims import scores

    return scores(check for _, results in checks for check in results)
