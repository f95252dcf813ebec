"""Notebook 04's experiment logic: defense specs, the Ignore attack's layer set, the KL term in the victim
gradient, gradient defenses in training, and that the CVB lowers IG's SSIM on an untrained CNN."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedrepro.attacks import DefendedStep, client_update
from fedrepro.attacks.ignore import default_ignore, ignored_parameters, matched_layers
from fedrepro.data import DatasetNotFoundError, FederatedData, federated_split
from fedrepro.defenses import DPSGD
from fedrepro.defenses.variational import CVB, PublicCodeCVB, bottlenecks, decoder_name
from fedrepro.fl import ClientData, FedAvgConfig, StandardTrainer
from fedrepro.papers import p04_cvb as cvb
from fedrepro.results import Report, paper_values
from fedrepro.runner import notebook_parameters, tier_parameters
from fedrepro.sweep import SweepSpec

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "04_cvb.ipynb"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_defense_specs_parse_to_canonical_labels():
    assert cvb.Defense.parse("cvb").label == "cvb"
    assert cvb.Defense.parse("cvb:k=5,s0.5,beta0.1").label == "cvb"  # defaults are left out
    assert cvb.Defense.parse("precode:P=1,K=32,beta=0.01").label == "precode:P1,K32,beta0.01"
    assert cvb.Defense.parse("cvb:P1+2,k1").values["P"] == (1, 2)
    assert cvb.Defense.parse("dp").label == "dp:sigma1" and cvb.Defense.parse("gc").label == "gc:p0.9"
    assert cvb.Defense.parse("cvb:klsum")["kl"] == "sum"
    with pytest.raises(ValueError, match="takes P, k, s, beta, kl"):
        cvb.Defense.parse("cvb:q3")
    with pytest.raises(ValueError, match="unknown defense"):
        cvb.Defense.parse("dropout")
    assert isinstance(cvb.Defense.parse("dp:sigma0.01").gradient_defense(), DPSGD)
    assert cvb.Defense.parse("cvb").gradient_defense() is None


def test_every_setting_the_paper_reports_has_its_key():
    keys = {key for (paper, key) in paper_values() if paper == "04"}
    for defense in cvb.TABLE_II + cvb.TABLE_IV:
        for dataset in ("cifar10",) if defense in cvb.TABLE_II else ("mnist", "cifar10"):
            assert cvb.result_key(dataset, "cnn", defense, "accuracy") in keys
            assert cvb.result_key(dataset, "cnn", defense, "asr", "ig") in keys
    for defense, subsets in cvb.TABLE_I.items():
        for ignore in subsets:
            assert cvb.result_key("cifar10", "cnn", defense, "asr", "ig", ignore) in keys
    for dataset in ("mnist", "cifar10"):
        for attack in ("idlg", "cpl", "ig"):
            assert cvb.result_key(dataset, "cnn", "cvb", "ssim", attack) in keys
        for model, defense in cvb.TABLE_V.items():
            assert cvb.result_key(dataset, model, defense, "ssim", "ig") in keys
    for dataset, defense in cvb.TABLE_VI.items():
        assert cvb.result_key(dataset, "cnn", defense, "accuracy") in keys
    assert cvb.parameter_key("cnn", "precode:P1") in keys and cvb.parameter_key("cnn", "none") in keys


def _forward_order(model: torch.nn.Module) -> list[str]:
    """Modules with parameters in the order a forward pass calls them."""
    calls: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: calls.append(name))
             for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return calls


@pytest.mark.parametrize("model_name,defense", [("cnn", "precode:P3"), ("cnn", "precode:P2"), ("cnn", "cvb"),
                                                ("cnn", "cvb:P2+3"), ("vit", "cvb:k3"), ("resnet18", "cvb:beta5e-05")])
def test_ignore_attack_matches_exactly_the_layers_before_the_decoder(model_name, defense):
    model = cvb.build_defended_model(model_name, defense)
    decoder = decoder_name(model)
    order = _forward_order(model)
    first = order.index(decoder)
    module_of = {f"{m}.{p}": m for m in order for p, _ in model.get_submodule(m).named_parameters(recurse=False)}
    kept = set(matched_layers(model, "decoder_and_after"))
    dropped = set(ignored_parameters(model, "decoder_and_after"))
    assert kept | dropped == set(module_of) and not kept & dropped
    assert kept == {name for name, module in module_of.items() if order.index(module) < first}
    assert dropped == {name for name, module in module_of.items() if order.index(module) >= first}
    assert default_ignore(model) == "decoder_and_after"
    assert default_ignore(cvb.build_defended_model(model_name, "none")) == "none"


def test_table_i_subsets_on_precode_at_p2():
    model = cvb.build_defended_model("cnn", "precode:P2")
    assert matched_layers(model, "none") is None
    assert ignored_parameters(model, "decoder") == ["layers.relu2.1.decoder.weight"]
    assert ignored_parameters(model, "classifier") == ["layers.fc.weight", "layers.fc.bias"]
    assert ignored_parameters(model, "after_decoder") == ["layers.conv3.weight", "layers.conv3.bias",
                                                               "layers.fc.weight", "layers.fc.bias"]
    assert ignored_parameters(model, "between") == ["layers.conv3.weight", "layers.conv3.bias"]
    assert [len(subsets) for subsets in cvb.TABLE_I.values()] == [4, 6]  # the paper's rows with PRECODE
    with pytest.raises(ValueError, match="no layer between its decoder"):  # at P = 3 there is none
        ignored_parameters(cvb.build_defended_model("cnn", "precode:P3"), "between")
    assert matched_layers(model, "decoder_and_after") == ("layers.conv1.weight", "layers.conv1.bias",
                                                              "layers.conv2.weight", "layers.conv2.bias",
                                                              "layers.relu2.1.encoder.weight")


def test_kl_term_is_in_the_victim_gradient():
    """The victim's gradient minus the CE-only gradient under the same noise is exactly β·∇KL: present in
    the encoders (μ and σ), absent from the decoder and later layers, which the KL does not depend on."""
    torch.manual_seed(0)
    model = cvb.build_defended_model("cnn", "cvb")
    ce_only = copy.deepcopy(model)
    (_, bottleneck), = bottlenecks(model)
    (_, silent), = bottlenecks(ce_only)
    silent.beta = 0.0
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([1, 4, 7])
    torch.manual_seed(1)
    full = client_update(model, x, y)
    torch.manual_seed(1)
    plain = client_update(ce_only, x, y)
    model.train()
    for i in range(3):  # β·∇KL of each victim, computed directly (the KL involves no noise)
        model.zero_grad()
        model(x[i:i + 1])
        bottleneck.regularization_loss().backward()
        for name, parameter in model.named_parameters():
            expected = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
            torch.testing.assert_close(full[name][i] - plain[name][i], expected, atol=1e-6, rtol=1e-4)
    sigma = "layers.relu1.1.sigma.weight"
    assert (full[sigma] - plain[sigma]).abs().sum() > 0
    assert torch.equal(full["layers.relu1.1.decoder.weight"], plain["layers.relu1.1.decoder.weight"])


def test_victim_gradients_are_stochastic_from_the_decoder_on():
    model = cvb.build_defended_model("cnn", "cvb")
    image, label = torch.randn(3, 32, 32), torch.tensor(3)
    cosine = cvb.gradient_stochasticity(model, image, label, draws=6)
    assert cosine["layers.relu1.1.decoder.weight"] < 0.5 and cosine["layers.conv2.weight"] < 0.5
    plain = cvb.gradient_stochasticity(cvb.build_defended_model("cnn", "none"), image, label, draws=3)
    assert min(plain.values()) > 0.999


def test_cvb_kl_is_averaged_over_positions_by_default():
    (_, mean), = bottlenecks(cvb.build_defended_model("cnn", "cvb"))
    (_, summed), = bottlenecks(cvb.build_defended_model("cnn", "cvb:klsum"))
    assert isinstance(mean, CVB) and mean.beta == summed.beta == pytest.approx(0.1)  # the paper's β, unscaled
    assert (mean.kl_reduction, summed.kl_reduction) == ("mean_positions", "sum")
    torch.manual_seed(0)
    z = torch.randn(2, 16, 14, 14)
    mean.train()(z)
    mu, sigma = mean.encode(z)
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2 * sigma.log() - 1)
    assert mean.regularization_loss().item() == pytest.approx(0.1 * kl.sum(1).mean().item(), rel=1e-5)


def test_public_code_kl_is_available_for_comparison():
    (_, module), = bottlenecks(cvb.build_defended_model("cnn", "cvb:klcode"))
    assert isinstance(module, PublicCodeCVB) and module.beta == pytest.approx(0.1)
    assert module.kl_reduction == "mean_positions"
    torch.manual_seed(0)
    z = torch.randn(2, 16, 14, 14)
    module.train()(z)
    mu, sigma = module.encode(z)
    expected = (-0.5 * (1 + sigma - mu.pow(2) - sigma.exp())).sum(1).mean()  # smallest at sigma = 0
    assert module.regularization_loss().item() == pytest.approx(0.1 * expected.item(), rel=1e-5)


def test_pruning_during_training_moves_only_the_kept_weights():
    """One local step with gradient compression p = 0.99: Adam's first update is zero wherever the
    gradient was pruned, so about 1 % of each layer's weights move."""
    torch.manual_seed(0)
    model = cvb.build_defended_model("cnn", "none")
    before = copy.deepcopy(model.state_dict())
    data = ClientData(0, torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)), torch.empty(0, 3, 32, 32),
                      torch.empty(0, dtype=torch.long))
    trainer = StandardTrainer(gradient_transform=DefendedStep(cvb.Defense.parse("gc:p0.99").gradient_defense()))
    metrics = trainer(model, data, FedAvgConfig(rounds=1, batch_size=16), round_=1)
    assert metrics["train_loss"] > 0
    for name, value in model.state_dict().items():
        moved = (value != before[name]).float().mean().item()
        assert moved <= 0.011 + 1 / value.numel(), name
    assert (model.state_dict()["layers.conv2.weight"] != before["layers.conv2.weight"]).any()


