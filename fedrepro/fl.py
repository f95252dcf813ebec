"""An in-process FedAvg simulator: fast on one machine, deterministic for a seed, open to hooks.

Design choices that make it fast on a CPU: every client's images are normalised once and kept as
one float tensor on the device, so a batch is an index into it (no per-image DataLoader work);
one local model is reused for every client (its weights reloaded from the global state) and the
aggregate is accumulated in place, so no per-client model copies are kept.

Determinism: the batch order of client ``k`` in round ``r`` comes from
``generator(seed, "batches", r, k)`` and the global RNG is reseeded from ``(seed, r, k)`` before
the client trains (for dropout or a variational bottleneck's sampling), so a client's update does
not depend on the order clients are visited in.
"""
from __future__ import annotations

import copy
import math
import multiprocessing as mp
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fedrepro.data import ClientSplit, ImageDataset
from fedrepro.runtime import derive_seed, generator, get_device
from fedrepro.validation import parsed


def model_loss(model: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus every ``regularization_loss()`` a module of the model reports.

    A variational bottleneck (PRECODE, CVB) stores the KL term of its last forward pass and exposes
    it that way, so the same loss is used in FedAvg training and when a victim's gradient is made.
    """
    loss = F.cross_entropy(logits, targets)
    for module in model.modules():
        regularizer = getattr(module, "regularization_loss", None)
        if callable(regularizer):
            loss = loss + regularizer()
    return loss


LR_SCHEDULE_EXAMPLE = "'constant', 'cosine' or 'multistep:<round>,...:<gamma>' such as 'multistep:75,125,176:0.1'"


@dataclass(frozen=True)
class LRSchedule:
    """How the clients' learning rate changes from round to round: round ``r`` (1-based) trains at
    ``lr · factor(r, rounds)``.

    Written as a string so that a notebook parameter, a tier YAML or a sweep can set it:

    * ``constant``: every round at ``lr``;
    * ``multistep:<r1>,<r2>,...:<gamma>``: multiplied by ``gamma`` from each listed round on
      (``multistep:75,125,176:0.1`` is torch's ``MultiStepLR(milestones=[74, 124, 175])`` stepped once
      per epoch, with round ``r`` as epoch ``r - 1``);
    * ``cosine``: ``lr · ½(1 + cos(π (r - 1) / rounds))``, torch's ``CosineAnnealingLR(T_max=rounds)``
      to 0, again with round ``r`` as epoch ``r - 1``.

    Per round, not per local step, because a client's optimizer lives for one round (it is built fresh at
    that round's rate): with one local epoch per round, round ``r`` plays epoch ``r - 1`` of the
    centralised schedule a paper states in epochs.
    """

    kind: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> "LRSchedule":
        """``"constant"``, ``"cosine"`` or ``"multistep:75,125,176:0.1"``; a ValueError says what is wrong."""
        kind, _, rest = spec.partition(":")
        if kind in ("constant", "cosine"):
            if rest:
                raise ValueError(f"{kind} takes no arguments")
            return cls(kind)
        if kind != "multistep":
            raise ValueError(f"unknown schedule {kind!r}; expected {LR_SCHEDULE_EXAMPLE}")
        rounds, separator, gamma = rest.partition(":")
        try:
            milestones = tuple(int(r) for r in rounds.split(","))
            factor = float(gamma)
        except ValueError:
            raise ValueError(f"expected {LR_SCHEDULE_EXAMPLE}") from None
        if not separator or any(m < 1 for m in milestones) or list(milestones) != sorted(set(milestones)):
            raise ValueError("multistep needs increasing rounds ≥ 1 and a factor, e.g. 'multistep:75,125,176:0.1'")
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"multistep's factor must be a finite number > 0, got {gamma}")
        return cls(kind, milestones, factor)

    def factor(self, round_: int, rounds: int) -> float:
        """The multiplier of the base learning rate in round ``round_`` (1-based) of ``rounds``."""
        if self.kind == "multistep":
            return self.gamma ** sum(m <= round_ for m in self.milestones)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (round_ - 1) / rounds))
        return 1.0


@dataclass
class FedAvgConfig:
    """A FedAvg run. Defaults are paper 04's protocol (Adam 1e-3, batch 64, 1 local epoch)."""

    rounds: int = 10
    local_epochs: int = 1
    client_fraction: float = 1.0
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "constant"  # the clients' learning rate per round; see LRSchedule
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 64
    patience: int | None = None  # rounds without a better mean client validation loss before stopping
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1024
    workers: int | None = None  # client-training processes on CPU; None = one per CPU thread for stateless trainers
    # on CPU, models and client images are channels-last (NHWC): ~10-15% faster for the papers' small CNNs.
    # A trainer that uses opacus must convert back (DPTrainer does): its per-sample conv gradients are wrong in NHWC
    channels_last: bool = True
    # every chosen client of a round trained in one vmapped computation (fedrepro.batched_clients): the same
    # arithmetic in far fewer, larger steps, for GPUs; plain StandardTrainer and no BatchNorm only
    batched_clients: bool = False

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise ValueError("rounds, local_epochs and batch_size must be positive")
        if not 0 < self.client_fraction <= 1:
            raise ValueError(f"client_fraction must be in (0, 1], got {self.client_fraction}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        parsed("lr_schedule", self.lr_schedule, LRSchedule.parse, LR_SCHEDULE_EXAMPLE)

    def round_lr(self, round_: int) -> float:
        """The clients' learning rate in ``round_`` (1-based): ``lr`` times the schedule's factor."""
        return self.lr * LRSchedule.parse(self.lr_schedule).factor(round_, self.rounds)  # x * 1.0 is x, bit for bit


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], FedAvgConfig], torch.optim.Optimizer]] = {
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, betas=(0.9, 0.999), weight_decay=c.weight_decay,
                                               fused=_fusable(params)),
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}


