"""PRECODE and CVB: the paper's exact parameter counts, the KL term in the loss, placement."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedrepro.defenses.variational import (CVB, MODEL_DEFENSES, PRECODE, add_cvb, add_precode, bottlenecks,
                                           decoder_name)
from fedrepro.fl import model_loss
from fedrepro.models import build_model, count_parameters

BASELINE = 65_962  # paper 04, Table II


@pytest.mark.parametrize("position,added,percent", [(3, 6_144, 9.31), (2, 38_400, 58.22), (1, 75_264, 114.10)])
def test_precode_parameter_counts_match_table_ii(position, added, percent):
    assert count_parameters(build_model("cnn")) == BASELINE
    measured = count_parameters(add_precode(build_model("cnn"), position)) - BASELINE
    assert measured == added
    assert round(100 * measured / BASELINE, 2) == percent


@pytest.mark.parametrize("kernel,added,percent", [(3, 2_432, 3.68), (5, 6_528, 9.9)])
def test_cvb_parameter_counts_match_the_paper(kernel, added, percent):
    measured = count_parameters(add_cvb(build_model("cnn"), 1, kernel_size=kernel, scale=0.5)) - BASELINE
    assert measured == added
    assert 100 * measured / BASELINE == pytest.approx(percent, abs=0.01)  # the paper truncates 3.687 to 3.68
    assert measured == 2 * kernel**2 * 16 * 8 + 8 * 16  # 2·k_E²·c·K_E + K_E·c


def test_kl_is_part_of_the_training_loss_and_absent_in_eval():
    torch.manual_seed(0)
    model = add_cvb(build_model("cnn"), 1, beta=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    model.train()
    logits = model(x)
    (_, cvb), = bottlenecks(model)
    assert cvb.regularization_loss() > 0
    assert model_loss(model, logits, y).item() == pytest.approx(
        F.cross_entropy(logits, y).item() + cvb.regularization_loss().item(), rel=1e-6)
    # the KL's gradient reaches the encoder: the σ encoder gets gradient even with a zero CE weight
    cvb.regularization_loss().backward()
    assert cvb.sigma.weight.grad.abs().sum() > 0
    model.eval()
    model(x)
    assert cvb.regularization_loss().item() == 0.0


def test_training_forward_is_stochastic_and_eval_is_deterministic():
    model = add_precode(build_model("cnn"), 3)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_kl_matches_the_closed_form():
    layer = PRECODE(features=6, k=3, beta=1.0).train()
    z = torch.randn(5, 6)
    layer(z)
    mu, sigma = layer.encode(z)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                                 torch.distributions.Normal(0.0, 1.0)).sum(1).mean()
    assert layer.regularization_loss().item() == pytest.approx(expected.item(), rel=1e-5)


def test_placement_and_decoder_names():
    cnn = add_cvb(build_model("cnn"), (1, 3))
    assert [name for name, _ in bottlenecks(cnn)] == ["layers.relu1.1", "layers.relu3.1"]
    assert decoder_name(cnn) == "layers.relu1.1.decoder"
    vit = add_cvb(build_model("vit"), 1, kernel_size=3)
    assert decoder_name(vit) == "blocks.0.1.bottleneck.decoder"
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    (_, cvb), = bottlenecks(vit)
    assert isinstance(cvb, CVB) and cvb.mu.out_channels == 32  # K_E = ½ · 64 patches, as in the paper
    resnet = add_cvb(build_model("resnet18"), 1)
    assert decoder_name(resnet) == "layer1.1.decoder" and resnet(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="positions 1..3"):
        add_cvb(build_model("cnn"), 4)
    with pytest.raises(ValueError, match="no variational bottleneck"):
        decoder_name(build_model("cnn"))


def test_registry_by_name():
    model = MODEL_DEFENSES.get("cvb")(build_model("cnn"), position=1, kernel_size=3)
    assert count_parameters(model) == BASELINE + 2_432


@pytest.mark.parametrize("make,positions", [
    (lambda r: CVB(4, 2, kernel_size=3, beta=0.1, kl_reduction=r), 5 * 7),   # a 5×7 latent map
    (lambda r: PRECODE(features=6, k=3, beta=0.1, kl_reduction=r), 1),        # a latent vector: one position
])
def test_kl_reductions_differ_by_exactly_the_map_size(make, positions):
    z = torch.randn((3, 4, 5, 7) if positions > 1 else (3, 6), generator=torch.Generator().manual_seed(1))
    losses = {}
    for reduction in ("mean_positions", "sum"):
        torch.manual_seed(0)  # same weights for both reductions
        layer = make(reduction).train()
        layer(z)
        losses[reduction] = layer.regularization_loss()
    mu, sigma = layer.encode(z)
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2 * sigma.log() - 1)
    assert losses["sum"].item() == pytest.approx(0.1 * kl.flatten(1).sum(1).mean().item(), rel=1e-5)
    assert losses["sum"].item() == pytest.approx(positions * losses["mean_positions"].item(), rel=1e-6)
    if positions > 1:  # the public CVB code's reduction: sum over channels, mean over batch and positions
        assert losses["mean_positions"].item() == pytest.approx(0.1 * kl.sum(1).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="kl_reduction"):
        make("average")
