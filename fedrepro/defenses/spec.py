"""One grammar for every defense of the five papers: ``kind[:<name><value>,...]``.

A spec names a defense by kind and parameters, each parameter a name followed by its value, with the
unit in the name where two readings exist (``gaussian:std0.1`` is a standard deviation,
``gaussian:var0.01`` a variance — paper 03's σ²). ``name=value`` is accepted too; the canonical form
has no ``=``, which papermill's parameter parser would trip over.

=========== ===================================== ======================================================
kind        parameters (defaults)                 what it builds
=========== ===================================== ======================================================
none                                              nothing
precode     P (3), K (8/16/32 by P), beta (1e-3)  PRECODE bottleneck(s) in the model (``MODEL_DEFENSES``)
cvb         P (1), k (5), s (0.5), beta (0.1),    CVB bottleneck(s); ``klcode`` registers the public
            kl (mean | sum | code)                code's KL variant (``CVB_VARIANTS``)
dp          C (20), sigma (1)                     per-sample clip to C + N(0, (σC)²) on the shared gradient
gc          p (0.9)                               zero the fraction p of smallest entries per layer
prune       ratio (0.9)                           the same as ``gc`` (``prune:ratio0.7`` ≡ ``gc:p0.7``)
gaussian    std | var (exactly one)               N(0, std²) per gradient entry
laplacian   scale                                 Laplace(0, scale) per gradient entry
int8        (none)                                symmetric per-layer int8 of the shared gradient
=========== ===================================== ======================================================

Gradient kinds build their object from :data:`fedrepro.defenses.DEFENSES`, model kinds from
:data:`fedrepro.defenses.variational.MODEL_DEFENSES`. :attr:`Defense.label` is the canonical spec
(defaults left out, fixed parameter order) and is the key every measured number is stored under.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from fedrepro.defenses.gradient import DEFENSES
from fedrepro.defenses.variational import MODEL_DEFENSES, PRECODE_K

_DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "precode": {"P": 3, "K": None, "beta": 0.001},
    "cvb": {"P": 1, "k": 5, "s": 0.5, "beta": 0.1, "kl": "mean"},
    "dp": {"C": 20.0, "sigma": 1.0},
    "gc": {"p": 0.9},
    "gaussian": {"std": None, "var": None},
    "laplacian": {"scale": None},
    "int8": {},
}
"""Each kind's parameters and defaults: PRECODE's K defaults to 8/16/32 at P = 1/2/3 (paper 04's Table II
counts), its β to PRECODE's 0.001; the CVB's to paper 04's final choice (P = 1, k_E = 5, s_E = ½, β = 0.1)
with the KL averaged over the latent map's positions (``kl=mean``, the β the paper tuned; see
:mod:`fedrepro.defenses.variational`); DP to C = 20 (paper 04's Table IV); gradient compression to
p = 0.9. ``None`` marks a parameter without a default."""

KINDS = tuple(_DEFAULTS)
ALIASES = {"prune": ("gc", {"ratio": "p"})}
"""Other names for a kind, with their parameter renames: ``prune:ratio0.7`` is ``gc:p0.7``."""
_ALWAYS_SHOWN = {"precode": ("P",), "dp": ("sigma",), "gc": ("p",)}
_ONE_OF = {"gaussian": ("std", "var"), "laplacian": ("scale",)}
VARIATIONAL = ("precode", "cvb")
KL_SPECS = {"mean": "mean_positions", "sum": "sum", "code": "mean_positions"}
"""The spec's ``kl`` values and the bottleneck's ``kl_reduction`` each uses (``code`` also picks the
public code's KL formula, the ``code`` entry of :data:`fedrepro.defenses.variational.CVB_VARIANTS`)."""


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() and "e" not in text.lower() and "." not in text else value


def format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "+".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Defense:
    """One defense as ``kind`` and its ``(name, value)`` parameters; see the module docstring."""

    kind: str = "none"
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, spec: "str | Defense") -> "Defense":
        """``"precode:P1,K32,beta0.01"`` -> a Defense; a ValueError that says what is valid otherwise."""
        if isinstance(spec, Defense):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"a defense is a spec string such as 'dp:sigma0.01', got {spec!r}")
        kind, _, rest = spec.strip().partition(":")
        kind = kind.strip().lower()
        renames: dict[str, str] = {}
        if kind in ALIASES:
            kind, renames = ALIASES[kind]
        if kind not in KINDS:
            raise ValueError(f"unknown defense {kind!r} in {spec!r}; choose one of "
                             f"{', '.join(list(KINDS) + list(ALIASES))}")
        defaults = _DEFAULTS[kind]
        accepted = list(defaults) + list(renames)
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            if "=" in part:
                name, _, raw = (x.strip() for x in part.partition("="))
            else:
                known = sorted((n for n in accepted if part.startswith(n)), key=len, reverse=True)
                name, raw = (known[0], part[len(known[0]):].strip()) if known else (part, "")
            if name not in accepted or not raw:
                example = next(iter(accepted), None)
                raise ValueError(f"{spec!r}: {kind} takes {', '.join(accepted) or 'no parameters'}, each followed by "
                                 f"its value" + (f" (e.g. {kind}:{example}1)" if example else ""))
            name = renames.get(name, name)
            if name == "kl":
                if raw not in KL_SPECS:
                    raise ValueError(f"{spec!r}: kl must be one of {', '.join(KL_SPECS)}")
                values[name] = raw
            elif name == "P":
                positions = tuple(int(p) for p in raw.split("+"))
                values[name] = positions[0] if len(positions) == 1 else positions
            else:
                try:
                    values[name] = _number(raw)
                except ValueError:
                    raise ValueError(f"{spec!r}: {name} needs a number, got {raw!r}") from None
        return cls.of(kind, **values)

    @classmethod
    def of(cls, kind: str, **values: Any) -> "Defense":
        """A Defense from keyword parameters: ``Defense.of("gaussian", var=1e-2)``; checks names and ranges."""
        kind, renames = ALIASES.get(kind, (kind, {}))
        if kind not in KINDS:
            raise ValueError(f"unknown defense {kind!r}; choose one of {', '.join(list(KINDS) + list(ALIASES))}")
        values = {renames.get(k, k): v for k, v in values.items()}
        defaults = _DEFAULTS[kind]
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise ValueError(f"{kind} takes {', '.join(defaults) or 'no parameters'}, not {', '.join(unknown)}")
        merged = {**defaults, **values}
        for name in ("beta", "C", "sigma", "p", "s", "std", "var", "scale"):
            if merged.get(name) is not None:
                merged[name] = float(merged[name])
        if kind in _ONE_OF:
            given = [n for n in _ONE_OF[kind] if merged[n] is not None]
            if len(given) != 1:
                raise ValueError(f"{kind} takes exactly one of {', '.join(_ONE_OF[kind])} "
                                 f"(e.g. {kind}:{_ONE_OF[kind][0]}0.01), got {given or 'none'}")
        for name in ("std", "var", "scale", "C", "sigma", "beta", "s"):
            if merged.get(name) is not None and merged[name] < 0:
                raise ValueError(f"{kind}: {name} must be non-negative, got {merged[name]}")
        if kind == "gc" and not 0 <= merged["p"] <= 1:
            raise ValueError(f"gc: the pruned fraction p must be in [0, 1], got {merged['p']}")
        return cls(kind, tuple((k, merged[k]) for k in defaults))

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.params)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def label(self) -> str:
        defaults = _DEFAULTS[self.kind]
        shown = [f"{k}{format_value(v)}" for k, v in self.params
                 if v != defaults[k] or k in _ALWAYS_SHOWN.get(self.kind, ())]
        return self.kind + (":" + ",".join(shown) if shown else "")

    def __str__(self) -> str:
        return self.label

    @property
    def variational(self) -> bool:
        """A model defense (a bottleneck inside the network)."""
        return self.kind in VARIATIONAL

    def gradient_defense(self):
        """The part applied to shared gradients (a :data:`DEFENSES` object), or None."""
        v = self.values
        if self.kind == "dp":
            return DEFENSES.get("dp")(clip=v["C"], noise_multiplier=v["sigma"])
        if self.kind == "gc":
            return DEFENSES.get("prune")(ratio=v["p"])
        if self.kind == "gaussian":
            return DEFENSES.get("gaussian")(std=v["std"] if v["std"] is not None else math.sqrt(v["var"]))
        if self.kind == "laplacian":
            return DEFENSES.get("laplacian")(scale=v["scale"])
        if self.kind == "int8":
            return DEFENSES.get("int8")()
        return None

    def apply(self, model: nn.Module, input_shape: tuple[int, int, int]) -> nn.Module:
        """Insert the bottleneck(s) of a model defense into ``model`` (other kinds leave it unchanged)."""
        if self.kind == "precode":
            return MODEL_DEFENSES.get("precode")(model, self["P"], k=self["K"], beta=self["beta"],
                                                 input_shape=input_shape)
        if self.kind == "cvb":
            return MODEL_DEFENSES.get("cvb")(model, self["P"], kernel_size=int(self["k"]), scale=self["s"],
                                             beta=self["beta"], input_shape=input_shape,
                                             kl_reduction=KL_SPECS[self["kl"]],
                                             variant="code" if self["kl"] == "code" else "paper")
        return model

    def describe(self) -> str:
        """Human-readable, e.g. 'CVB (P = 1, k_E = 5, s_E = 0.5, β = 0.1)'."""
        v = self.values
        if self.kind == "none":
            return "no defense"
        if self.kind == "precode":
            k = v["K"] if v["K"] is not None else (PRECODE_K.get(v["P"], 32) if isinstance(v["P"], int)
                                                   else "8/16/32 by P")
            return f"PRECODE (P = {format_value(v['P'])}, K = {k}, β = {format_value(v['beta'])})"
        if self.kind == "cvb":
            kl = {"mean": "", "sum": ", KL summed over positions", "code": ", the public code's KL"}[v["kl"]]
            return f"CVB (P = {format_value(v['P'])}, k_E = {v['k']}, s_E = {format_value(v['s'])}, β = {format_value(v['beta'])}{kl})"
        if self.kind == "dp":
            return f"DP-SGD (C = {format_value(v['C'])}, σ = {format_value(v['sigma'])})"
        if self.kind == "gc":
            return f"gradient compression (p = {format_value(v['p'])})"
        if self.kind == "gaussian":
            return f"Gaussian noise (σ² = {format_value(v['var'])})" if v["var"] is not None else \
                f"Gaussian noise (std = {format_value(v['std'])})"
        if self.kind == "laplacian":
            return f"Laplacian noise (scale = {format_value(v['scale'])})"
        return "int8 quantisation of the shared gradient"

