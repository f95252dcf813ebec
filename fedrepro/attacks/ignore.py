"""Paper 04's Ignore attack: which of the shared gradients the attacker matches.

A variational bottleneck (PRECODE, CVB) samples fresh noise in every forward pass, so the gradients of
its decoder and of every later layer are stochastic and mislead an inversion attack. The Ignore attack
drops exactly those gradients and matches the rest (:func:`layers_before`); Table I of paper 04 also
drops other subsets (:data:`IGNORE`). The engine (:func:`fedrepro.attacks.inversion.invert`) matches
whatever ``AttackConfig.layers`` names; this module only decides the names.
"""
from __future__ import annotations

from torch import nn

from fedrepro.defenses.variational import bottlenecks, decoder_name


def parameters_from(model: nn.Module, module_name: str) -> list[str]:
    """Names of the parameters of ``module_name`` and of every module registered after it.

    Registration order is taken as forward order (true for the sequential models here). These are
    the gradients paper 04's "Ignore" attack drops: the stochastic layer and everything after it.
    """
    modules = [name for name, _ in model.named_modules()]
    if module_name not in modules:
        raise KeyError(f"model has no module {module_name!r}; modules: {', '.join(m for m in modules if m)}")
    start = modules.index(module_name)
    names = []
    for name, module in list(model.named_modules())[start:]:
        names += [f"{name}.{p}" if name else p for p, param in module.named_parameters(recurse=False)
                  if param.requires_grad]
    return names


def layers_before(model: nn.Module, module_name: str) -> tuple[str, ...]:
    """The "Ignore" attack's matched layers: every trainable parameter not in :func:`parameters_from`."""
    dropped = set(parameters_from(model, module_name))
    return tuple(n for n, p in model.named_parameters() if p.requires_grad and n not in dropped)


IGNORE = {"none": "none", "decoder": "decoder", "classifier": "classifier",
          "between": "layers between decoder and classifier", "after_decoder": "after decoder",
          "decoder_and_after": "decoder and after"}
"""Table I's gradient subsets, by what is *dropped*, and how a table row names them: nothing (plain IG),
only the bottleneck's decoder, only the classifier, only the layers between the two (none at P = 3, the
third convolution at P = 2), every layer after the decoder but not the decoder, the decoder and every
layer after it (paper 04's Ignore attack)."""


def classifier_name(model: nn.Module) -> str:
    """The model's output layer: the last ``nn.Linear`` in registration (= forward) order."""
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no linear layer")
    return linear[-1]


def _own_parameters(model: nn.Module, module_name: str) -> list[str]:
    return [f"{module_name}.{p}" for p, param in model.get_submodule(module_name).named_parameters()
            if param.requires_grad]


def ignored_parameters(model: nn.Module, ignore: str) -> list[str]:
    """Names of the parameters whose gradients ``ignore`` drops from the matching loss."""
    if ignore not in IGNORE:
        raise ValueError(f"ignore={ignore!r}; choose one of {', '.join(IGNORE)}")
    if ignore == "none":
        return []
    if ignore == "classifier":
        return _own_parameters(model, classifier_name(model))
    decoder = decoder_name(model)
    if ignore == "decoder":
        return _own_parameters(model, decoder)
    after = parameters_from(model, decoder)
    if ignore == "after_decoder":
        own = set(_own_parameters(model, decoder))
        return [n for n in after if n not in own]
    if ignore == "between":
        ends = set(_own_parameters(model, decoder)) | set(_own_parameters(model, classifier_name(model)))
        between = [n for n in after if n not in ends]
        if not between:  # dropping nothing would silently attack with every gradient
            raise ValueError(f"ignore='between': {type(model).__name__} has no layer between its decoder "
                             f"{decoder!r} and its classifier")
        return between
    return after


def matched_layers(model: nn.Module, ignore: str) -> tuple[str, ...] | None:
    """The shared gradients the attack matches (None = all of them)."""
    dropped = set(ignored_parameters(model, ignore))
    if not dropped:
        return None
    return tuple(n for n, p in model.named_parameters() if p.requires_grad and n not in dropped)


def default_ignore(model: nn.Module) -> str:
    """Paper 04: IG on undefended models, the Ignore attack on models with a variational bottleneck."""
    return "decoder_and_after" if bottlenecks(model) else "none"
