"""Fast checks of notebook 05's protocol (fedrepro.papers.p05_ats)."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from fedrepro.data import FederatedData, ImageDataset, federated_split
from fedrepro.defenses import Pruning
from fedrepro.defenses.spec import Defense
from fedrepro.defenses.transforms import policy_trainer
from fedrepro.fl import FedAvgConfig
from fedrepro.papers import p05_ats as ats
from fedrepro.results import Report

pytestmark = pytest.mark.usefixtures("one_thread")


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
    labels = [ats.defense_label(ats.table3_defense(kind, value)) for kind, value in ats.TABLE3]
    assert labels == ["prune-0.70", "prune-0.95", "prune-0.99", "laplacian-1e-3", "laplacian-1e-2",
                      "gaussian-1e-3", "gaussian-1e-2"]
    for label in labels:
        assert ats.table3_key(label, "psnr") in known and ats.table3_key(label, "accuracy") in known
    for attack in ats.TABLE2_ATTACKS:
        assert ats.table2_key(attack, "hybrid") in known and ats.table2_key(attack, "none") in known
    assert all(ats.figure5_key(k) in known for k in range(1, 6)) and ats.PEARSON_KEY in known
    assert ats.published_key("cifar10", "convnet", "3-1-7", "psnr") == "cifar100/convnet/published/3-1-7/psnr"
    assert ats.defense_label(None) == "none" and ats.table3_defense("none") is None
    assert "stands in" in ats.stand_in_note("cifar10") and ats.stand_in_note("cifar100") == ""


def test_table3_defenses_are_paper_05s_parameters():
    # 05's Gaussian value is a standard deviation (paper 03's is a variance), Laplacian a scale, prune a ratio
    assert ats.table3_defense("gaussian", 1e-2) == Defense.of("gaussian", std=1e-2)
    assert ats.table3_defense("gaussian", 1e-2).gradient_defense().std == 1e-2
    assert ats.table3_defense("laplacian", 1e-3).gradient_defense().scale == 1e-3
    assert ats.table3_defense("prune", 0.7).gradient_defense() == Pruning(ratio=0.7)
    assert ats.defense_label(Defense.of("gaussian", std=0.05)) == "gaussian-0.05"
    with pytest.raises(ValueError, match="standard deviation"):
        ats.defense_label(Defense.of("gaussian", var=1e-4))
    with pytest.raises(ValueError, match="blur"):
        ats.table3_defense("blur", 1.0)


def test_parameters_are_validated_and_written_whole():
    params = ats.ATSParameters(archs=("convnet",), table3_defenses=(("prune", 0.7),), published_policies=["3-01-7"])
    assert params.archs == ["convnet"] and params.table3_defenses == [["prune", 0.7]]
    assert params.published_policies == ["3-1-7"] and params.defenses == [Defense.of("prune", ratio=0.7)]
    written = dataclasses.asdict(params)
    assert set(written) == {f.name for f in dataclasses.fields(ats.ATSParameters)} and written["c_max"] == 4
    config = params.fedavg_config()
    assert (config.rounds, config.optimizer, config.momentum, config.workers) == (1, "sgd", 0.9, 1)
    assert config.lr_schedule == "constant" and params.figure2_iterations == params.attack_iterations == 10
    assert ats.ATSParameters(figure2_attack_iterations=25).figure2_iterations == 25
    assert ats.ATSParameters(lr_schedule="cosine").fedavg_config().lr_schedule == "cosine"
    bad = [({"archs": ["vgg"]}, r"archs\[0\] = 'vgg' is invalid: choose one of resnet20, convnet$"),
           ({"archs": []}, r"archs = \[\] is invalid: expected a non-empty list of names"),
           ({"tables": ["tabel1"]}, r"tables\[0\] = 'tabel1' is invalid: choose one of "),
           ({"dataset": "imagenet"}, r"dataset = 'imagenet' is invalid: choose one of .*cifar10"),
           ({"table2_attacks": ["ig"]}, r"table2_attacks\[0\] = 'ig' is invalid"),
           ({"figure5_operations": 51}, r"figure5_operations = 51 is invalid: expected an integer from 1 to 50$"),
           ({"rounds": 2.5}, r"rounds = 2.5 is invalid: expected an integer ≥ 1$"),
           ({"spri_points": 1}, r"spri_points = 1 is invalid: expected an integer ≥ 2$"),
           ({"semi_fraction": 0.0}, r"semi_fraction = 0.0 is invalid: expected a number in \(0, 1\]$"),
           ({"table3_defenses": [["blur", 1.0]]}, "blur"),
           ({"table3_defenses": [["prune"]]}, r"table3_defenses\[0\] = \['prune'\] is invalid: expected a \[kind"),
           ({"published_policies": ["3-1-99"]}, "outside"),
           ({"attack_iterations": 0}, r"attack_iterations = 0 is invalid: expected an integer ≥ 1, or None$"),
           ({"figure2_attack_iterations": 0},
            r"figure2_attack_iterations = 0 is invalid: expected an integer ≥ 1, or None$"),
           ({"lr_schedule": "step:30:0.1"}, r"^lr_schedule = 'step:30:0.1' is invalid: unknown schedule 'step'"),
           ({"momentum": 1.0}, r"momentum = 1.0 is invalid: expected a number in \[0, 1\)$"),
           ({"t_acc_per_image": 1.0}, r"t_acc_per_image = 1.0 is invalid: expected a number ≤ 0$")]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            ats.ATSParameters(**change)


def _notebook_parameters() -> dict:
    import ast
    import json
    from pathlib import Path

    notebook = Path(__file__).parent.parent / "notebooks" / "05_transformation_search.ipynb"
    cell = next(c for c in json.loads(notebook.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body}


def test_every_tier_and_sweep_point_of_notebook_05_validates():
    import itertools
    from pathlib import Path

    import yaml

    root = Path(__file__).parent.parent / "parameters"
    defaults = _notebook_parameters()
    assert dataclasses.asdict(ats.ATSParameters(**defaults)).keys() == defaults.keys()
    for path in sorted((root / "05_transformation_search").glob("*.yaml")):
        tier = yaml.safe_load(path.read_text())
        ats.ATSParameters(**{**defaults, **tier})
    sweep = yaml.safe_load((root / "sweeps" / "05_accuracy_cost.yaml").read_text())
    tier = yaml.safe_load((root / "05_transformation_search" / f"{sweep['tier']}.yaml").read_text())
    for values in itertools.product(*sweep["grid"].values()):
        ats.ATSParameters(**{**defaults, **tier, **dict(zip(sweep["grid"], values))})


def _tier(name: str) -> ats.ATSParameters:
    from pathlib import Path

    import yaml

    path = Path(__file__).parent.parent / "parameters" / "05_transformation_search" / f"{name}.yaml"
    return ats.ATSParameters(**{**_notebook_parameters(), **yaml.safe_load(path.read_text())})


def test_paper_tier_trains_with_the_reference_codes_schedule_and_figure_2s_attack_length():
    """The reference trains with inversefed's "conservative" recipe: MultiStepLR ×0.1 at epochs
    epochs // 2.667, // 1.6, // 1.142, stepped once per epoch; round r is epoch r - 1."""
    paper = _tier("paper")
    config = paper.fedavg_config()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=paper.lr)
    milestones = [int(paper.rounds // f) for f in (2.667, 1.6, 1.142)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    reference = []
    for _ in range(paper.rounds):
        reference.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert milestones == [74, 124, 175] and (paper.rounds, paper.lr, paper.momentum) == (200, 0.1, 0.9)
    assert [config.round_lr(r) for r in range(1, paper.rounds + 1)] == pytest.approx(reference, rel=1e-12)
    assert paper.figure2_iterations == 2500 and paper.attack_iterations is None  # others keep their presets
    quick = _tier("quick")
    assert quick.lr_schedule == "constant" and quick.figure2_iterations == quick.attack_iterations == 300


def test_library_summary_lists_the_papers_lowest_operations():
    text = ats.library_summary().splitlines()
    assert text[0] == "policies of at most 3 operations: 127,550"
    assert [int(line.split(":")[0]) for line in text[1:]] == [3, 15, 18, 26, 1]
    assert "translateX" in text[1]


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
        pruned = Pruning(ratio=1.0)(grads)
        seen["zero"] = all(bool((g == 0).all()) for g in pruned.values())
        return pruned

    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    trainer = policy_trainer("none", data.mean, data.std, defense=spy)
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
    assert rows.attacked("3-1-7", iterations=2) is attack  # the rows' own length
    longer = rows.attacked("3-1-7", iterations=3)
    assert longer is not attack and len(rows.attacks) == 3 and len(rows.models) == 1


def _federated(channels: int, seed: int) -> FederatedData:
    data = _dataset(32, channels=channels, seed=seed)
    splits = federated_split(data.labels, 2, 0, val_fraction=0.0)
    return FederatedData(data, data.subset(torch.arange(12)), splits)


def test_study_runs_every_section_and_records_the_papers_keys(tmp_path):
    params = ats.ATSParameters(
        dataset="cifar10", convnet_width=2, num_clients=2, rounds=1, batch_size=8, semi_fraction=0.5, semi_epochs=1,
        spri_points=3, sacc_runs=1, c_max=3, figure5_operations=6, victims=1, attack_iterations=2, random_policies=1,
        figure2_policies=2, figure2_attack_iterations=3, table2_attacks=["ats_adam_cosine"],
        table3_defenses=[["prune", 0.7]],
        published_policies=["3-1-7"], results_dir=str(tmp_path))
    report = Report("05_transformation_search", paper="05", tier="smoke", parameters=dataclasses.asdict(params))
    study = ats.ATSStudy(params, report, data=_federated(3, 0), transfer=_federated(1, 1))
    assert "T_acc = -5.4" in study.describe()  # -1.35 per image, 4 classes
    assert "policies searched" in study.search_all()
    assert len(study.best["convnet"]) == 2 and study.hybrids["convnet"].split("+")[0] == study.best["convnet"][0]
    fig, text = study.figure5()
    assert "our five lowest" in text
    assert "**Table 1, cifar10, convnet**" in study.table1()
    assert len(study.figure4()) == 1
    study.figure2()
    figure2 = next(row for row in report.rows if row["key"] == ats.PEARSON_KEY)
    assert "3 attack iterations" in figure2["setting"]
    assert {key[-1] for key in study.rows["convnet"].attacks} == {2, 3}  # Figure 2's attacks only are longer
    assert "ats_adam_cosine" in study.table2()
    assert "prune-0.70" in study.table3()
    _, table4 = study.table4()
    assert "cifar10 → mnist" in table4
    m = report.metrics
    assert {"search/convnet/semi_accuracy", "search/c_max", "cifar100/convnet/none/psnr",
            "cifar100/convnet/random/accuracy", "cifar100/convnet/hybrid/psnr", "cifar100/convnet/published/3-1-7/psnr", ats.PEARSON_KEY,
            "cifar100/resnet20/ats_adam_cosine/hybrid/psnr", "cifar100/resnet20/prune-0.70/accuracy",
            "fashion-mnist/convnet/transfer/best2/psnr"} <= set(m)
    assert [m[ats.figure5_key(k)] for k in range(1, 6)] == ats.lowest(
        {i: study.searches["convnet"].records[str(i)]["s_pri"] for i in range(6)}, 5)
    checks = study.claims()  # on what Tables 1 and 4 and Figure 2 stored
    assert study.measured["table1"]["convnet"]["none"].test_images == 12
    assert {"claim/searched_lowers_psnr", "claim/accuracy_cost_negligible", "claim/policies_transfer"} <= set(m)
    assert [c.verdict for c in checks if c.key == "claim/spri_predicts_psnr"] == ["no spread"]  # 2 policies
    assert all(c.verdict == "no spread" for c in checks if c.key.endswith("psnr") or c.key == "claim/policies_transfer")
    assert ats.claims_table(checks).startswith("| claim (paper 05) |")
    # the sections share one training per (policy, defense): none, random, best1, best2, hybrid, 3-1-7, prune
    assert len(study.rows["convnet"].models) == len({"none", *ats.random_policy_list(1, 0), *study.best["convnet"],
                                                     study.hybrids["convnet"], "3-1-7"}) + 1
