"""Client-side DP-SGD as a :class:`~fedrepro.fl.LocalTrainer` for ``run_fedavg``.

Each selected client, each round, runs DP-SGD on its own data: Poisson sampling (opacus's
``UniformWithReplacementSampler``), per-sample clipping by the chosen strategy
(:mod:`fedrepro.privacy.clipping`) — computed by the ghost engine (:mod:`fedrepro.privacy.ghost`:
per-layer norms and one weighted gradient product per layer) or by opacus's ``GradSampleModule``
(hooks; the reference), ``engine=`` — then Gaussian noise and averaging by opacus's ``DPOptimizer``
family, optionally over several physical batches per Poisson batch when memory requires.

**Accounting composes over all rounds.** The trainer keeps one opacus accountant per client for
its whole life (one run): every noisy step the client ever takes is recorded by the accountant's
optimizer hook, so ε after R rounds is the ε of all R · steps steps composed — not the ε of the last
round, which is what a client that builds a new ``PrivacyEngine`` every round (as naive Flower
examples do) would report. The guarantee is record-level (ε, δ)-DP for each client's local data
with respect to everything it sends; clients hold disjoint data, so the run's ε is the largest
client ε (parallel composition). Client-level DP is not provided.

**σ from ε.** With ``target_epsilon`` instead of ``noise_multiplier``, each client gets, at its
first round, the smallest σ whose ε after ``rounds × local_epochs × ceil(n / B)`` steps is at most the
target (opacus's ``get_noise_multiplier``, i.e. ``make_private_with_epsilon`` semantics; it assumes the
client trains in every round, so it is conservative with ``client_fraction < 1``).

**Adaptive clipping — how and when M_j is measured (ours; opacus has no such mode).** At the
start of every round, on the global model the client has just received, before any local step,
M_j = max |∂L/∂w| over layer j's weight entries for the mean loss of a measurement batch
(``magnitude_statistic="max"``, the paper's "maximum value of the gradients"; ``"median_norm"``
uses the median per-sample gradient norm of the layer instead). The batch is:

* ``public_data`` (default in notebook 02): a public batch the server holds (held-out images no
  client trains on). Every client then uses the same thresholds in a round and the measurement
  costs **no privacy**: it depends only on the global model (itself DP) and public data.
* otherwise the client's own data (``measure_batch_size`` random samples). That measurement is
  **not** differentially private and is **not** counted by the accountant — the reported ε then
  understates the true cost; the trainer warns and records ``adaptive_source="private (unaccounted)"``.

**Batch transforms and ε.** ``batch_transform(x, y)`` — the same hook as
:class:`fedrepro.fl.StandardTrainer`'s — is applied to every Poisson batch before the forward pass
(before it is split into physical batches), e.g. adversarial examples for adversarial training
(:mod:`fedrepro.robustness.training`). The accountant records steps, σ and the sample rate, so ε
does not change with a transform; it stays a valid bound only if the transform acts **per
record**: transformed record i depends on record i, on the weights the client holds (themselves
the output of earlier noisy steps, so post-processing) and on randomness independent of the data;
each transformed record's gradient is then clipped like any record. FGSM/PGD/FAB examples made on a
hook-free eval-mode copy of a GroupNorm model qualify (Bu et al. 2021, whom paper 01 follows, make
this argument; paper 01 reports its ε unchanged with adversarial training). A transform that mixes
records — or picks which records to alter from the batch's size — is outside the guarantee; a
transform says so with ``per_record = False`` and the trainer warns.

**Determinism.** The Poisson sampler and the noise draw from ``torch.Generator``\\s seeded by
``(seed, "dp-poisson"|"dp-noise", round, client[, epoch])``, so one seed gives the same model on a
CPU whatever the client order. ``secure_mode=True`` trades that away: opacus's floating-point-safe
noise and unseeded generators.
"""
from __future__ import annotations

import math
import secrets
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from opacus import GradSampleModule
from opacus.accountants import IAccountant
from opacus.optimizers import DPOptimizer, DPPerLayerOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn

from fedrepro.fl import ClientData, FedAvgConfig, model_loss, round_optimizer
from fedrepro.privacy.accounting import (DEFAULT_ACCOUNTANT, check_accountant, epsilon_of, expected_batch_size,
                                         make_accountant, noise_for_epsilon, sample_rate, steps_per_epoch)