def round_optimizer(params: list[nn.Parameter], config: FedAvgConfig, round_: int) -> torch.optim.Optimizer:
    """A client's fresh optimizer for ``round_``, at that round's scheduled learning rate."""
    optimizer = OPTIMIZERS[config.optimizer](params, config)
    for group in optimizer.param_groups:
        group["lr"] = config.round_lr(round_)
    return optimizer


def _fusable(params: list[nn.Parameter]) -> bool | None:
    """Adam's fused kernel (one op for all parameters) when every parameter is a float on CPU/CUDA."""
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if ok else None


@dataclass
class ClientData:
    """One client's normalised tensors on the training device."""

    client: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def num_train(self) -> int:
        return len(self.y_train)


def batch_order(num_items: int, batch_size: int, seed: int, round_: int, client: int, epoch: int) -> list[torch.Tensor]:
    """The minibatch index lists client ``client`` uses in ``round_``/``epoch`` (last batch may be short)."""
    order = torch.randperm(num_items, generator=generator(seed, "batches", round_, client, epoch))
    return list(torch.split(order, batch_size))


class LocalTrainer(Protocol):
    """The per-client training step; DP, transformations and adversarial training replace it.

    A trainer may keep per-client state across rounds (e.g. a privacy accountant) keyed by client.
    It trains ``model`` in place and returns metrics to log (at least ``train_loss``); they are kept
    per client and round in the run's history. A trainer that keeps no state sets ``stateless =
    True``, which lets the simulator train clients in parallel worker processes by default.
    """

    def __call__(self, model: nn.Module, data: ClientData, config: FedAvgConfig, round_: int) -> dict[str, float]: ...