def test_dp_training_round_runs_with_the_victims_defense(cifar10):
    """A DP round starts from the same weights as an undefended one and ends elsewhere: the clipped, noised
    step is the one applied (a DP defense that was silently skipped would end on the undefended weights)."""
    test = cifar10.subset(list(range(0, 50000, 500)))
    splits = federated_split(cifar10.labels, 2, seed=0, samples_per_client=40)
    data = FederatedData(cifar10, test, splits)
    config = FedAvgConfig(rounds=1, batch_size=20, workers=1)
    run = cvb.train_model("cnn", "dp:sigma0.01", data, config, progress=False)
    plain = cvb.train_model("cnn", "none", data, config, progress=False)
    assert isinstance(run, cvb.DefendedRun) and run.rounds == 1
    assert run.accuracy == pytest.approx(100 * run.result.best_accuracy)
    assert torch.equal(run.initial.layers.conv1.weight, plain.initial.layers.conv1.weight)
    assert not torch.equal(run.initial.layers.conv1.weight, run.model.layers.conv1.weight)
    assert not torch.equal(run.model.layers.conv1.weight, plain.model.layers.conv1.weight)


# Measured (untrained CNN, seed 0, 4 victims of client 0 of a 10-client split, 200 iterations of paper 04's
# IG, one thread): mean SSIM 0.37 without defense vs 0.10 with the CVB under the Ignore attack.
SSIM_MARGIN = 0.15


