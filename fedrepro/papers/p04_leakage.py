"""Paper 04's privacy leakage: victims, attack configurations, and the attack on each victim's shared gradient.

Victims are drawn at random from one client's training split (Sec. V-B) and each is attacked alone on the
gradient of one training step on its image (training mode: a variational bottleneck samples and its KL
term is in the loss), after the defense's gradient part. The server runs IG or, on a model with a
variational bottleneck, the Ignore attack (the decoder's and every later layer's gradients dropped), with
the true labels for every attack (Sec. V-B: "we assume label information to be generally known").
Reconstructions are scored per victim with SSIM, and ASR is the share of victims with SSIM >= 0.5.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from fedrepro import metrics
from fedrepro.attacks import ATTACKS, AttackConfig, ServerView, client_update, run_attack
from fedrepro.attacks.ignore import default_ignore, matched_layers
from fedrepro.attacks.presets import LBFGS_INNER
from fedrepro.attacks.victims import pick_victims
from fedrepro.data import FederatedData
from fedrepro.defenses.spec import Defense
from fedrepro.runtime import generator

#: The attacks of Table III, for :func:`attack_config`.
ATTACK_NAMES = ("ig", "idlg", "cpl")


def attack_config(attack: str, max_iterations: int | None = None, lbfgs_iterations: int | None = None,
                  tv_weight: float | None = None) -> AttackConfig:
    """Paper 04's IG (Sec. V-B) and its public code's iDLG / CPL, all with the true labels.

    ``max_iterations`` caps IG (the paper: 20,000); ``lbfgs_iterations`` caps the gradient evaluations
    of iDLG and CPL (the paper's code: 2,000 L-BFGS steps of up to 20 evaluations each).
    """
    if attack == "ig":
        config = ATTACKS.get("ig_cvb")()
        changes: dict[str, Any] = {}
        if max_iterations is not None:
            changes["max_iterations"] = max_iterations
        if tv_weight is not None:
            changes["tv_weight"] = tv_weight
        return config.replace(**changes)
    if attack not in ("idlg", "cpl"):
        raise ValueError(f"attack={attack!r}; choose one of {', '.join(ATTACK_NAMES)}")
    evaluations = lbfgs_iterations if lbfgs_iterations is not None else 2_000 * LBFGS_INNER
    config = ATTACKS.get(attack)(
        lr=0.01, max_iterations=evaluations, labels="known", schedule="plateau", plateau_patience=40 * LBFGS_INNER,
        stop_patience=400 * LBFGS_INNER, stop_loss=1e-5, init="gaussian",
        source=f"paper 04's public {attack} config: L-BFGS lr 0.01, L2, ×0.1 after 40 steps without progress, "
               "stop after 400, 2,000 steps of up to 20 evaluations; true labels")
    if attack == "idlg":
        return config.replace(boxed=True)  # its config clips the dummies; CPL's does not
    return config.replace(label_weight=0.01)


@dataclass
class Victims:
    """The victims of one dataset: indices into the training set, normalised images, labels, [0, 1] originals."""

    dataset: str
    index: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    originals: torch.Tensor


def client_victims(data: FederatedData, count: int, seed: int, client: int = 0) -> Victims:
    """``count`` images drawn at random from one client's training split (paper 04, Sec. V-B)."""
    if count > len(data.splits[client].train):
        raise ValueError(f"client {client} holds {len(data.splits[client].train)} training images, "
                         f"fewer than {count} victims")
    chosen = pick_victims(data.train, count, seed, "random", pool=data.splits[client].train)
    raw = data.train.images[chosen]
    return Victims(data.train.name, chosen, data.train.normalize(raw), data.train.labels[chosen], raw.float() / 255.0)


@dataclass
class Leakage:
    """Per-victim reconstruction quality of one attack on one model."""

    setting: str
    attack: str
    ignore: str
    ssim: np.ndarray
    psnr: np.ndarray
    mse: np.ndarray
    originals: torch.Tensor
    reconstructions: torch.Tensor
    iterations: torch.Tensor
    seconds: float

    @property
    def ssim_mean(self) -> float:
        return float(np.mean(self.ssim))

    @property
    def ssim_std(self) -> float:
        return float(np.std(self.ssim))

    @property
    def asr(self) -> float:
        """Attack success rate in %: victims reconstructed with SSIM >= 0.5."""
        return 100.0 * metrics.attack_success_rate(self.ssim)

    def summary(self) -> str:
        return (f"{self.setting}, {self.attack} (dropped: {self.ignore}): SSIM {self.ssim_mean:.2f} ± {self.ssim_std:.2f}, "
                f"ASR {self.asr:.1f}% over {len(self.ssim)} victims, {float(self.iterations.float().mean()):.0f} "
                f"iterations on average, {self.seconds:.0f} s")


def victim_update(model: nn.Module, victims: Victims, defense: Defense, seed: int = 0) -> dict[str, torch.Tensor]:
    """Each victim's shared gradient: one training step on its own image (training mode, so a variational
    bottleneck samples and its KL term is in the loss), after the defense's gradient part."""
    model.train()
    device = next(model.parameters()).device
    g = generator(seed, "victim-defense", defense.label)
    return client_update(model, victims.images.to(device), victims.labels.to(device), images_per_victim=1,
                         defense=defense.gradient_defense(), generator=g)


def privacy_leakage(model: nn.Module, victims: Victims, mean: Sequence[float], std: Sequence[float], *,
                    defense: str | Defense = "none", attack: str = "ig", ignore: str = "auto",
                    max_iterations: int | None = None, lbfgs_iterations: int | None = None,
                    tv_weight: float | None = None, seed: int = 0, chunk_size: int | None = None,
                    progress: bool = True, setting: str | None = None) -> Leakage:
    """Attack every victim of ``model`` independently; SSIM etc. per victim on [0, 1] images.

    ``ignore="auto"`` drops the decoder-and-after gradients of a model with a variational bottleneck
    (the Ignore attack) and nothing otherwise. ``defense`` contributes only its gradient part here
    (the model must already carry a model defense).
    """
    defense = Defense.parse(defense)
    ignore = default_ignore(model) if ignore == "auto" else ignore
    update = victim_update(model, victims, defense, seed)
    view = ServerView(model, update, num_images=1, image_shape=tuple(victims.images.shape[1:]), mean=tuple(mean),
                      std=tuple(std), labels=victims.labels.to(next(model.parameters()).device)[:, None])
    config = attack_config(attack, max_iterations, lbfgs_iterations, tv_weight).replace(
        layers=matched_layers(model, ignore))
    started = time.perf_counter()
    result = run_attack(view, config, seed=seed, chunk_size=chunk_size, progress=progress)
    seconds = time.perf_counter() - started
    reconstructions = result.denormalized().cpu()
    found = metrics.reconstruction_metrics(victims.originals, reconstructions)
    return Leakage(setting or defense.label, attack, ignore, found["ssim"], found["psnr"], found["mse"],
                   victims.originals, reconstructions, result.iterations.cpu(), seconds)


def gradient_stochasticity(model: nn.Module, image: torch.Tensor, label: torch.Tensor | int, draws: int = 16,
                           seed: int = 0) -> dict[str, float]:
    """Section III's analysis in one number per parameter tensor: the mean pairwise cosine similarity of
    ``draws`` victim gradients of the *same* image (one training step each, fresh bottleneck noise).

    1 means the layer's gradient is deterministic; low values mark the stochastic gradients the Ignore
    attack drops. ``image`` is one normalised image (C, H, W).
    """
    device = next(model.parameters()).device
    x = image.to(device).reshape(-1, *image.shape[-3:])[:1].repeat(draws, 1, 1, 1)
    y = torch.as_tensor(label, device=device).reshape(1).repeat(draws)
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # restore both generators
        torch.manual_seed(seed)
        grads = client_update(model, x, y, images_per_victim=1)
    out = {}
    for name, g in grads.items():
        flat = torch.nn.functional.normalize(g.flatten(1).double(), dim=1)
        similarity = flat @ flat.T
        out[name] = float((similarity.sum() - similarity.diagonal().sum()) / (draws * (draws - 1)))
    return out
