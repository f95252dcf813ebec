"""Fast checks of notebook 05's experiment helpers (fedrepro.papers.p05_ats)."""
import math

import numpy as np
import pytest
import torch

from fedrepro.data import FederatedData, ImageDataset, federated_split
from fedrepro.papers import p05_ats as ats
from fedrepro.fl import FedAvgConfig


def _dataset(n=24, channels=3, size=32, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return ImageDataset("toy", "train", images, labels, [str(i) for i in range(classes)],
                        (0.5,) * channels, (0.25,) * channels)


def test_pearson_matches_numpy_and_handles_constants():
    x, y = [1.0, 2.0, 3.0, 5.0], [2.0, 2.5, 4.0, 4.5]
    assert ats.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert ats.pearson(x, [-v for v in x]) == pytest.approx(-1.0)
    assert math.isnan(ats.pearson(x, [1.0] * 4))
    with pytest.raises(ValueError):
        ats.pearson([1.0], [2.0])


def test_keys_and_labels_match_the_paper_results_file():
    from fedrepro.results import paper_values

    known = {key for paper, key in paper_values() if paper == "05"}
    assert ats.result_key("cifar10", "resnet20", "best1", "psnr") == "cifar100/resnet20/best1/psnr"
    assert ats.result_key("mnist", "convnet", "hybrid", "accuracy", transfer=True) in known
    for kind, value in ats.TABLE3:
        assert f"cifar100/resnet20/{ats.defense_label(kind, value)}/psnr" in known
    for attack in ats.TABLE2_ATTACKS:
        assert f"cifar100/resnet20/{attack}/hybrid/psnr" in known
    assert ats.defense_label(None) == "none"
    assert "stands in" in ats.stand_in_note("cifar10") and ats.stand_in_note("cifar100") == ""


def test_lowest_and_table():
    assert ats.lowest({3: 0.2, 1: 0.1, 2: 0.1, 0: 0.5}, 3) == [1, 2, 3]
    text = ats.markdown_table([{"a": 1.234, "b": None}], ["a", "b"])
    assert "1.23" in text and "—" in text


def test_victims_are_seeded_and_identity_keeps_images():
    data = _dataset(4)
    assert torch.equal(ats.victim_images(data.images, "none"), data.images)
    a = ats.victim_images(data.images, "3-1-7", seed=1)
    assert torch.equal(a, ats.victim_images(data.images, "3-1-7", seed=1))
    assert not torch.equal(a, data.images)


def test_trainer_applies_the_gradient_defense():
    data = _dataset(16)
    model = ats.build_ats_model("convnet", data, seed=0, width=2)
    x, y = data.normalize(data.images[:4]), data.labels[:4]

    class Client:
        client, x_train, y_train, num_train = 0, x, y, 4

    seen = {}

    def spy(grads, generator=None):
        pruned = ats.make_defense("prune", 1.0)(grads)
        seen["zero"] = all(bool((g == 0).all()) for g in pruned.values())
        return pruned

    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    trainer = ats.ats_trainer("none", data.mean, data.std, spy)
    trainer(model, Client(), FedAvgConfig(rounds=1, batch_size=4, optimizer="sgd", lr=0.1), 1)
    assert seen["zero"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # all gradients pruned: no step


def test_attack_under_policy_measures_against_the_transformed_image():
    data = _dataset(4)
    model = ats.build_ats_model("convnet", data, seed=0, width=2).eval()
    out = ats.attack_under_policy(model, data.images[:2], data.labels[:2], "3", mean=data.mean, std=data.std,
                                  iterations=3, seed=0)
    assert out.reconstructions.shape == (2, 3, 32, 32)
    assert torch.equal(out.transformed, ats.victim_images(data.images[:2], "3", 0).float() / 255)
    assert out.psnr.shape == (2,) and np.isfinite(out.psnr).all() and np.isfinite(out.psnr_original_mean)


def test_rows_cache_training_and_attacks():
    data = _dataset(24)
    splits = federated_split(data.labels, 2, 0, val_fraction=0.0)
    fed = FederatedData(data, data.subset(torch.arange(8)), splits)
    rows = ats.Rows("convnet", fed, FedAvgConfig(rounds=1, batch_size=8, optimizer="sgd", lr=0.01, workers=1),
                    data.images[:1], data.labels[:1], width=2, iterations=2)
    first = rows.trained("3-1-7")
    assert rows.trained("3-1-7") is first and 0 <= first.accuracy <= 100
    attack = rows.attacked("3-1-7")
    assert rows.attacked("3-1-7") is attack and len(rows.models) == 1
    rows.attacked("3", model_policy="3-1-7")
    assert len(rows.models) == 1 and len(rows.attacks) == 2