def test_cvb_lowers_ssim_under_ig_on_an_untrained_cnn(cifar10):
    splits = federated_split(cifar10.labels, 10, seed=0, samples_per_client=200)
    data = FederatedData(cifar10, cifar10.subset(list(range(10))), splits)
    victims = cvb.client_victims(data, 4, seed=0)
    found = {}
    for defense in ("none", "cvb"):
        model = cvb.build_defended_model("cnn", defense, seed=0)
        found[defense] = cvb.privacy_leakage(model, victims, cifar10.mean, cifar10.std, defense=defense,
                                             max_iterations=200, seed=0, progress=False)
    assert found["none"].ignore == "none" and found["cvb"].ignore == "decoder_and_after"
    assert found["none"].ssim_mean - found["cvb"].ssim_mean >= SSIM_MARGIN, (found["none"].ssim, found["cvb"].ssim)


def test_study_records_numbers_under_the_papers_keys(cifar10, tmp_path):
    report = Report("04_cvb", paper="04", tier="smoke", parameters={})
    study = cvb.CVBStudy(cvb.StudyConfig(rounds=1, samples_per_client=20, test_samples=50, victims=1, max_iterations=3,
                                      workers=1, progress=False), report=report)
    rows = cvb.table_ii(study, defenses=("none",), extra=("cvb",))
    assert [r["defense"] for r in rows] == ["none", "cvb"]
    assert rows[0]["parameters"] == 65_962 and rows[1]["parameters"] == 72_490
    for key in ("cifar10/cnn/none/ig/ssim", "cifar10/cnn/cvb/ig/asr", "cifar10/cnn/cvb/accuracy", "cnn/parameters"):
        assert key in report.metrics and report.reported(key) is not None
    table = cvb.paper_table(rows, report, "smoke", "Table II", columns=("ssim", "asr", "accuracy", "parameters"))
    assert "| no defense |" in table and "67.17" in table and "65,962" in table
    assert len(cvb.scatter_rows(rows)) == 2
    assert len(rows[1]["ssim_values"]) == 1 and rows[1]["accuracy_values"] == [rows[1]["accuracy"]]
    assert rows[1]["test_images"] == 50
    checks = cvb.central_claims(study, rows, ["cvb"])  # the notebook's claim table on these rows
    assert [c.verdict for c in checks[:2]] == ["no spread"] * 2  # one victim: no spread over victims
    assert {c.key for c in checks} == {"claim/undefended_leaks", "claim/cvb_defeats_ignore",
                                       "claim/cvb_accuracy_matches", "claim/precode_early_parameters"}
    assert report.metrics["claim/undefended_leaks"] == 0.0 and report.metrics["claim/precode_early_parameters"] == 1.0