@dataclass
class StandardTrainer:
    """Plain local training with the configured optimizer, fresh each round (clients keep no state).

    ``batch_transform(x, y)`` is applied to every batch, where a data transformation defense or
    adversarial-example injection plugs in without a new trainer.

    ``gradient_transform(model, x, y)`` is called after ``backward`` and before the optimizer step,
    with the parameters' ``.grad`` holding the batch's mean-loss gradient and the (transformed)
    batch; it rewrites ``.grad`` in place. A gradient defense on what a client would share (noise,
    pruning, DP-SGD clipping, e.g. :class:`fedrepro.attacks.DefendedStep`) plugs in there; the batch
    is passed so a per-sample defense can recompute per-sample gradients. Its randomness should come
    from the global RNG, which the simulator reseeds per (round, client). With ``stateless=True``
    the simulator forks worker processes that each hold a copy of the trainer, so neither hook may
    keep state across clients (a frozen dataclass, as the defenses are, is also picklable).
    """

    batch_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    gradient_transform: Callable[[nn.Module, torch.Tensor, torch.Tensor], None] | None = None
    stateless: bool = True

    def __call__(self, model: nn.Module, data: ClientData, config: FedAvgConfig, round_: int) -> dict[str, float]:
        optimizer = round_optimizer(list(model.parameters()), config, round_)
        model.train()
        total, count = 0.0, 0
        for epoch in range(config.local_epochs):
            for index in batch_order(data.num_train, config.batch_size, config.seed, round_, data.client, epoch):
                x, y = data.x_train[index], data.y_train[index]
                if self.batch_transform is not None:
                    x, y = self.batch_transform(x, y)
                optimizer.zero_grad(set_to_none=True)
                loss = model_loss(model, model(x), y)
                loss.backward()
                if self.gradient_transform is not None:
                    self.gradient_transform(model, x, y)
                optimizer.step()
                total += loss.item() * len(y)
                count += len(y)
        return {"train_loss": total / max(count, 1)}


UpdateHook = Callable[[int, int, dict[str, torch.Tensor], nn.Module], None]
"""``hook(round, client, global_state, trained_local_model)``: sees one client's update as the server does."""


@dataclass
class FedAvgResult:
    model: nn.Module
    history: list[dict[str, Any]]
    best_round: int
    stopped_early: bool
    startup_seconds: float
    seconds: float
    config: dict = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float:
        return self.history[-1]["test_accuracy"]

    @property
    def best_accuracy(self) -> float:
        """Test accuracy in the round with the lowest mean client validation loss."""
        return self.history[self.best_round - 1]["test_accuracy"]


@dataclass
class RoundLog:
    """A run's per-round history and its early stopping, shared by every engine (simulator, Flower).

    The best round is the one with the lowest mean client validation loss; training stops when it
    has not improved for ``patience`` rounds.
    """

    patience: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_loss: float = math.inf
    best_round: int = 0
    stopped_early: bool = False

    def record(self, round_: int, test_loss: float, test_accuracy: float, val_losses: list[float],
               client_metrics: dict[int, dict[str, float]], seconds: float) -> bool:
        """Append one round; return True when training should stop."""
        val_loss = sum(val_losses) / len(val_losses) if val_losses else math.nan
        self.history.append({"round": round_, "test_accuracy": test_accuracy, "test_loss": test_loss,
                             "val_loss": val_loss, "seconds": seconds, "clients": client_metrics,
                             "train_loss": sum(m["train_loss"] for m in client_metrics.values()) / len(client_metrics)})
        if not val_losses or val_loss < self.best_loss:
            self.best_loss, self.best_round = (val_loss if val_losses else self.best_loss), round_
        elif self.patience is not None and round_ - self.best_round >= self.patience:
            self.stopped_early = True
        return self.stopped_early

    def result(self, model: nn.Module, config: FedAvgConfig, startup: float, seconds: float) -> FedAvgResult:
        return FedAvgResult(model, self.history, self.best_round, self.stopped_early, startup, seconds, asdict(config))