from fedrepro.privacy.clipping import (GRANULARITIES, STATISTICS, ClipLayer, LayerClippingDPOptimizer,
                                       adaptive_thresholds, check_thresholds, clipping_layers,
                                       layer_gradient_magnitudes, strategy_name, total_threshold,
                                       uniform_thresholds)
from fedrepro.privacy.ghost import GhostClipper, SummedGradientDPOptimizer, UnsupportedLayerError, check_supported
from fedrepro.runtime import generator

ENGINES = ("auto", "ghost", "opacus")
"""Per-sample clipping engines: ``ghost`` (:mod:`fedrepro.privacy.ghost`: per-layer norms, no per-sample
gradients of every tensor), ``opacus`` (``GradSampleModule`` hooks; the reference), ``auto`` (ghost where
every trainable layer has a ghost rule, else opacus)."""


class DPIncompatibleModelError(ValueError):
    """A model opacus cannot train with per-sample gradients; the message names the fix."""


def check_dp_compatible(model: nn.Module) -> None:
    """Refuse BatchNorm, in-place activations and any other module opacus's validator rejects."""
    problems = []
    batch_norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batch_norms:
        shown = ", ".join(batch_norms[:4]) + (f" and {len(batch_norms) - 4} more" if len(batch_norms) > 4 else "")
        problems.append(
            f"BatchNorm ({shown}) mixes the samples of a batch, so per-sample gradients do not exist. Fix: "
            f"`model = opacus.validators.ModuleValidator.fix(model)` replaces every BatchNorm with GroupNorm, or build "
            f"the GroupNorm variant (fedrepro's ResNets: `build_model(name, norm='group')`, the default)")
    inplace = [name for name, m in model.named_modules() if getattr(m, "inplace", False) is True]
    if inplace:
        problems.append(
            f"in-place operations ({', '.join(inplace[:4])}) break opacus's backward hooks on recent torch "
            f"(opacus issue #828). Fix: construct them with inplace=False")
    if not batch_norms:
        problems += [str(e).split(". ")[0] for e in ModuleValidator.validate(model, strict=False)]
    if problems:
        raise DPIncompatibleModelError("model is not compatible with DP-SGD (opacus): " + "; ".join(problems) + ".")


