"""Noise sweeps of DP FedAvg over clipping strategies, and the summaries notebook 02 reads from them."""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from fedrepro.data import ClientSplit, ImageDataset
from fedrepro.federation import run_federation
from fedrepro.fl import FedAvgConfig
from fedrepro.privacy.clipping import strategy_name
from fedrepro.privacy.trainer import DPTrainer, history_epsilons
from fedrepro.runtime import derive_seed, generator

NON_PRIVATE = "non-private"


@dataclass
class PrivateRun:
    """One FedAvg run: its clipping strategy and σ, the ε it spent and the accuracy it reached."""

    strategy: str
    noise_multiplier: float
    epsilon: float  # the run's ε: the largest client ε, composed over all rounds
    client_epsilons: dict[int, float]
    delta: float
    accountant: str
    final_accuracy: float  # global model's test accuracy after the last round
    mean_accuracy: float  # mean over rounds of the test accuracy
    history: list[dict[str, float]]
    thresholds: list[list[float]] = field(default_factory=list)  # per round, as client 0 used them
    num_clients: int = 0
    seconds: float = 0.0
    label: str = ""
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # the final global model

    def as_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready (∞ stays a float)."""
        return {k: v for k, v in asdict(self.__class__(**{**self.__dict__, "model": None})).items() if k != "model"}


def split_public(test: ImageDataset, public_samples: int, seed: int,
                 test_samples: int | None = None) -> tuple[ImageDataset, ImageDataset]:
    """Hold ``public_samples`` test images out as the server's public batch; evaluate on (up to ``test_samples`` of) the rest.

    The public batch is what per-layer adaptive clipping measures M_j on; no client trains on it
    and no accuracy is computed on it.
    """
    if not 0 <= public_samples < len(test):
        raise ValueError(f"public_samples must be in [0, {len(test)}), got {public_samples}")
    order = torch.randperm(len(test), generator=generator(seed, "public-split"))
    rest = order[public_samples:] if test_samples is None else order[public_samples:public_samples + test_samples]
    return test.subset(order[:public_samples].sort().values), test.subset(rest.sort().values)


def seeded_model(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``factory()`` under a fixed seed, so every run of a sweep starts from the same weights."""
    torch.manual_seed(derive_seed(seed, "model-init"))
    return factory()


