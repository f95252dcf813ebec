"""Notebook 06's privacy matrix (fedrepro.papers.p06_matrix) and the engine's expectation over sampling."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fedrepro import metrics
from fedrepro.attacks import ATTACKS, ServerView, client_update
from fedrepro.attacks.ignore import matched_layers
from fedrepro.attacks.inversion import invert
from fedrepro.attacks.objective import Objective
from fedrepro.data import FederatedData, ImageDataset, federated_split
from fedrepro.papers import check_parameters
from fedrepro.papers import p06_matrix as mx
from fedrepro.papers.p04_leakage import Victims
from fedrepro.papers.p04_training import build_defended_model
from fedrepro.papers.p06_plots import pareto_front
from fedrepro.results import Report

pytestmark = pytest.mark.usefixtures("one_thread")


def _dataset(n: int, split: str, seed: int = 0, classes: int = 4) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)  # smooth images, so that inversion has something to find
    images = (torch.nn.functional.interpolate(low, size=32, mode="bilinear", align_corners=False) * 255).to(torch.uint8)
    return ImageDataset("toy", split, images, torch.arange(n) % classes, [str(i) for i in range(classes)],
                        (0.5,) * 3, (0.25,) * 3)


def _data(clients: int = 2, per_client: int = 16) -> FederatedData:
    train = _dataset(clients * per_client, "train")
    splits = federated_split(train.labels, clients, 0, val_fraction=0.25)
    return FederatedData(train, _dataset(16, "test", seed=1), splits)


def _victims(data: FederatedData, count: int) -> Victims:
    index = torch.arange(count)
    raw = data.train.images[index]
    return Victims("toy", index, data.train.normalize(raw), data.train.labels[index], raw.float() / 255.0)


# --- parameters -----------------------------------------------------------------------------------

def test_parameters_are_checked_with_one_message_per_mistake():
    params = mx.MatrixParameters()
    assert [row.label for row in params.rows] == [spec.replace("prune:ratio", "gc:p") for spec in params.defenses]
    assert set(dataclasses.asdict(params)) == {f.name for f in dataclasses.fields(mx.MatrixParameters)}
    config = params.fedavg_config()
    assert (config.rounds, config.patience, config.optimizer, config.lr) == (params.rounds, None, "adam", 1e-3)
    bad = [({"defenses": ["none", "blur:3"]}, r"^defenses\[1\] = 'blur:3' is invalid"),
           ({"defenses": ["ats:3-1-99"]}, r"^defenses\[0\] = 'ats:3-1-99' is invalid"),
           ({"defenses": ["ats:none"]}, "identity policy is the row 'none'"),
           ({"defenses": ["prune:ratio0.7", "gc:p0.7"]}, r"\['gc:p0.7'\] is listed twice"),
           ({"defenses": []}, "non-empty list"),
           ({"attacks": ["ig", "ig_cvb_update"]}, r"^attacks\[1\] = 'ig_cvb_update' is invalid"),
           ({"update_steps": 0}, r"^update_steps = 0 is invalid"),
           ({"update_lr": 0.0}, r"^update_lr = 0.0 is invalid"),
           ({"attacks": ["ig", "ig"]}, "attacks"),
           ({"states": ["trained", "finished"]}, r"^states\[1\] = 'finished' is invalid"),
           ({"adaptive_base": "eot"}, r"^adaptive_base = 'eot' is invalid"),
           ({"partial_rounds": 2, "rounds": 2}, r"^partial_rounds = 2 is invalid: expected fewer rounds than rounds = 2"),
           ({"victims": 0}, r"^victims = 0 is invalid: expected an integer ≥ 1$"),
           ({"eot_draws": 0}, r"^eot_draws = 0 is invalid"),
           ({"dp_delta": 1.0}, r"^dp_delta = 1.0 is invalid"),
           ({"dataset": "imagenet"}, r"^dataset = 'imagenet' is invalid"),
           ({"model": "vgg"}, r"^model = 'vgg' is invalid")]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            mx.MatrixParameters(**change)
    with pytest.raises(ValueError, match="rounds"):  # the CLI's check, before a kernel starts
        check_parameters("06_privacy_matrix", {"rounds": 1, "partial_rounds": 1, "unrelated": 3})


def test_rows_are_defense_specs_or_policies():
    policy = mx.MatrixDefense.parse("ats:3-01-7+43-18-18")
    assert (policy.label, policy.policy, policy.variational) == ("ats:3-1-7+43-18-18", "3-1-7+43-18-18", False)
    assert policy.defense.kind == "none" and "hybrid" in policy.describe()
    assert mx.MatrixDefense.parse("prune:ratio0.7").label == "gc:p0.7"
    assert mx.MatrixDefense.parse("cvb").variational and not mx.MatrixDefense.parse("dp:C1,sigma1").variational
    assert mx.cell_key("partly trained", "dp:C1,sigma1", "eot", "ssim") == "partly_trained/dp:C1,sigma1/eot/ssim"


def test_bottleneck_attacks_apply_only_to_stochastic_models():
    plain, cvb = build_defended_model("cnn", "none"), build_defended_model("cnn", "cvb")
    for attack in mx.BOTTLENECK_ATTACKS:
        assert mx.attack_config(attack, plain) is None
    ignore = mx.attack_config("ignore", cvb, base="ig", max_iterations=7)
    assert ignore.layers == matched_layers(cvb, "decoder_and_after") and ignore.draws == 1
    eot = mx.attack_config("eot", cvb, draws=5)
    assert eot.layers is None and (eot.draws, eot.draw_mode) == (5, "gradient")
    assert mx.attack_config("eot_ignore", cvb).layers == ignore.layers
    cpl = mx.attack_config("cpl", plain, max_iterations=11, restarts=None)
    assert (cpl.max_iterations, cpl.restarts, cpl.labels) == (11, ATTACKS.get("cpl")().restarts, "idlg")
    assert "ig_multistep" not in mx.gradient_presets() and {"dlg", "ats_adam_l1", "eot", "ig_multistep"} <= set(
        mx.attack_names())
    dp = mx.MatrixDefense.parse("dp:C1,sigma1")
    assert mx.attack_config("ig_multistep", plain, row=dp) is None  # DP-SGD's steps are not unrolled
    assert mx.attack_config("ig_multistep", plain, row=policy_row()).observation == "update"
    policy, hybrid = mx.MatrixDefense.parse("ats:3-1-7"), mx.MatrixDefense.parse("ats:3-1-7+43-18-18")
    assert mx.attack_config("ats_aware", plain) is None and mx.attack_config("ats_aware", plain, row=cvb_row()) is None
    assert mx.attack_config("ats_aware", plain, row=policy, restarts=2).restarts == 2 * 8  # restarts × draws
    assert mx.attack_config("ats_aware", plain, row=hybrid).restarts == 16


def policy_row() -> mx.MatrixDefense:
    return mx.MatrixDefense.parse("ats:3-1-7")


def cvb_row() -> mx.MatrixDefense:
    return mx.MatrixDefense.parse("cvb")


def test_pareto_front_keeps_the_undominated_defenses():
    points = [{"defense": "a", "accuracy": 60, "ssim": 0.8}, {"defense": "b", "accuracy": 50, "ssim": 0.2},
              {"defense": "c", "accuracy": 40, "ssim": 0.3}, {"defense": "d", "accuracy": 55, "ssim": 0.2}]
    assert [p["defense"] for p in pareto_front(points)] == ["d", "a"]


# --- the engine's expectation over sampling -------------------------------------------------------

@pytest.mark.parametrize("mode", ["loss", "gradient"])
def test_draws_change_nothing_on_a_deterministic_model(mode):
    """Averaging S identical draws is one draw: same objective and same gradient, ghost layers included
    (the gradient mode's ghost is one ghost over the positions of all draws, scaled by 1/S)."""
    torch.manual_seed(0)
    model = build_defended_model("cnn", "none").double().train()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([1, 2, 3])
    view = ServerView(model, client_update(model, x, y), 1, (3, 32, 32), (0.5,) * 3, (0.25,) * 3, labels=y[:, None])
    dummy = torch.randn(3, 1, 3, 32, 32, dtype=torch.float64)
    results = []
    for draws in (1, 3):
        config = ATTACKS.get("ig")(draws=draws, draw_mode=mode, label_weight=0.1)
        objective = Objective(view, config, view.names, im2col=True)
        assert objective.ghosts  # the CNN's third convolution and classifier are ghost layers
        targets, norm = objective.targets(view.gradients, torch.arange(3))
        z = dummy.clone().requires_grad_(True)
        total, distance = objective(z, y[:, None], y[:, None], targets, norm)
        (gradient,) = torch.autograd.grad(total.sum(), z)
        results.append((total.detach(), distance.detach(), gradient))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_draws_refuse_nonsense():
    with pytest.raises(ValueError, match="draws"):
        ATTACKS.get("ig")(draws=0)
    with pytest.raises(ValueError, match="draw_mode"):
        ATTACKS.get("ig")(draw_mode="median")


def test_adaptive_attacks_recover_more_than_their_plain_counterparts(cifar10):
    """The small case where averaging must help: the CVB right after the first convolution of an untrained CNN.

    Every gradient the attacker matches there carries the bottleneck's noise (the Ignore attack's kept layers
    too, through backpropagation), so with one draw per evaluation the attacker's own gradient is a noisy
    estimate of its expectation and its signed steps wander; averaging S draws cuts that noise by √S while the
    victim's gradient is the same. Paired over the same 8 CIFAR-10 victims and starts, each adaptive attack must
    beat its counterpart by more than 2 standard errors of the paired differences, on at least 7 of 8 victims."""
    index = torch.arange(8) * 97
    x, y = cifar10.normalize(cifar10.images[index]), cifar10.labels[index]
    originals = cifar10.denormalize(x)
    model = build_defended_model("cnn", "cvb", seed=0).train()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        view = ServerView(model, client_update(model, x, y), 1, (3, 32, 32), cifar10.mean, cifar10.std,
                          labels=y[:, None])
    ssim = {}
    for attack in ("ig", "ignore", "eot", "eot_ignore"):
        config = mx.attack_config(attack, model, base="ig", max_iterations=200, draws=4) or ATTACKS.get("ig")(
            max_iterations=200)
        ssim[attack] = metrics.ssim(originals, invert(view, config, seed=0, progress=False).denormalized())
    for adaptive, plain in (("eot", "ig"), ("eot_ignore", "ignore")):
        d = ssim[adaptive] - ssim[plain]
        se = d.std(ddof=1) / math.sqrt(len(d))
        assert d.mean() > 2 * se and (d > 0).sum() >= 7, (adaptive, plain, ssim[adaptive], ssim[plain])


def test_the_policy_aware_attack_recovers_the_clean_image_better(cifar10):
    """The small case where knowing the policy must help: ATS 3-1-7 (shift by 45 % of the width, contrast,
    small vertical shift, each with a random sign) on an untrained CNN. Plain IG reconstructs the shifted
    image, so against the clean one its SSIM is near 0; the policy-aware attack optimises the clean image
    through each of the 8 possible draws and keeps the best match. Over the same 8 CIFAR-10 victims and
    starts it must beat IG by more than 2 standard errors of the paired differences, on at least 6 of 8
    (measured: mean SSIM 0.03 → 0.17, 6 of 8; the blanked part of a shifted image cannot be recovered)."""
    index = torch.arange(8) * 97
    x, y = cifar10.normalize(cifar10.images[index]), cifar10.labels[index]
    victims = Victims("cifar10", index, x, y, cifar10.denormalize(x))
    model = build_defended_model("cnn", "none", seed=0).train()
    row = mx.MatrixDefense.parse("ats:3-1-7")
    mean, std = tuple(cifar10.mean), tuple(cifar10.std)
    update = mx.victim_update(model, row, victims, mean, std, seed=0, state="untrained")
    ssim = {}
    for attack in ("ig", "ats_aware"):
        config = mx.attack_config(attack, model, base="ig", max_iterations=200, row=row)
        transform = mx.PolicyAwareTransform(row.policy, mean, std) if attack == "ats_aware" else None
        images, _, _ = mx.attack_stack(model, [update], y, config, mean, std, transform=transform)
        ssim[attack] = metrics.ssim(victims.originals, images[0])
    d = ssim["ats_aware"] - ssim["ig"]
    assert d.mean() > 2 * d.std(ddof=1) / math.sqrt(len(d)) and (d > 0).sum() >= 6, (ssim["ats_aware"], ssim["ig"])


# --- cells and batches ----------------------------------------------------------------------------

def test_a_cell_does_not_depend_on_the_rows_that_share_its_batch():
    """Rows on one model are attacked in one stacked view; each victim keeps its start (init_keys) and each
    row its own client-side noise, so a row alone and in a stack give the same reconstructions (float64)."""
    data = _data()
    victims = _victims(data, 3)
    model = build_defended_model("cnn", "none").double()
    rows = [mx.MatrixDefense.parse(spec) for spec in ("gaussian:std0.01", "none", "int8", "ats:3-1-7")]
    mean, std = data.train.mean, data.train.std
    updates = {row.label: mx.victim_update(model, row, victims, mean, std, seed=0, state="untrained") for row in rows}
    again = mx.victim_update(model, rows[0], victims, mean, std, seed=0, state="untrained")
    torch.testing.assert_close(again.gradients, updates[rows[0].label].gradients, rtol=0, atol=0)
    config = ATTACKS.get("ig")(max_iterations=8)
    stacked, labels, _ = mx.attack_stack(model, [updates[r.label] for r in rows], victims.labels, config, mean, std)
    for row, images in zip(rows, stacked):
        alone, _, _ = mx.attack_stack(model, [updates[row.label]], victims.labels, config, mean, std)
        torch.testing.assert_close(alone[0], images, rtol=0, atol=1e-9)
    reversed_stack, _, _ = mx.attack_stack(model, [updates[r.label] for r in rows[::-1]], victims.labels, config,
                                           mean, std)
    torch.testing.assert_close(reversed_stack[::-1], stacked, rtol=0, atol=1e-9)
    assert not torch.equal(stacked[0], stacked[1])  # the defense changed what the attack found


def test_the_study_fills_every_cell_and_records_it():
    params = mx.MatrixParameters(
        defenses=["none", "gaussian:std0.01", "dp:C1,sigma1", "cvb", "ats:3-1-7", "gc:p0.9"],
        attacks=["ig", "idlg", "eot_ignore", "ats_aware", "ig_multistep", "topk_aware"],
        num_clients=2, rounds=2, partial_rounds=1, victims=2, max_iterations=3, eot_draws=2, fl_workers=1,
        dp_delta=1e-3)
    report = Report("06_privacy_matrix", paper="06", tier="smoke", parameters={})
    study = mx.MatrixStudy(params, report=report, data=_data(), progress=False)
    cells = study.run()
    plain = study.rows_by_kind("plain")
    assert all(study.model(row, "untrained") is study.model(plain[0], "untrained") for row in plain)
    shared = study.model(plain[0], "untrained").state_dict()
    for row in plain:  # stacking them is right: every row without a bottleneck starts from the same weights
        own = study.trained[row.label].states["untrained"].state_dict()
        assert all(torch.equal(own[k], shared[k]) for k in shared)
    assert study.model(plain[0], "trained") is not study.model(plain[1], "trained")
    # ig, idlg everywhere; eot_ignore on the CVB, ats_aware on ATS, topk_aware on gc, ig_multistep on all but DP
    expected = len(params.states) * (len(params.defenses) * 2 + 3 + len(params.defenses) - 1)
    assert len(cells) == expected
    assert study.cell("trained", "dp:C1,sigma1", "ig_multistep") is None
    update, gradient = study.updates[("trained", "none", True)], study.updates[("trained", "none", False)]
    assert update.local == params.local_training() and gradient.local is None
    # w0 − wK after K steps of lr η on one image: not the gradient, but η·K·g to first order
    k, lr = params.update_steps, params.update_lr
    ratio = torch.cat([u.flatten() for u in update.gradients.values()]).norm() / torch.cat(
        [g.flatten() for g in gradient.gradients.values()]).norm()
    assert 0.5 * k * lr < ratio < 1.5 * k * lr
    assert study.cell("trained", "none", "eot_ignore") is None and study.cell("trained", "cvb", "eot_ignore")
    assert study.cell("untrained", "none", "ats_aware") is None and study.cell("untrained", "ats:3-1-7", "ats_aware")
    for state in params.states:
        for row in study.rows:
            assert 0 <= report.metrics[mx.cell_key(state, row.label, "ig", "asr")] <= 100
            assert 0 <= report.metrics[mx.cell_key(state, row.label, "idlg", "label_accuracy")] <= 1
            assert mx.cell_key(state, row.label, "ig", "label_accuracy") not in report.metrics  # labels known
        assert mx.cell_key(state, "ats:3-1-7", "ig", "psnr_transformed") in report.metrics
    assert 0 < report.metrics["dp:C1,sigma1/epsilon"] < math.inf
    assert all(f"{row.label}/accuracy" in report.metrics for row in study.rows)
    assert np.isnan(study.matrix("trained")[0, 2]) and not np.isnan(study.matrix("trained")[3, 2])
    tables = study.tables()
    assert tables.count("**") >= 2 * len(params.states) * len(params.defenses) and "n/a" in tables
    points = study.utility_points()
    assert [p["defense"] for p in points] == [row.label for row in study.rows]
    gains = study.adaptive_gains()
    assert "Pareto" in mx.utility_table(points) and "eot_ignore beats" not in gains  # no ignore column
    assert "ats_aware beats ig (ats:3-1-7, untrained)" in gains and "ats_aware beats ig (none" not in gains
    assert "topk_aware beats ig (gc:p0.9, trained)" in gains
    assert len(study.worst_cases()) == len(params.defenses)
    assert set(study.seconds()) == set(params.states) | {"training"}


def test_the_compression_aware_attack_compresses_its_gradient_as_the_client_did():
    """space="topk": the dummy's gradient, compressed per tensor to the victim's number of sent entries, is
    exactly what the client's own pruning makes of it (so the attack compares in the compressed space)."""
    from fedrepro.attacks.objective import same_sparsity
    from fedrepro.defenses import Pruning

    g = {"w": torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(0)), "b": torch.randn(3, 8)}
    for ratio in (0.0, 0.7, 0.99, 1.0):
        sent = Pruning(ratio)(g)
        for name in g:
            torch.testing.assert_close(same_sparsity(g[name], sent[name]), sent[name], rtol=0, atol=0)
    plain, policy = build_defended_model("cnn", "none"), mx.MatrixDefense.parse("ats:3-1-7")
    assert mx.attack_config("topk_aware", plain, row=policy) is None
    config = mx.attack_config("topk_aware", plain, row=mx.MatrixDefense.parse("prune:ratio0.7"), max_iterations=9)
    assert (config.space, config.max_iterations, config.distance) == ("topk", 9, "cosine")