def aggregate(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """FedAvg: the weighted mean of state dicts (weights normalised); integer buffers come from the first."""
    if not states or len(states) != len(weights):
        raise ValueError("need one weight per state and at least one state")
    total = float(sum(weights))
    result: dict[str, torch.Tensor] = {}
    for state, weight in zip(states, weights):
        _accumulate(result, state, weight / total)
    return result


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on normalised tensors, in eval mode."""
    if len(y) == 0:
        return math.nan, math.nan
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    model.train(was_training)
    return loss / len(y), correct / len(y)


def training_layout(config: FedAvgConfig, device: torch.device) -> torch.memory_format:
    """The memory layout clients train in: channels-last on CPU when ``config.channels_last``, else the default."""
    return torch.channels_last if config.channels_last and device.type == "cpu" else torch.contiguous_format


def client_tensors(train: ImageDataset, splits: list[ClientSplit], device: torch.device,
                   memory_format: torch.memory_format = torch.contiguous_format) -> list[ClientData]:
    """Normalise every client's share once, onto ``device``; batches are then index slices of it.

    Indexing a channels-last tensor with a batch's indices keeps it channels-last, so the layout is
    chosen once here.
    """
    def part(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = train.normalize(train.images[index].to(device))
        return x.contiguous(memory_format=memory_format), train.labels[index].to(device)

    return [ClientData(k, *part(s.train), *part(s.val)) for k, s in enumerate(splits)]


def run_fedavg(model: nn.Module, train: ImageDataset, test: ImageDataset, splits: list[ClientSplit],
               config: FedAvgConfig, trainer: LocalTrainer | None = None,
               hooks: tuple[UpdateHook, ...] = (), progress: bool = True) -> FedAvgResult:
    """Train ``model`` (its weights are the initial global state) with FedAvg; returns history and model.

    Each round: sample ``client_fraction`` of the clients, train each locally with ``trainer``,
    average the local states weighted by training-set size, evaluate the global model on
    ``test`` and the mean client validation loss; stop when that loss has not improved for
    ``config.patience`` rounds.
    """
    started = time.perf_counter()
    device = get_device(config.device)
    trainer = trainer or StandardTrainer()
    layout = training_layout(config, device)
    global_model = model.to(device, memory_format=layout)
    local_model = copy.deepcopy(global_model)
    clients = client_tensors(train, splits, device, layout)
    x_test, y_test = test.tensors(device)
    x_test = x_test.contiguous(memory_format=layout)
    per_round = max(1, round(config.client_fraction * len(clients)))
    if config.batched_clients:
        from fedrepro.batched_clients import BatchedClients

        pool: Any = BatchedClients(local_model, clients, trainer, config)
    else:
        workers = _worker_count(config, device, per_round, getattr(trainer, "stateless", False))
        pool = _ClientPool(workers, local_model, clients, trainer, config) if workers > 1 else None
    startup = time.perf_counter() - started

    log = RoundLog(config.patience)
    bar = tqdm(range(1, config.rounds + 1), desc="FedAvg", unit="round", disable=not progress)
    try:
        for round_ in bar:
            round_start = time.perf_counter()
            chosen = _sample_clients(len(clients), per_round, config.seed, round_)
            global_state = {k: v.detach().clone() for k, v in global_model.state_dict().items()}
            if pool is not None:
                updates = pool.train(round_, chosen, global_state)
            else:
                updates = (train_client(local_model, clients[k], trainer, config, round_, global_state) for k in chosen)
            total_weight = float(sum(clients[k].num_train for k in chosen))
            accumulated: dict[str, torch.Tensor] = {}
            client_metrics: dict[int, dict[str, float]] = {}
            for k, (state, metrics) in zip(chosen, updates):
                client_metrics[k] = metrics
                if hooks:
                    local_model.load_state_dict(state)
                    for hook in hooks:
                        hook(round_, k, global_state, local_model)
                _accumulate(accumulated, state, clients[k].num_train / total_weight)
            global_model.load_state_dict({k: accumulated.get(k, v) for k, v in global_state.items()})

            test_loss, test_acc = evaluate(global_model, x_test, y_test, config.eval_batch_size)
            val_losses = [evaluate(global_model, c.x_val, c.y_val, config.eval_batch_size)[0] for c in clients if len(c.y_val)]
            stop = log.record(round_, test_loss, test_acc, val_losses, client_metrics, time.perf_counter() - round_start)
            bar.set_postfix(acc=f"{test_acc:.3f}", val_loss=f"{log.history[-1]['val_loss']:.3f}")
            if stop:
                break
    finally:
        bar.close()
        if pool is not None:
            pool.close()
    return log.result(global_model, config, startup, time.perf_counter() - started)


def train_client(model: nn.Module, data: ClientData, trainer: LocalTrainer, config: FedAvgConfig, round_: int,
                 global_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One client's round: start from the global state, reseed, train; return (new state, metrics)."""
    model.load_state_dict(global_state)
    torch.manual_seed(derive_seed(config.seed, "client-rng", round_, data.client))
    metrics = trainer(model, data, config, round_)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, metrics


def _worker_count(config: FedAvgConfig, device: torch.device, per_round: int, stateless: bool) -> int:
    """Explicit ``workers`` wins; by default parallel only on a CPU with fork and a stateless trainer."""
    if device.type != "cpu" or "fork" not in mp.get_all_start_methods():
        return 1
    if config.workers is None and not stateless:
        return 1
    wanted = config.workers if config.workers is not None else torch.get_num_threads()
    return max(1, min(wanted, per_round))


class _ClientPool:
    """Forked worker processes, each training a fixed share of the clients (client k on worker k mod W).

    On a CPU with a few cores, several single-threaded processes train small models faster than one
    process with several threads (measured in benchmarks/fedavg_speed.py). The fixed assignment keeps a
    stateful trainer's per-client state (e.g. a privacy accountant) in one process across rounds; such
    state lives in the workers, so trainers report what the notebook needs through their metrics.
    Clients' data is inherited through fork, never copied through a pipe.
    """

    def __init__(self, workers: int, model: nn.Module, clients: list[ClientData], trainer: LocalTrainer,
                 config: FedAvgConfig) -> None:
        context = mp.get_context("fork")
        threads = max(1, torch.get_num_threads() // workers)
        self.connections, self.processes = [], []
        for _ in range(workers):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_loop, args=(child, model, clients, trainer, config, threads),
                                      daemon=True)
            process.start()
            child.close()
            self.connections.append(parent)
            self.processes.append(process)

    def train(self, round_: int, chosen: list[int], global_state: dict[str, torch.Tensor]
              ) -> list[tuple[dict[str, torch.Tensor], dict[str, float]]]:
        count = len(self.connections)
        for w, connection in enumerate(self.connections):
            connection.send((round_, [k for k in chosen if k % count == w], global_state))
        results: dict[int, tuple[dict[str, torch.Tensor], dict[str, float]]] = {}
        for connection in self.connections:
            reply = connection.recv()
            if isinstance(reply, str):
                raise RuntimeError(f"client training failed in a worker process:\n{reply}")
            results.update(reply)
        return [results[k] for k in chosen]

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send(None)
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


def _worker_loop(connection, model: nn.Module, clients: list[ClientData], trainer: LocalTrainer,
                 config: FedAvgConfig, threads: int) -> None:
    torch.set_num_threads(threads)
    while (message := connection.recv()) is not None:
        round_, assigned, global_state = message
        try:
            connection.send({k: train_client(model, clients[k], trainer, config, round_, global_state) for k in assigned})
        except Exception:  # noqa: BLE001 - the traceback travels to the parent, which raises
            connection.send(traceback.format_exc())


def _sample_clients(num_clients: int, per_round: int, seed: int, round_: int) -> list[int]:
    if per_round >= num_clients:
        return list(range(num_clients))
    return sorted(torch.randperm(num_clients, generator=generator(seed, "clients", round_))[:per_round].tolist())


def _accumulate(total: dict[str, torch.Tensor], state: dict[str, torch.Tensor], weight: float) -> None:
    for key, value in state.items():
        if not value.is_floating_point():
            total.setdefault(key, value.clone())
        elif key in total:
            total[key].add_(value, alpha=weight)
        else:
            total[key] = value.detach() * weight