def test_figures_render_from_rows_and_leakages():
    import matplotlib
    matplotlib.use("Agg")
    import numpy as np

    from fedrepro.papers import p04_plots as cvb_plots

    report = Report("04_cvb", paper="04", tier="smoke", parameters={})
    rows = {title: [{"label": tick, "accuracy": 60.0 + i, "ssim": 0.1 * i,
                     "accuracy_key": cvb.result_key("cifar10", "cnn", d, "accuracy"),
                     "ssim_key": cvb.result_key("cifar10", "cnn", d, "ssim", "ig")}
                    for i, (tick, d) in enumerate(settings)] for title, settings in cvb.FIGURE_9.values()}
    fig = cvb_plots.plot_hyperparameter_study(rows, baseline={"accuracy": 62.0, "ssim": 0.8}, report=report)
    assert len(fig.axes) == 8  # four panels, each with a twin axis
    points = [{"dataset": d, "model": m, "defense": f, "accuracy": 60.0, "ssim": 0.3, "attack": "ig", "ignore": "auto",
               "accuracy_key": cvb.result_key(d, m, f, "accuracy"), "ssim_key": cvb.result_key(d, m, f, "ssim", "ig")}
              for d in ("mnist", "cifar10") for m, f in [("cnn", "none"), ("cnn", "cvb"), ("vit", "cvb:k3")]]
    fig = cvb_plots.plot_utility_privacy(cvb.scatter_rows(points), report=report)
    assert len(fig.axes) == 2  # ours and the paper's
    images = torch.rand(3, 3, 32, 32)
    found = cvb.Leakage("x", "ig", "none", np.array([0.9, 0.2, 0.6]), np.zeros(3), np.zeros(3), images, images,
                        torch.ones(3), 0.0)
    assert found.asr == pytest.approx(100 * 2 / 3)
    fig = cvb_plots.reconstruction_grid([found, found], ["a", "b"], count=2)
    assert len(fig.axes) == 3 * 2  # originals and two settings, two victims each
    grids = cvb_plots.reconstruction_grids({"mnist": ([found], ["a"]), "cifar10": ([found], ["b"])}, count=3,
                                           title="Figure 10", tier="smoke")
    assert [g._suptitle.get_text() for g in grids] == ["Figure 10: mnist (smoke tier)", "Figure 10: cifar10 (smoke tier)"]
    fig = cvb_plots.plot_ssim_spread([found], ["a"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["ASR 67%"]
    fig = cvb_plots.plot_gradient_stochasticity({"m": {"a.weight": 1.0, "a.bias": 1.0, "dec.decoder.weight": 0.1}})
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "dec.decoder"]  # weights only


def test_table_vi_offline_fails_before_training_with_how_to_provide_the_data(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr("fedrepro.data._download", offline)  # the cached CIFAR-10 loads, MedMNIST would download
    study = cvb.CVBStudy(cvb.StudyConfig(rounds=1, progress=False))
    with pytest.raises(DatasetNotFoundError, match="(?s)'bloodmnist'.*no internet.*FEDREPRO_DATA"):
        cvb.table_vi(study, {"cifar10": "cvb", "bloodmnist": "cvb"})
    assert study._trained == {} and study._leakage == {}  # the available dataset before it was not trained


# --- the notebook's parameters and sections -----------------------------------------------------

def _parameter_sets() -> list[dict]:
    """The parameters cell, each tier's overrides on it, and each sweep point's on its tier."""
    defaults = notebook_parameters(NOTEBOOK)
    sets = [defaults] + [defaults | tier_parameters(NOTEBOOK, tier) for tier in ("quick", "gpu", "paper")]
    for path in (REPO / "parameters" / "sweeps").glob("04_cvb_*.yaml"):
        spec = SweepSpec.from_yaml(path)
        sets += [defaults | tier_parameters(NOTEBOOK, spec.tier) | point for point in spec.expand()]
    return sets


def test_every_tier_and_sweep_is_valid_and_recorded_whole():
    """Every parameter of the cell is a field, so results.json identifies its run, and every parameter set
    the runner can produce passes validation."""
    sets = _parameter_sets()
    assert len(sets) > 3
    for values in sets:
        params = cvb.CVBParameters(**values)
        assert dataclasses.asdict(params) == values
    assert {f.name for f in dataclasses.fields(cvb.CVBParameters)} == set(sets[0])


def test_parameters_map_onto_the_study_config():
    params = cvb.CVBParameters(**notebook_parameters(NOTEBOOK))
    config = params.study_config()
    assert (config.rounds, config.victims, config.max_iterations, config.lbfgs_iterations) == (1, 2, 100, 100)
    assert config.accuracy_seeds == () and config.samples_per_client == 100 and config.test_samples == 500
    paper = cvb.CVBParameters().study_config()  # the dataclass's defaults are the paper's protocol
    assert (paper.rounds, paper.patience, paper.victims, paper.max_iterations) == (300, 40, 128, 20_000)


@pytest.mark.parametrize("change,message", [
    ({"tier": "fast"}, r"tier = 'fast' is invalid: choose one of smoke, quick, gpu, paper$"),
    ({"tables": ["II", "VII"]}, r"tables\[1\] = 'VII' is invalid: choose one of I, II"),
    ({"tables": "II"}, r"tables = 'II' is invalid: expected a list of names from I, II"),
    ({"datasets": ["svhn"]}, r"datasets\[0\] = 'svhn' is invalid: choose one of .*cifar10"),
    ({"attack_state": "final"}, r"attack_state = 'final' is invalid: choose one of initial, trained$"),
    ({"victims": 0}, r"victims = 0 is invalid: expected an integer ≥ 1$"),
    ({"rounds": 2.5}, r"rounds = 2.5 is invalid: expected an integer ≥ 1$"),
    ({"patience": 0}, r"patience = 0 is invalid: expected an integer ≥ 1, or None$"),
    ({"accuracy_seeds": [1, -2]}, r"accuracy_seeds\[1\] = -2 is invalid: expected an integer ≥ 0$"),
    ({"tv_weight": -0.1}, r"tv_weight = -0.1 is invalid: expected a number ≥ 0$"),
    ({"table3_attacks": ["dlg"]}, r"table3_attacks\[0\] = 'dlg' is invalid: choose one of ig, idlg, cpl"),
    ({"table4_defenses": ["none", "dropout"]}, r"table4_defenses\[1\] = 'dropout' is invalid: unknown defense"),
    ({"table2_extra": ["cvb:q3"]}, r"table2_extra\[0\] = 'cvb:q3' is invalid: .*takes P, k, s, beta, kl"),
    ({"table5_models": {"vgg": "cvb"}}, r"table5_models\[0\] = 'vgg' is invalid: choose one of "),
    ({"table6_datasets": {"bloodmnist": 3}},
     r"table6_datasets\['bloodmnist'\] = 3 is invalid: expected a defense spec such as 'cvb:k3'$"),
    ({"figure9_panels": ["K"]}, r"figure9_panels\[0\] = 'K' is invalid: choose one of P, k, s, beta"),
    ({"device": "gpu"}, r"device = 'gpu' is invalid: expected 'auto', 'cpu'"),
    ({"results_dir": ""}, r"results_dir = '' is invalid: expected a folder path$"),
])
def test_invalid_parameters_are_named_with_their_valid_values(change, message):
    with pytest.raises(ValueError, match=message):
        cvb.CVBParameters(**change)


class FakeStudy:
    """Records which settings a section asks for, and answers with the arguments it got."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.config = SimpleNamespace(seed=0)

    def leakage(self, dataset, model_name, defense, attack="ig", ignore="auto"):
        self.calls.append((dataset, model_name, defense, attack, ignore))
        return self.calls[-1]


def test_table_i_has_the_papers_rows_and_names_each_dropped_subset():
    class RowStudy:
        def row(self, dataset, model_name, defense, ignore="auto", accuracy=True, label=None):
            return {"defense": defense, "ignore": ignore, "label": label}

    rows = cvb.table_i(RowStudy())
    assert len(rows) == 1 + 4 + 6  # the undefended CNN, then the paper's PRECODE rows at P = 3 and P = 2
    assert [(r["defense"], r["ignore"]) for r in rows[-6:]] == [
        ("precode:P2", s) for s in ("none", "decoder", "classifier", "between", "after_decoder", "decoder_and_after")]
    assert rows[-3]["label"] == "PRECODE P = 2: dropping layers between decoder and classifier"
    assert rows[-2]["label"] == "PRECODE P = 2: dropping after decoder"  # the other rows read as before


def test_figures_7_and_10_ask_for_each_setting_in_the_papers_order():
    study = FakeStudy()
    leakages, labels = cvb.figure_7(study, ["cvb", "cvb:klcode"])
    assert [c[2] for c in leakages] == ["none", "precode:P3", "precode:P2", "precode:P1", "cvb", "cvb:klcode"]
    assert labels == ["none (IG)", "PRECODE P=3", "PRECODE P=2", "PRECODE P=1", "cvb", "cvb:klcode"]
    study.calls.clear()
    grids = cvb.figure_10(study, ["mnist", "cifar10"], {"cnn": "cvb", "vit": "cvb:k3"})
    assert list(grids) == ["mnist", "cifar10"]
    assert grids["mnist"][1] == ["cnn none", "cnn CVB", "vit none", "vit CVB"]
    assert [c[:3] for c in study.calls[:4]] == [("mnist", "cnn", "none"), ("mnist", "cnn", "cvb"),
                                                ("mnist", "vit", "none"), ("mnist", "vit", "cvb:k3")]
    assert len(study.calls) == 8


def test_row_leakages_use_each_rows_attack_and_subset():
    rows = [{"dataset": "cifar10", "model": "cnn", "defense": "precode:P3", "attack": "ig", "ignore": "decoder",
             "label": "P = 3: dropping decoder"},
            {"dataset": "mnist", "model": "cnn", "defense": "cvb", "attack": "cpl", "ignore": "auto", "label": 7}]
    leakages, labels = cvb.row_leakages(FakeStudy(), rows)
    assert leakages == [("cifar10", "cnn", "precode:P3", "ig", "decoder"), ("mnist", "cnn", "cvb", "cpl", "auto")]
    assert labels == ["P = 3: dropping decoder", "7"]


def test_parameter_listing_counts_every_setting_exactly():
    study = cvb.CVBStudy(cvb.StudyConfig(progress=False))
    listing = cvb.parameter_listing(study, {"cnn": ("none", "precode:P1", "cvb")}).splitlines()
    assert listing[0].split() == ["cnn", "none", "65,962", "parameters", "(+0,", "+0.000", "%)"]
    assert listing[1].split()[1:5] == ["precode:P1", "141,226", "parameters", "(+75,264,"]
    assert listing[2].split()[1:5] == ["cvb", "72,490", "parameters", "(+6,528,"]
    assert sum(len(d) for d in cvb.PARAMETER_SETTINGS.values()) == 13


def test_figure_9_tables_one_per_panel():
    panels = {title: [{"label": tick, "accuracy": 60.0, "ssim": 0.2, "asr": 0.0} for tick, _ in settings]
              for title, settings in cvb.FIGURE_9.values()}
    text = cvb.figure_9_tables(panels, None, "smoke")
    assert [line for line in text.splitlines() if line.startswith("**")] == [
        f"**Figure 9: {title}**" for title in panels]


def test_stochasticity_panels_probe_the_first_victim_of_each_setting():
    model = cvb.build_defended_model("cnn", "none")
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([3, 5])
    study = SimpleNamespace(config=SimpleNamespace(seed=0), victims=lambda dataset: SimpleNamespace(
        images=images, labels=labels), initial_model=lambda dataset, model_name, defense: cvb.build_defended_model(
        model_name, defense))
    panels = cvb.stochasticity_panels(study, {"plain": "none", "CVB": "cvb"}, draws=3)
    assert list(panels) == ["plain", "CVB"]
    assert panels["plain"] == cvb.gradient_stochasticity(model, images[0], labels[0], draws=3)
    assert panels["CVB"]["layers.relu1.1.decoder.weight"] < 0.9
