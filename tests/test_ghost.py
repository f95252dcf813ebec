"""The ghost-clipping engine against opacus, the reference: the same clipped, noised, averaged step for every
clipping mode on cnn, tanhnet and ResNet-9 (GroupNorm) in float64 — with physical batches, with samples
both clipped and not, with an empty Poisson batch — and the same ε."""
from __future__ import annotations

import pytest
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.func import functional_call, grad, vmap

from fedrepro.fl import ClientData, FedAvgConfig, model_loss
from fedrepro.models import build_model
from fedrepro.privacy import DPTrainer, clipping_layers, sample_rate
from fedrepro.privacy.ghost import GhostClipper, UnsupportedLayerError

from fedrepro.runtime import generator

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = {"cnn": 32, "tanhnet": 16, "resnet9": 16}


def data(model_name: str, n: int = 24, seed: int = 1) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    size = SIZES[model_name]
    x = torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (n,), generator=g)
    return ClientData(0, x, y, x[:0], y[:0])


def model_of(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, image_size=SIZES[name]).double()


def per_sample_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Every sample's whole-gradient norm, the explicit way (vmap over per-sample gradients)."""
    weights = {n: p.detach() for n, p in model.named_parameters()}

    def loss(w, xi, yi):
        return model_loss(model, functional_call(model, w, (xi[None],)), yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(weights, x, y)
    return torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()], 1).sum(1).sqrt()


def one_round(model_name: str, clipping: str, engine: str, client: ClientData, batch_size: int = 8, lr: float = 1.0,
              **options) -> tuple[list[torch.Tensor], float]:
    model = model_of(model_name)
    trainer = DPTrainer(clipping=clipping, noise_multiplier=0.7, engine=engine, **options)
    trainer(model, client, FedAvgConfig(rounds=1, optimizer="sgd", lr=lr, batch_size=batch_size, seed=0), 1)
    return [p.detach().clone() for p in model.parameters()], trainer.epsilon()


@pytest.mark.parametrize("model_name", ["cnn", "tanhnet", "resnet9"])
@pytest.mark.parametrize("clipping", ["flat", "per_layer_uniform", "per_layer_adaptive", "per_layer"])
def test_the_step_equals_opacus_for_every_clipping_mode(model_name, clipping):
    client = data(model_name)
    norms = per_sample_norms(model_of(model_name), client.x_train, client.y_train)
    total = float(norms.median())  # the flat threshold clips about half of the samples
    assert (norms > total).any() and (norms < total).any()
    options: dict = {"max_grad_norm": total, "physical_batch_size": 5}
    if clipping == "per_layer":
        count = len(clipping_layers(model_of(model_name)))
        options["thresholds"] = [total * (0.2 + 0.1 * i) for i in range(count)]
    if clipping == "per_layer_adaptive":
        options["public_data"] = (client.x_train[:8], client.y_train[:8])
    ours, eps_ours = one_round(model_name, clipping, "ghost", client, **options)
    reference, eps_reference = one_round(model_name, clipping, "opacus", client, **options)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert eps_ours == eps_reference


def test_ghost_norms_equal_explicit_per_sample_gradient_norms():
    # the CNN's conv2 takes the ghost-norm branch (T² (d + p) < T p d), conv1 the explicit one, fc T = 1
    model, client = model_of("cnn"), data("cnn", 6)
    everything = [list(range(len([p for p in model.parameters()])))]
    clipper = GhostClipper(model, everything, [1e9])  # no clipping: the factors are 1
    loss = model_loss(model, model(client.x_train), client.y_train) * 6
    sums = clipper.clipped_sum(loss)
    clipper.close()
    plain = torch.autograd.grad(model_loss(model, model(client.x_train), client.y_train) * 6, list(model.parameters()))
    for a, b in zip(sums, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    clipper = GhostClipper(model, everything, [1.0])
    clipped = clipper.clipped_sum(model_loss(model, model(client.x_train[:1]), client.y_train[:1]))
    clipper.close()
    assert torch.cat([c.flatten() for c in clipped]).norm() == pytest.approx(1.0, rel=1e-6)  # one sample, S = 1


def test_an_empty_poisson_batch_takes_the_same_pure_noise_step():
    client = data("tanhnet", 40)
    config_batch = 1  # q = 1/40: an epoch of 40 Poisson batches holds empty ones
    q = sample_rate(40, config_batch)
    batches = list(UniformWithReplacementSampler(num_samples=40, sample_rate=q, steps=40,
                                                 generator=generator(0, "dp-poisson", 1, 0, 0)))
    assert any(len(b) == 0 for b in batches) and any(len(b) > 0 for b in batches)
    # 40 steps at lr 1 would amplify float rounding chaotically; at lr 0.01 a wrong step still moves weights by ~1e-3
    ours, _ = one_round("tanhnet", "flat", "ghost", client, batch_size=config_batch, lr=0.01, max_grad_norm=0.5)
    reference, _ = one_round("tanhnet", "flat", "opacus", client, batch_size=config_batch, lr=0.01, max_grad_norm=0.5)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_unsupported_layers_fall_back_to_opacus_or_are_named():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.LayerNorm(8), nn.Linear(8, 3)).double()
    with pytest.raises(UnsupportedLayerError, match="2 \\(LayerNorm\\)"):
        GhostClipper(model, [[0, 1, 2, 3, 4, 5]], [1.0])
    assert DPTrainer(noise_multiplier=1.0, engine="auto")._engine_for(model) == "opacus"
    assert DPTrainer(noise_multiplier=1.0, engine="auto")._engine_for(model_of("cnn")) == "ghost"
    with pytest.raises(ValueError, match="unknown engine 'fast'"):
        DPTrainer(noise_multiplier=1.0, engine="fast")


def test_a_deep_copy_of_the_model_neither_copies_the_clipper_nor_disturbs_it():
    import copy

    model, client = model_of("tanhnet"), data("tanhnet", 4)
    clipper = GhostClipper(model, [list(range(len(list(model.parameters()))))], [1.0])
    twin = copy.deepcopy(model)  # what adversarial training's hook-free copy starts from
    assert twin.conv1._forward_hooks and next(iter(twin.conv1._forward_hooks.values())).__self__ is clipper
    twin(client.x_train).sum().backward()  # the copy's forward is ignored by the clipper
    sums = clipper.clipped_sum(model_loss(model, model(client.x_train), client.y_train) * 4)
    assert len(sums) == len(list(model.parameters()))
    clipper.close()