def run_private(factory: Callable[[], nn.Module], train: ImageDataset, test: ImageDataset, splits: Sequence[ClientSplit],
                config: FedAvgConfig, trainer: DPTrainer | None, label: str = "", backend: str = "simulator") -> PrivateRun:
    """One FedAvg run with ``trainer`` (None: the non-private baseline, ε = ∞) on ``backend`` (simulator | flower)."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        result = run_federation(seeded_model(factory, config.seed), train, test, list(splits), config, trainer=trainer,
                                progress=False, backend=backend)
    accuracies = [h["test_accuracy"] for h in result.history]
    common = dict(final_accuracy=result.final_accuracy, mean_accuracy=sum(accuracies) / len(accuracies),
                  history=result.history, num_clients=len(splits), seconds=time.perf_counter() - started, label=label,
                  model=result.model)
    if trainer is None:
        return PrivateRun(NON_PRIVATE, 0.0, math.inf, {}, math.nan, "", **common)
    # read from the history, not the trainer: with FedAvgConfig.workers the accountants live in worker processes
    epsilons = history_epsilons(result.history)
    first = min(epsilons)
    thresholds = [[m[k] for k in sorted((k for k in m if k.startswith("threshold/")), key=lambda k: int(k.split("/")[1]))]
                  for m in (h["clients"][first] for h in result.history if first in h["clients"])]
    sigmas = {m["noise_multiplier"] for h in result.history for m in h["clients"].values()}
    return PrivateRun(trainer.clipping, sigmas.pop() if len(sigmas) == 1 else math.nan, max(epsilons.values()),
                      epsilons, trainer.delta, trainer.accountant, thresholds=thresholds, **common)


def noise_sweep(factory: Callable[[], nn.Module], train: ImageDataset, test: ImageDataset, splits: Sequence[ClientSplit],
                config: FedAvgConfig, strategies: Sequence[str], noise_multipliers: Sequence[float], *,
                max_grad_norm: float, delta: float = 1e-5, progress: bool = True, label: str = "",
                backend: str = "simulator", **trainer_options: Any) -> list[PrivateRun]:
    """Every (strategy, σ) pair, each a fresh run from the same initial weights with a fresh DPTrainer.

    ``trainer_options`` go to :class:`DPTrainer` (``public_data``, ``accountant``, ``granularity``,
    ``thresholds`` for ``per_layer``, ...).
    """
    runs = []
    pairs = [(strategy_name(s), float(sigma)) for s in strategies for sigma in noise_multipliers]
    quiet = not progress or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    for strategy, sigma in tqdm(pairs, desc=label or "noise sweep", unit="run", disable=quiet):
        options = dict(trainer_options)
        if strategy != "per_layer":
            options.pop("thresholds", None)
        if strategy != "per_layer_adaptive":
            options.pop("public_data", None)
        trainer = DPTrainer(clipping=strategy, max_grad_norm=max_grad_norm, noise_multiplier=sigma, delta=delta, **options)
        runs.append(run_private(factory, train, test, splits, config, trainer, label=label, backend=backend))
    return runs


def run_baseline(factory: Callable[[], nn.Module], train: ImageDataset, test: ImageDataset, splits: Sequence[ClientSplit],
                 config: FedAvgConfig, label: str = "", backend: str = "simulator") -> PrivateRun:
    """The non-private FedAvg run with the same optimizer, data and initial weights (fixed batches, no clipping)."""
    return run_private(factory, train, test, splits, config, None, label=label, backend=backend)


# --- summaries -----------------------------------------------------------------------------------

def by_strategy(runs: Sequence[PrivateRun]) -> dict[str, list[PrivateRun]]:
    """Runs grouped by strategy, each list ordered by decreasing σ (increasing ε)."""
    grouped: dict[str, list[PrivateRun]] = {}
    for run in runs:
        grouped.setdefault(run.strategy, []).append(run)
    return {k: sorted(v, key=lambda r: -r.noise_multiplier) for k, v in grouped.items()}


def ranking(runs: Sequence[PrivateRun], noise_multiplier: float | None = None,
            metric: str = "final_accuracy") -> list[tuple[str, float]]:
    """Strategies ordered by ``metric`` at one σ (default: the smallest σ of the sweep, the paper's 'last execution')."""
    sigma = min(r.noise_multiplier for r in runs) if noise_multiplier is None else noise_multiplier
    chosen = [(r.strategy, getattr(r, metric)) for r in runs if math.isclose(r.noise_multiplier, sigma)]
    return sorted(chosen, key=lambda item: -item[1])


def wins(runs: Sequence[PrivateRun], first: str, second: str, metric: str = "final_accuracy") -> tuple[int, int]:
    """(σ values where ``first`` beats ``second``, σ values both were run at)."""
    a = {r.noise_multiplier: getattr(r, metric) for r in runs if r.strategy == first}
    b = {r.noise_multiplier: getattr(r, metric) for r in runs if r.strategy == second}
    common = sorted(set(a) & set(b))
    return sum(a[s] > b[s] for s in common), len(common)


def mean_metric(runs: Sequence[PrivateRun], strategy: str, metric: str = "final_accuracy") -> float:
    values = [getattr(r, metric) for r in runs if r.strategy == strategy]
    return sum(values) / len(values) if values else math.nan


def sweep_table(runs: Sequence[PrivateRun], metric: str = "final_accuracy") -> str:
    """A markdown table: one row per σ with ε and each strategy's ``metric``."""
    grouped = by_strategy(runs)
    strategies = list(grouped)
    sigmas = sorted({r.noise_multiplier for r in runs}, reverse=True)
    lookup = {(r.strategy, r.noise_multiplier): r for r in runs}
    lines = ["| σ | ε | " + " | ".join(strategies) + " |", "|---|---|" + "---|" * len(strategies)]
    for sigma in sigmas:
        eps = next(r.epsilon for r in runs if r.noise_multiplier == sigma)
        cells = [f"{getattr(lookup[(s, sigma)], metric):.3f}" if (s, sigma) in lookup else "—" for s in strategies]
        lines.append(f"| {sigma:.3g} | {eps:.3g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PAPER_ORDER = ("flat", "per_layer_adaptive", "per_layer_uniform")
LABELS = {"flat": "flat", "per_layer_adaptive": "adaptive", "per_layer_uniform": "uniform",
          "per_layer": "paper's list", NON_PRIVATE: "non-private"}


def compare_with_paper(runs: Sequence[PrivateRun], paper_order: Sequence[str] = PAPER_ORDER,
                       repeats: Sequence[PrivateRun] = (), metric: str = "final_accuracy") -> dict[str, Any]:
    """Check the paper's reading (``paper_order``, best first) against a sweep; returns numbers and a text verdict.

    ``repeats``: extra runs at the smallest σ with other seeds, whose spread says how large a gap
    between strategies must be before it means anything.
    """
    runs = [r for r in runs if r.strategy in paper_order]
    sigma = min(r.noise_multiplier for r in runs)
    last = ranking(runs, sigma, metric)
    order = [s for s, _ in last]
    pairs = [(a, b) for i, a in enumerate(paper_order) for b in paper_order[i + 1:]]
    pair_wins = {f"{a}>{b}": wins(runs, a, b, metric) for a, b in pairs}
    means = {s: mean_metric(runs, s, metric) for s in paper_order}
    lines = [f"At the smallest σ = {sigma:.3g} (the paper's last run): "
             + " > ".join(f"{LABELS.get(s, s)} {v:.3f}" for s, v in last) + ".",
             f"The paper's order {' > '.join(LABELS.get(s, s) for s in paper_order)} "
             + ("holds" if order == list(paper_order) else "does not hold") + " there.",
             "Across the sweep, " + "; ".join(f"{LABELS.get(a, a)} beats {LABELS.get(b, b)} at {w}/{n} σ values"
                                              for (a, b), (w, n) in zip(pairs, pair_wins.values())) + ".",
             "Mean over the sweep: " + ", ".join(f"{LABELS.get(s, s)} {v:.3f}" for s, v in means.items()) + "."]
    spread = None
    if repeats:
        same = {}
        for run in [*(r for r in runs if r.noise_multiplier == sigma), *repeats]:
            same.setdefault(run.strategy, []).append(getattr(run, metric))
        spreads = {s: (max(v) - min(v)) for s, v in same.items() if len(v) > 1}
        spread = max(spreads.values()) if spreads else None
        gap = last[0][1] - last[-1][1]
        seed_means = {s: sum(v) / len(v) for s, v in same.items()}
        seed_order = sorted(seed_means, key=lambda s: -seed_means[s])
        lines.append(f"Over {1 + len(repeats) // max(len(same), 1)} seeds at σ = {sigma:.3g}, one strategy's accuracy varies "
                     f"by up to {spread:.3f} from seed to seed, against a gap of {gap:.3f} between best and worst strategy; "
                     f"seed means: " + " > ".join(f"{LABELS.get(s, s)} {seed_means[s]:.3f}" for s in seed_order) + ".")
    return {"sigma": sigma, "ranking": last, "order_holds": order == list(paper_order), "pair_wins": pair_wins,
            "means": means, "seed_spread": spread, "text": "\n".join(lines)}