@dataclass
class ClientPrivacy:
    """One client's privacy state, kept for the trainer's whole life (never reset between rounds)."""

    client: int
    num_samples: int
    sample_rate: float
    steps_per_epoch: int
    expected_batch_size: int
    noise_multiplier: float
    accountant: IAccountant
    rounds: list[int] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Noisy steps taken so far, as the accountant recorded them."""
        return sum(int(n) for *_, n in self.accountant.history)

    def epsilon(self, delta: float) -> float:
        return epsilon_of(self.accountant, delta)


@dataclass
class DPTrainer:
    """Client-side DP-SGD (opacus) with flat, per-layer uniform, adaptive or explicit clipping.

    ``clipping``: ``"flat"`` | ``"per_layer_uniform"`` | ``"per_layer_adaptive"`` | ``"per_layer"``
    (explicit ``thresholds``, one per clipping layer); ``max_grad_norm`` is the total S
    (per-layer strategies keep √(Σ S_j²) = S; an explicit list sets S = √(Σ S_j²) itself). Give
    ``noise_multiplier`` (σ; 0 means no noise, ε = ∞) or ``target_epsilon`` (σ is then derived per
    client). One trainer per run: its per-client accountants compose over every round it trains.

    Every call returns, besides ``train_loss``, the client's ε so far, σ, q, the steps taken and the
    thresholds used (``threshold/<j>``); ``run_fedavg`` keeps them per client and round in the history.
    That is where to read them when ``FedAvgConfig.workers`` trains clients in worker processes (the
    accountants then live in the workers; :func:`history_epsilons` collects them).

    ``batch_transform(x, y)`` is applied to every Poisson batch before the forward pass, as in
    :class:`fedrepro.fl.StandardTrainer` (the module docstring says when ε still holds).

    ``engine`` (:data:`ENGINES`) picks how clipped per-sample gradient sums are computed; the
    sampling, noise, averaging and accounting are opacus's either way, so ε does not depend on it.
    """

    clipping: str = "flat"
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    thresholds: Sequence[float] | None = None
    granularity: str = "layer"
    public_data: tuple[torch.Tensor, torch.Tensor] | None = None
    magnitude_statistic: str = "max"
    measure_batch_size: int = 256
    accountant: str = DEFAULT_ACCOUNTANT
    physical_batch_size: int | None = None
    secure_mode: bool = False
    batch_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    engine: str = "auto"
    clients: dict[int, ClientPrivacy] = field(default_factory=dict, init=False, repr=False)
    log: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    stateless: bool = field(default=False, init=False, repr=False)  # run_fedavg keeps it in the main process by default

    def __post_init__(self) -> None:
        self.clipping = strategy_name(self.clipping)
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier (σ) and target_epsilon (σ is then derived)")
        if self.noise_multiplier is not None and (not math.isfinite(self.noise_multiplier) or self.noise_multiplier < 0):
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        check_accountant(self.accountant)
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        if self.magnitude_statistic not in STATISTICS:
            raise ValueError(f"unknown magnitude statistic {self.magnitude_statistic!r}; choose one of {', '.join(STATISTICS)}")
        if self.physical_batch_size is not None and self.physical_batch_size < 1:
            raise ValueError("physical_batch_size must be positive (or None for the whole Poisson batch)")
        if self.clipping == "per_layer":
            if self.thresholds is None:
                raise ValueError("clipping='per_layer' needs thresholds: one value per clipping layer")
            self.thresholds = [float(t) for t in self.thresholds]
            self.max_grad_norm = total_threshold(self.thresholds)
        elif self.thresholds is not None:
            raise ValueError(f"thresholds are only used with clipping='per_layer', not {self.clipping!r}")
        if not math.isfinite(self.max_grad_norm) or self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm (S) must be positive, got {self.max_grad_norm}")
        if self.clipping == "per_layer_adaptive" and self.public_data is None:
            warnings.warn("per-layer adaptive clipping without public_data measures M_j on each client's private data; "
                          "that measurement is not differentially private and is not counted in ε", stacklevel=2)

    # --- what the notebook reads -------------------------------------------------------------

    @property
    def adaptive_source(self) -> str | None:
        if self.clipping != "per_layer_adaptive":
            return None
        return "public batch (free)" if self.public_data is not None else "private (unaccounted)"

    def epsilon(self, client: int | None = None, delta: float | None = None) -> float:
        """ε spent so far by ``client``, or the run's ε (the largest client ε) when ``client`` is None."""
        delta = self.delta if delta is None else delta
        if client is not None:
            return self.clients[client].epsilon(delta)
        return max((c.epsilon(delta) for c in self.clients.values()), default=0.0)

    def client_epsilons(self, delta: float | None = None) -> dict[int, float]:
        delta = self.delta if delta is None else delta
        return {k: c.epsilon(delta) for k, c in sorted(self.clients.items())}

    def summary(self) -> dict[str, Any]:
        """Everything a result needs to say how its ε was obtained."""
        sigmas = sorted({c.noise_multiplier for c in self.clients.values()})
        return {"clipping": self.clipping, "max_grad_norm": self.max_grad_norm, "granularity": self.granularity,
                "noise_multiplier": sigmas[0] if len(sigmas) == 1 else sigmas, "target_epsilon": self.target_epsilon,
                "delta": self.delta, "accountant": self.accountant, "epsilon": self.epsilon(),
                "client_epsilons": self.client_epsilons(), "steps": {k: c.steps for k, c in sorted(self.clients.items())},
                "adaptive_source": self.adaptive_source, "privacy_unit": "record-level, per client"}

    def round_thresholds(self, model: nn.Module, data: ClientData, config: FedAvgConfig, round_: int) -> tuple[list[ClipLayer], list[float]]:
        """The clipping layers and their thresholds S_j this client uses this round (flat: one layer)."""
        if self.clipping == "flat":
            return [], [self.max_grad_norm]
        layers = clipping_layers(model, self.granularity)
        if self.clipping == "per_layer":
            return layers, check_thresholds(self.thresholds, layers)
        if self.clipping == "per_layer_uniform":
            return layers, uniform_thresholds(self.max_grad_norm, len(layers))
        if self.public_data is not None:
            x, y = (t.to(data.x_train.device) for t in self.public_data)
        else:
            g = generator(config.seed, "dp-measure", round_, data.client)
            index = torch.randperm(data.num_train, generator=g)[:self.measure_batch_size].to(data.x_train.device)
            x, y = data.x_train[index], data.y_train[index]
        magnitudes = layer_gradient_magnitudes(model, x, y, layers, self.magnitude_statistic)
        return layers, adaptive_thresholds(magnitudes, self.max_grad_norm)

    # --- the client step ------------------------------------------------------------------------

    def __call__(self, model: nn.Module, data: ClientData, config: FedAvgConfig, round_: int) -> dict[str, float]:
        check_dp_compatible(model)
        # opacus's conv per-sample gradients are wrong for channels-last activations (measured with opacus 1.6),
        # and run_fedavg makes models and client tensors channels-last on CPU: train in the default layout
        model.to(memory_format=torch.contiguous_format)
        if getattr(self.batch_transform, "per_record", True) is False:
            warnings.warn("batch_transform does not act per record (per_record=False): the reported ε assumes "
                          "each transformed record depends on its own record only", stacklevel=2)
        state = self._client(data, config)
        if round_ in state.rounds or (state.rounds and round_ < state.rounds[-1]):
            raise RuntimeError(f"this DPTrainer already trained client {data.client} in round {max(state.rounds)}; "
                               f"use a new DPTrainer for a new run (its accountants compose over every round it trains)")
        layers, thresholds = self.round_thresholds(model, data, config, round_)
        params = [p for p in model.parameters() if p.requires_grad]
        device = data.x_train.device
        if self.secure_mode:
            noise_generator, poisson_seed = None, secrets.randbits(62)
        else:
            noise_generator, poisson_seed = generator(config.seed, "dp-noise", round_, data.client, device=device), None

        steps_before = state.steps
        ghost = self._engine_for(model) == "ghost"
        if ghost:
            groups = [list(layer.indices) for layer in layers] if layers else [list(range(len(params)))]
            grad_sample_module = GhostClipper(model, groups, thresholds)
        else:
            grad_sample_module = GradSampleModule(model)
        try:
            optimizer = self._dp_optimizer(round_optimizer(params, config, round_), state, layers, thresholds,
                                           noise_generator, ghost)
            optimizer.attach_step_hook(state.accountant.get_optimizer_hook_fn(sample_rate=state.sample_rate))
            model.train()
            total, count, batches = 0.0, 0, 0
            for epoch in range(config.local_epochs):
                poisson = (generator(config.seed, "dp-poisson", round_, data.client, epoch) if poisson_seed is None
                           else torch.Generator().manual_seed(poisson_seed + epoch))
                sampler = UniformWithReplacementSampler(num_samples=state.num_samples, sample_rate=state.sample_rate,
                                                        generator=poisson, steps=state.steps_per_epoch)
                for indices in sampler:
                    step = self._ghost_step if ghost else self._noisy_step
                    loss_sum = step(grad_sample_module, optimizer, params, data,
                                    torch.as_tensor(indices, dtype=torch.long, device=device))
                    total += loss_sum
                    count += len(indices)
                    batches += 1
        finally:
            grad_sample_module.close() if ghost else grad_sample_module._close()
            for p in params:
                if hasattr(p, "summed_grad"):
                    del p.summed_grad
            model.zero_grad(set_to_none=True)

        state.rounds.append(round_)
        epsilon = state.epsilon(self.delta)
        entry = {"round": round_, "client": data.client, "epsilon": epsilon, "noise_multiplier": state.noise_multiplier,
                 "steps": state.steps - steps_before, "mean_batch_size": count / max(batches, 1),
                 "layers": [layer.name for layer in layers] or ["all"], "thresholds": list(thresholds)}
        self.log.append(entry)
        metrics = {"train_loss": total / max(count, 1), "epsilon": epsilon, "noise_multiplier": state.noise_multiplier,
                   "sample_rate": state.sample_rate, "steps": float(entry["steps"]), "total_steps": float(state.steps)}
        metrics.update({f"threshold/{j}": float(t) for j, t in enumerate(thresholds)})
        return metrics

    def _client(self, data: ClientData, config: FedAvgConfig) -> ClientPrivacy:
        n = data.num_train
        state = self.clients.get(data.client)
        if state is not None:
            if state.num_samples != n:
                raise RuntimeError(f"client {data.client} had {state.num_samples} training samples and now has {n}; "
                                   f"its sample rate (and ε) would change: use a new DPTrainer")
            return state
        q = sample_rate(n, config.batch_size)
        per_epoch = steps_per_epoch(n, config.batch_size)
        if self.noise_multiplier is not None:
            sigma = float(self.noise_multiplier)
        else:
            sigma = noise_for_epsilon(self.target_epsilon, self.delta, q, config.rounds * config.local_epochs * per_epoch,
                                      self.accountant)
        if n * self.delta >= 1:
            warnings.warn(f"delta={self.delta} is not below 1/n = {1 / n:.3g} for client {data.client}: "
                          f"(ε, δ)-DP with δ ≥ 1/n allows releasing a record outright", stacklevel=3)
        state = ClientPrivacy(data.client, n, q, per_epoch, expected_batch_size(n, config.batch_size), sigma,
                              make_accountant(self.accountant))
        self.clients[data.client] = state
        return state

    def _engine_for(self, model: nn.Module) -> str:
        if self.engine != "auto":
            return self.engine
        try:
            check_supported(model)
        except UnsupportedLayerError:
            return "opacus"
        return "ghost"

    def _dp_optimizer(self, base: torch.optim.Optimizer, state: ClientPrivacy, layers: list[ClipLayer],
                      thresholds: list[float], noise_generator: torch.Generator | None, ghost: bool) -> DPOptimizer:
        common = dict(noise_multiplier=state.noise_multiplier, expected_batch_size=state.expected_batch_size,
                      loss_reduction="mean", generator=noise_generator, secure_mode=self.secure_mode)
        if ghost:  # clipping happened in the engine; the optimizer adds noise over √(Σ S_j²)
            return SummedGradientDPOptimizer(base, max_grad_norm=total_threshold(thresholds), **common)
        if self.clipping == "flat":
            return DPOptimizer(base, max_grad_norm=thresholds[0], **common)
        if self.granularity == "tensor":  # one tensor per layer: exactly opacus's clipping="per_layer"
            return DPPerLayerOptimizer(base, max_grad_norm=list(thresholds), **common)
        return LayerClippingDPOptimizer(base, layers=layers, thresholds=thresholds, **common)

    def _noisy_step(self, module: GradSampleModule, optimizer: DPOptimizer, params: list[nn.Parameter],
                    data: ClientData, indices: torch.Tensor) -> float:
        """One Poisson batch: per-sample gradients (in physical chunks), clip, accumulate, noise, step."""
        if len(indices) == 0:  # an empty Poisson batch still takes a (pure-noise) step: the analysis counts it
            for p in params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return 0.0
        x_batch, y_batch = data.x_train[indices], data.y_train[indices]
        if self.batch_transform is not None:
            x_batch, y_batch = self.batch_transform(x_batch, y_batch)
        x_batch = x_batch.contiguous()
        size = self.physical_batch_size or len(indices)
        chunks = list(zip(torch.split(x_batch, size), torch.split(y_batch, size)))
        loss_sum = 0.0
        for i, (x, y) in enumerate(chunks):
            loss = model_loss(module, module(x), y)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            loss_sum += loss.item() * len(y)
            if i < len(chunks) - 1:
                optimizer.signal_skip_step(do_skip=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss_sum


    def _ghost_step(self, clipper: GhostClipper, optimizer: DPOptimizer, params: list[nn.Parameter],
                    data: ClientData, indices: torch.Tensor) -> float:
        """One Poisson batch with the ghost engine: clipped sums per physical batch, summed, then noise and step."""
        sums = [torch.zeros_like(p) for p in params]
        loss_sum = 0.0
        if len(indices):
            x_batch, y_batch = data.x_train[indices], data.y_train[indices]
            if self.batch_transform is not None:
                x_batch, y_batch = self.batch_transform(x_batch, y_batch)
            size = self.physical_batch_size or len(indices)
            for x, y in zip(torch.split(x_batch.contiguous(), size), torch.split(y_batch, size)):
                loss = model_loss(clipper.model, clipper.model(x), y)
                for total, part in zip(sums, clipper.clipped_sum(loss * len(y))):
                    total += part
                loss_sum += loss.item() * len(y)
        for p, total in zip(params, sums):
            p.summed_grad = total
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_sum


def history_epsilons(history: Sequence[dict[str, Any]]) -> dict[int, float]:
    """Each client's latest ε from a ``run_fedavg`` history (per-client metrics of a :class:`DPTrainer`)."""
    latest: dict[int, float] = {}
    for entry in history:
        for client, metrics in entry.get("clients", {}).items():
            if "epsilon" in metrics:
                latest[int(client)] = float(metrics["epsilon"])
    return dict(sorted(latest.items()))
