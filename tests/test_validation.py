"""fedrepro.validation: every paper's parameter checks, one message format."""
from __future__ import annotations

import math
import re

import pytest

from fedrepro import validation as v
from fedrepro.registry import Registry


def refused(check, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        check(*args, **kwargs)
    return str(error.value)


def test_messages_name_the_parameter_the_value_and_what_is_valid():
    assert refused(v.integer, "rounds", 0, 1) == "rounds = 0 is invalid: expected an integer ≥ 1"
    assert refused(v.choice, "dataset", "imagenet-xl", ("cifar10", "mnist")) == \
        "dataset = 'imagenet-xl' is invalid: choose one of cifar10, mnist"
    assert refused(v.number, "lr", -0.1, 0, low_open=True) == "lr = -0.1 is invalid: expected a number > 0"
    assert refused(v.numbers, "sigmas", [1.0, -0.5], 0, low_open=True) == \
        "sigmas[1] = -0.5 is invalid: expected a number > 0"
    assert refused(v.names, "tables", ["I", "VII"], ("I", "II")) == \
        "tables[1] = 'VII' is invalid: choose one of I, II"
    assert refused(v.require, False, "attack_methods", ["fgsm"], "expected a list that includes pgd") == \
        "attack_methods = ['fgsm'] is invalid: expected a list that includes pgd"


@pytest.mark.parametrize("check", [v.integer, v.number])
def test_a_bool_is_not_a_number(check):
    for flag in (True, False):
        assert refused(check, "rounds", flag, 0).startswith(f"rounds = {flag} is invalid: expected ")
    assert refused(v.integers, "seeds", [1, True], 0) == "seeds[1] = True is invalid: expected an integer ≥ 0"
    assert refused(v.numbers, "sigmas", [False]) == "sigmas[0] = False is invalid: expected a number"


def test_integers_are_ints_in_range():
    v.integer("seed", -3)  # no bound: any integer
    v.integer("rounds", 5, 1)
    v.integer("operations", 50, 1, 50)
    assert refused(v.integer, "operations", 51, 1, 50) == \
        "operations = 51 is invalid: expected an integer from 1 to 50"
    assert refused(v.integer, "rounds", 2.0, 1) == "rounds = 2.0 is invalid: expected an integer ≥ 1"
    assert refused(v.integer, "rounds", "3", 1) == "rounds = '3' is invalid: expected an integer ≥ 1"
    assert refused(v.integer, "depth", 9, maximum=8) == "depth = 9 is invalid: expected an integer ≤ 8"


def test_none_passes_only_where_optional():
    v.integer("samples", None, 1, optional=True)
    v.number("clip", None, 0, optional=True)
    v.choice("grid_model", None, ("cnn",), optional=True)
    v.text("data_root", None, "a folder path", optional=True)
    assert refused(v.integer, "samples", None, 1) == "samples = None is invalid: expected an integer ≥ 1"
    assert refused(v.integer, "samples", 0, 1, optional=True) == \
        "samples = 0 is invalid: expected an integer ≥ 1, or None"
    assert refused(v.number, "clip", 0, 0, low_open=True, optional=True) == \
        "clip = 0 is invalid: expected a number > 0, or None"
    assert refused(v.choice, "grid_model", "x", ("cnn",), optional=True) == \
        "grid_model = 'x' is invalid: choose None or one of cnn"
    assert refused(v.choice, "model", None, ("cnn",)) == "model = None is invalid: choose one of cnn"


@pytest.mark.parametrize("low_open, high_open, inside, outside, words", [
    (False, False, [0, 0.5, 1], [-0.1, 1.1], "a number in [0, 1]"),
    (True, False, [0.5, 1], [0, 1.1], "a number in (0, 1]"),
    (False, True, [0, 0.5], [-0.1, 1], "a number in [0, 1)"),
    (True, True, [1e-9, 0.5], [0, 1], "a number in (0, 1)"),
])
def test_interval_ends_are_open_or_closed(low_open, high_open, inside, outside, words):
    for value in inside:
        v.number("p", value, 0, 1, low_open=low_open, high_open=high_open)
    for value in outside + [math.nan]:
        assert refused(v.number, "p", value, 0, 1, low_open=low_open, high_open=high_open) == \
            f"p = {value!r} is invalid: expected {words}"


def test_an_infinite_end_is_included_unless_open():
    v.number("variance", math.inf, 0)  # [0, ∞]
    assert refused(v.number, "lr", math.inf, 0, low_open=True, high_open=True) == \
        "lr = inf is invalid: expected a finite number > 0"
    v.number("t_acc", -math.inf, high=0)
    assert refused(v.number, "t_acc", 0.5, high=0) == "t_acc = 0.5 is invalid: expected a number ≤ 0"
    assert refused(v.number, "x", math.nan) == "x = nan is invalid: expected a number"
    assert refused(v.number, "x", "1.0") == "x = '1.0' is invalid: expected a number"


def test_lists_are_lists_never_strings_and_come_back_as_lists():
    assert v.numbers("eps", (1.7, 3)) == [1.7, 3] and v.integers("seeds", (1, 2), 0) == [1, 2]
    assert v.names("methods", ("fgsm", "pgd"), ("fgsm", "pgd")) == ["fgsm", "pgd"]
    assert v.numbers("eps", []) == []
    assert refused(v.numbers, "eps", "1.7", 0, low_open=True) == \
        "eps = '1.7' is invalid: expected a list of numbers > 0"
    assert refused(v.numbers, "sigmas", [], 0, low_open=True, high_open=True, nonempty=True) == \
        "sigmas = [] is invalid: expected a non-empty list of finite numbers > 0"
    assert refused(v.integers, "seeds", 3, 0) == "seeds = 3 is invalid: expected a list of integers ≥ 0"
    assert refused(v.names, "methods", "pgd", ("fgsm", "pgd")) == \
        "methods = 'pgd' is invalid: expected a list of names from fgsm, pgd"
    assert refused(v.names, "specs", ["cvb", 3]) == "specs[1] = 3 is invalid: expected a name"


def test_names_can_refuse_an_empty_list_and_repeats():
    assert refused(v.names, "archs", [], ("convnet",), nonempty=True) == \
        "archs = [] is invalid: expected a non-empty list of names from convnet"
    assert refused(v.names, "strategies", ["flat", "flat"], ("flat",), unique=True) == \
        "strategies = ['flat', 'flat'] is invalid: each name at most once (flat twice)"


def test_choices_may_be_a_registry_whose_own_lookup_decides():
    models: Registry[object] = Registry("model")
    models.register("cnn")(object)
    models.register("resnet9")(object)
    v.choice("model_name", "CNN", models)  # registries ignore case
    assert refused(v.choice, "model_name", "vgg", models) == \
        "model_name = 'vgg' is invalid: choose one of cnn, resnet9"
    assert refused(v.choice, "model_name", 3, models) == "model_name = 3 is invalid: choose one of cnn, resnet9"


def test_text_device_and_parsed():
    v.text("dataset", "cifar10", "a dataset name")
    v.text("data_root", "", "a folder path", empty=True)
    assert refused(v.text, "dataset", "", "a dataset name") == "dataset = '' is invalid: expected a dataset name"
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        v.device("device", device)
    assert refused(v.device, "device", "gpu") == \
        "device = 'gpu' is invalid: expected 'auto', 'cpu', 'cuda' or 'cuda:<index>'"
    assert v.parsed("k", "3", int, "a count such as '3'") == 3
    assert refused(v.parsed, "k", "three", int, "a count") == \
        "k = 'three' is invalid: invalid literal for int() with base 10: 'three'"
    assert refused(v.parsed, "k", 3, int, "a count such as '3'") == "k = 3 is invalid: expected a count such as '3'"
