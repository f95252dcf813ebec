"""The one defense grammar: every kind parses to the registry object it names, units are explicit,
labels are canonical (they key every stored number), and bad specs fail with a message that says
what is valid."""
from __future__ import annotations

import math

import pytest
import torch

from fedrepro.defenses import DPSGD, GaussianNoise, Int8Quantization, LaplacianNoise, Pruning
from fedrepro.defenses.spec import Defense
from fedrepro.defenses.variational import CVB, PRECODE, PublicCodeCVB, bottlenecks
from fedrepro.models import build_model


@pytest.mark.parametrize("spec, label", [
    ("none", "none"), ("cvb:k=5,s0.5,beta0.1", "cvb"), ("precode:P=1,K=32,beta=0.01", "precode:P1,K32,beta0.01"),
    ("dp", "dp:sigma1"), ("gc", "gc:p0.9"), ("prune:ratio0.7", "gc:p0.7"), ("gaussian:var1e-2", "gaussian:var0.01"),
    ("gaussian:std1e-3", "gaussian:std0.001"), ("laplacian:scale=0.1", "laplacian:scale0.1"), ("int8", "int8"),
])
def test_labels_are_canonical_and_round_trip(spec, label):
    assert Defense.parse(spec).label == label
    assert Defense.parse(label) == Defense.parse(spec)


def test_gradient_kinds_build_their_registry_objects_with_units_applied():
    assert Defense.parse("gaussian:var0.01").gradient_defense() == GaussianNoise(std=math.sqrt(0.01))
    assert Defense.parse("gaussian:std0.01").gradient_defense() == GaussianNoise(std=0.01)
    assert Defense.of("gaussian", var=4.0).gradient_defense().std == 2.0
    assert Defense.parse("laplacian:scale0.1").gradient_defense() == LaplacianNoise(scale=0.1)
    assert Defense.of("prune", ratio=0.25).gradient_defense() == Pruning(ratio=0.25)
    assert Defense.parse("dp:C5,sigma0.5").gradient_defense() == DPSGD(clip=5.0, noise_multiplier=0.5)
    assert Defense.parse("int8").gradient_defense() == Int8Quantization()
    assert Defense.parse("cvb").gradient_defense() is None and Defense.parse("none").gradient_defense() is None


def test_model_kinds_insert_the_named_bottleneck_variant():
    def kinds(spec: str) -> list[type]:
        return [type(m) for _, m in bottlenecks(Defense.parse(spec).apply(build_model("cnn"), (3, 32, 32)))]

    assert kinds("cvb") == [CVB] and kinds("cvb:klcode") == [PublicCodeCVB] and kinds("precode:P2") == [PRECODE]
    assert kinds("cvb:P1+2") == [CVB, CVB]
    assert kinds("gaussian:std1") == [] and Defense.parse("cvb").variational and not Defense.parse("dp").variational
    model = Defense.parse("cvb:klcode").apply(build_model("cnn"), (3, 32, 32))
    module = bottlenecks(model)[0][1]
    mu, sigma = torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)
    assert torch.equal(module.kl_terms(mu, sigma), torch.zeros(1, 2, 1, 1))  # the public code's KL is 0 at σ = 0


@pytest.mark.parametrize("spec, message", [
    ("dropout", "choose one of none, precode"), ("cvb:q3", "cvb takes P, k, s, beta, kl"),
    ("gaussian", "exactly one of std, var"), ("gaussian:std1,var1", "exactly one of std, var"),
    ("gc:p1.5", r"in \[0, 1\]"), ("prune:ratio-0.1", r"in \[0, 1\]"), ("laplacian:scale-1", "non-negative"),
    ("dp:sigmaX", "sigma needs a number"), ("cvb:klfoo", "kl must be one of"), ("int8:bits4", "no parameters"),
])
def test_bad_specs_say_what_is_valid(spec, message):
    with pytest.raises(ValueError, match=message):
        Defense.parse(spec)


def test_keyword_construction_checks_names():
    with pytest.raises(ValueError, match="gaussian takes std, var, not sigma"):
        Defense.of("gaussian", sigma=1.0)
    with pytest.raises(TypeError, match="spec string"):
        Defense.parse(0.1)
