"""Variational bottlenecks that defend against gradient inversion: PRECODE and the CVB (paper 04).

Both encode features ``z`` into a mean ``μ`` and a standard deviation ``σ = softplus(·)``, sample
``b = μ + σ·ε`` with fresh ``ε ~ N(0, 1)`` in every training forward pass, and decode ``b`` back to
``z``'s shape. The randomness makes the gradients of the decoder and of every later layer
stochastic, which is what defeats iterative inversion attacks. Each stores the KL divergence of its
last training forward pass; :func:`fedrepro.fl.model_loss` adds ``β·KL`` to the cross-entropy, so the
same loss is used in FedAvg training and when a victim's gradient is computed.

Decisions (the paper leaves them open or its public code is inconsistent):

* KL: the closed form for ``N(μ, σ²)`` against ``N(0, 1)`` *with σ the softplus output used for
  sampling*, ``½ (μ² + σ² − 2 log σ − 1)`` per latent unit. (The public CVB code treats the softplus
  output as a log-variance in the KL, while sampling with it as a standard deviation; we keep the
  two consistent.)
* KL reduction (``kl_reduction``), which fixes what a value of β means. Paper 04 (Eq. 3) writes
  ``L = L_F + β·D_KL`` without saying how the KL over a latent *map* is reduced. Its authors' public
  CVB code (``EncoderBase.loss``: ``β · mean(−½ · sum(…, dim=1))``) sums over the latent channels
  and averages over the batch *and the map's positions*; every β of the paper (0.1 for the CNN and
  the ViT, 5·10⁻⁵ for ResNet-18, the Fig. 9(d) sweep, Table VI) was tuned with that code. So the
  default, ``"mean_positions"``, is that reduction; ``"sum"`` sums over every latent unit
  (channels × H × W), which weighs the same β H·W times more (196× for the CNN's P = 1, 14×14 map).
  PRECODE's latent is a flat vector (one position): both reductions are its code's sum over K units.
* Evaluation: in ``eval()`` mode the bottleneck passes ``μ`` (no sampling), so test accuracy is
  deterministic; training and the victim's gradient always sample.
* No biases in encoder or decoder: the parameter counts then match the paper exactly
  (PRECODE ``2·F·K + K·F``; CVB ``2·k_E²·c·K_E + K_E·c``).
* Positions: in the CNN, P = 1/2/3 is after the ReLU of the P-th convolution; in a ResNet, after
  stage ``layer<P>`` (the paper's "after the first block" for ResNet-18 is read as stage 1, 64
  channels); in the ViT, after transformer block P, on the patch tokens reshaped to (P, H, W) with
  the patches as channels (hidden size F = H·W; the class token passes through unchanged).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedrepro.models.cnn import CNN
from fedrepro.models.vit import ViT
from fedrepro.registry import Registry

MODEL_DEFENSES: Registry[Callable[..., nn.Module]] = Registry("model defense")

PRECODE_K = {1: 8, 2: 16, 3: 32}
"""PRECODE's bottleneck size at each CNN position, as implied by paper 04's Table II parameter counts."""


KL_REDUCTIONS = ("mean_positions", "sum")
"""How a bottleneck reduces its KL over a latent map (see the module docstring); the batch is always averaged."""


class VariationalBottleneck(nn.Module):
    """Shared sampling and KL bookkeeping; subclasses define ``encode`` and ``decoder``."""

    def __init__(self, beta: float, kl_reduction: str = "mean_positions") -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"kl_reduction must be one of {', '.join(KL_REDUCTIONS)}, got {kl_reduction!r}")
        self.beta = beta
        self.kl_reduction = kl_reduction
        self._kl: torch.Tensor | None = None
        self._positions = 1

    def encode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def kl_terms(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """KL(N(μ, σ²) ‖ N(0, 1)) of every latent unit."""
        return 0.5 * (mu.pow(2) + sigma.pow(2) - 2 * torch.log(sigma) - 1)

    decoder: nn.Module

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.encode(z)
        if self.training:
            b = mu + sigma * torch.randn_like(sigma)
            kl = self.kl_terms(mu, sigma)
            self._kl = kl.flatten(1).sum(1).mean()  # summed over latent units, averaged over the batch
            self._positions = math.prod(kl.shape[2:])  # H·W of a latent map, 1 for a vector
        else:
            b, self._kl = mu, None
        return self.decode(b, z)

    def decode(self, b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(b)

    @property
    def kl_weight(self) -> float:
        """The factor on the KL summed over latent units: β, or β / (H·W) for ``"mean_positions"``
        (exactly β times the KL averaged over the map's positions)."""
        return self.beta / self._positions if self.kl_reduction == "mean_positions" else self.beta

    def regularization_loss(self) -> torch.Tensor:
        """``β·KL`` of the last training forward pass, reduced by ``kl_reduction`` (0 after an evaluation pass)."""
        if self._kl is None:
            return torch.zeros(())
        return self.kl_weight * self._kl


def _sigma(pre: torch.Tensor) -> torch.Tensor:
    # softplus keeps σ positive; the floor keeps log σ finite when softplus underflows
    return F.softplus(pre).clamp_min(1e-8)


class PRECODE(VariationalBottleneck):
    """Fully connected variational bottleneck (Scheliga et al., WACV 2022) on flattened features."""

    def __init__(self, features: int, k: int, beta: float = 0.001, kl_reduction: str = "mean_positions") -> None:
        super().__init__(beta, kl_reduction)
        self.k = k
        self.encoder = nn.Linear(features, 2 * k, bias=False)
        self.decoder = nn.Linear(k, features, bias=False)

    def encode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, pre = self.encoder(z.flatten(1)).chunk(2, dim=1)
        return mu, _sigma(pre)

    def decode(self, b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(b).view_as(z)


class CVB(VariationalBottleneck):
    """Convolutional variational bottleneck (paper 04, Fig. 8): k_E×k_E conv encoders, 1×1 conv decoder."""

    def __init__(self, channels: int, latent_channels: int, kernel_size: int = 5, beta: float = 0.1,
                 kl_reduction: str = "mean_positions") -> None:
        super().__init__(beta, kl_reduction)
        if latent_channels < 1:
            raise ValueError(f"the CVB needs at least one latent channel, got {latent_channels}")
        self.mu = nn.Conv2d(channels, latent_channels, kernel_size, padding="same", bias=False)
        self.sigma = nn.Conv2d(channels, latent_channels, kernel_size, padding="same", bias=False)
        self.decoder = nn.Conv2d(latent_channels, channels, 1, bias=False)

    def encode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(z), _sigma(self.sigma(z))


class PublicCodeCVB(CVB):
    """The CVB with the public code's KL term, for comparison only (spec ``cvb:klcode``).

    The public code samples ``b = μ + σ·ε`` with ``σ = softplus(clip(·, −5, 5))`` but computes the KL
    with the log-variance formula, ``−½ Σ_channels (1 + σ − μ² − e^σ)``, averaged over batch and
    positions. That term is smallest at σ = 0, so training drives the sampling noise *to zero* (the
    correct KL drives σ to 1): the trained bottleneck becomes nearly deterministic. We keep the correct
    KL by default and offer this one to measure what the difference does to accuracy and privacy.
    """

    def encode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(z), F.softplus(self.sigma(z).clamp(-5.0, 5.0))

    def kl_terms(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return -0.5 * (1 + sigma - mu.pow(2) - sigma.exp())


CVB_VARIANTS: Registry[type[CVB]] = Registry("CVB variant")
"""``paper``: the CVB with the correct KL (default); ``code``: :class:`PublicCodeCVB`."""
CVB_VARIANTS.register("paper")(CVB)
CVB_VARIANTS.register("code")(PublicCodeCVB)


class PatchTokenGrid(nn.Module):
    """Applies a 2-D bottleneck to a ViT's patch tokens seen as (patches, H, W) maps (F = H·W)."""

    def __init__(self, bottleneck: nn.Module, hidden: int) -> None:
        super().__init__()
        side = math.isqrt(hidden)
        if side * side != hidden:
            raise ValueError(f"the ViT hidden size must be a square (F = H·W), got {hidden}")
        self.bottleneck, self.side = bottleneck, side

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls, patches = tokens[:, :1], tokens[:, 1:]
        grid = patches.reshape(patches.shape[0], patches.shape[1], self.side, self.side)
        return torch.cat([cls, self.bottleneck(grid).reshape_as(patches)], dim=1)


def bottleneck_site(model: nn.Module, position: int) -> str:
    """The name of the module after which a bottleneck at ``position`` goes."""
    if isinstance(model, CNN):
        names = [n for n, _ in model.layers.named_children() if n.startswith("relu")]
        if not 1 <= position <= len(names):
            raise ValueError(f"the CNN has positions 1..{len(names)}, got {position}")
        return f"layers.relu{position}"
    if isinstance(model, ViT):
        if not 1 <= position <= len(model.blocks):
            raise ValueError(f"the ViT has blocks 1..{len(model.blocks)}, got {position}")
        return f"blocks.{position - 1}"
    if hasattr(model, f"layer{position}"):
        return f"layer{position}"
    raise ValueError(f"don't know where position {position} is in a {type(model).__name__}")


def _output_shape(model: nn.Module, site: str, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    captured: dict[str, torch.Size] = {}

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        captured["shape"] = output.shape

    handle = model.get_submodule(site).register_forward_hook(record)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    handle.remove()
    return tuple(captured["shape"][1:])


def _insert_after(model: nn.Module, site: str, module: nn.Module) -> None:
    parent_name, _, child = site.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = parent.get_submodule(child)
    wrapped = nn.Sequential(original, module)
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and child.isdigit():
        parent[int(child)] = wrapped
    else:
        setattr(parent, child, wrapped)


def _positions(position: int | tuple[int, ...] | list[int]) -> list[int]:
    return sorted([position] if isinstance(position, int) else list(position), reverse=True)


@MODEL_DEFENSES.register("precode")
def add_precode(model: nn.Module, position: int | tuple[int, ...] = 3, k: int | None = None, beta: float = 0.001,
                input_shape: tuple[int, int, int] = (3, 32, 32)) -> nn.Module:
    """Insert PRECODE after ``position`` (K defaults to 8/16/32 at CNN positions 1/2/3). Modifies ``model``."""
    for p in _positions(position):
        site = bottleneck_site(model, p)
        shape = _output_shape(model, site, input_shape)
        size = PRECODE_K.get(p, 32) if k is None else k
        _insert_after(model, site, PRECODE(math.prod(shape), size, beta))
    return model


@MODEL_DEFENSES.register("cvb")
def add_cvb(model: nn.Module, position: int | tuple[int, ...] = 1, kernel_size: int = 5, scale: float = 0.5,
            beta: float = 0.1, input_shape: tuple[int, int, int] = (3, 32, 32),
            kl_reduction: str = "mean_positions", variant: str = "paper") -> nn.Module:
    """Insert a CVB with ``K_E = scale · channels`` latent channels after each ``position``. Modifies ``model``.

    Defaults are paper 04's final choice for the CNN: P = 1, k_E = 5, s_E = ½, β = 0.1 (with the KL
    averaged over the latent map's positions, as the β was tuned). ``variant`` names a
    :data:`CVB_VARIANTS` class.
    """
    cvb_class = CVB_VARIANTS.get(variant)
    for p in _positions(position):  # deepest first, so earlier insertions don't shift later sites
        site = bottleneck_site(model, p)
        shape = _output_shape(model, site, input_shape)
        if isinstance(model, ViT):
            patches, hidden = shape[0] - 1, shape[1]
            cvb = cvb_class(patches, max(1, round(scale * patches)), kernel_size, beta, kl_reduction)
            _insert_after(model, site, PatchTokenGrid(cvb, hidden))
        else:
            channels = shape[0]
            _insert_after(model, site, cvb_class(channels, max(1, round(scale * channels)), kernel_size, beta, kl_reduction))
    return model


def bottlenecks(model: nn.Module) -> list[tuple[str, VariationalBottleneck]]:
    """Every variational bottleneck in ``model`` with its module name, in forward order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, VariationalBottleneck)]


def decoder_name(model: nn.Module) -> str:
    """The first bottleneck's decoder: where paper 04's Ignore attack starts dropping gradients."""
    found = bottlenecks(model)
    if not found:
        raise ValueError("the model has no variational bottleneck")
    return f"{found[0][0]}.decoder"
