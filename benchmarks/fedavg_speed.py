"""FedAvg round time: fedrepro's simulator against a plain sequential PyTorch loop, in one run.

The setting is the quickstart's (paper 04's protocol): 10 clients × 4,500 CIFAR-10 images, the CNN,
batch 64, Adam 1e-3, one local epoch. The plain loop is what one writes first: a DataLoader over a
TensorDataset per client (images decoded once, as the simulator does), a deep copy of the global
model per client, a state-dict average, then a test-set evaluation. Both start from the same
weights; the first round of each is reported separately as start-up.

Run on an idle machine (with 2 threads on 2 cores any other load slows torch many times):

    python benchmarks/fedavg_speed.py [--rounds 4] [--repeats 2] [--device cuda] [--batched]

``--batched`` adds the simulator with ``batched_clients=True`` (every client of a round in one vmapped
computation, :mod:`fedrepro.batched_clients`) to each block.

The last line is the ratio of median steady-state seconds per round, plain / simulator, over
alternating blocks (the machine's speed drifts; alternating exposes both sides to it).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from common import add_device_argument, clock, describe, resolve_device
from torch.utils.data import DataLoader, TensorDataset

from fedrepro.data import load_federated
from fedrepro.fl import FedAvgConfig, evaluate, run_fedavg
from fedrepro.models import build_model


def plain_fedavg(model: torch.nn.Module, data, rounds: int, seed: int,
                 device: torch.device) -> tuple[list[float], float, float]:
    """The naive loop (all data on ``device``). Returns (seconds per round, start-up seconds, final accuracy)."""
    started = clock(device)
    model.to(device)
    x, y = data.train.tensors(device)
    clients = [TensorDataset(x[s.train.to(device)], y[s.train.to(device)]) for s in data.splits]
    x_test, y_test = data.test.tensors(device)
    startup = clock(device) - started
    g = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(rounds):
        t = clock(device)
        states, sizes = [], []
        for dataset in clients:
            local = copy.deepcopy(model)
            optimizer = torch.optim.Adam(local.parameters(), lr=1e-3)
            for xb, yb in DataLoader(dataset, batch_size=64, shuffle=True, generator=g):
                optimizer.zero_grad()
                F.cross_entropy(local(xb), yb).backward()
                optimizer.step()
            states.append(local.state_dict())
            sizes.append(len(dataset))
        total = sum(sizes)
        model.load_state_dict({k: sum(s[k] * (n / total) for s, n in zip(states, sizes)) for k in states[0]})
        evaluate(model, x_test, y_test)
        times.append(clock(device) - t)
    return times, startup, evaluate(model, x_test, y_test)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate plain and simulator blocks this many times, so drifting load hits both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batched", action="store_true", help="also time the simulator with batched clients")
    add_device_argument(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)

    data = load_federated("cifar10", 10, args.seed, val_fraction=0.1)
    torch.manual_seed(args.seed)
    initial = build_model("cnn")
    print(f"{describe(device)}; {data.describe()}")

    def steady(times: list[float]) -> list[float]:
        return times[1:] if len(times) > 1 else times

    plain_steady, ours_steady, batched_steady = [], [], []
    for repeat in range(args.repeats):
        plain_times, plain_startup, plain_acc = plain_fedavg(copy.deepcopy(initial), data, args.rounds, args.seed,
                                                                device)
        t = time.perf_counter()
        result = run_fedavg(copy.deepcopy(initial), data.train, data.test, data.splits,
                            FedAvgConfig(rounds=args.rounds, seed=args.seed, device=str(device)), progress=False)
        ours_times = [h["seconds"] for h in result.history]
        plain_steady += steady(plain_times)
        ours_steady += steady(ours_times)
        print(f"block {repeat + 1}/{args.repeats}")
        print(f"  plain loop : start-up {plain_startup:5.2f} s, first round {plain_times[0]:5.2f} s, "
              f"steady {statistics.median(steady(plain_times)):5.2f} s/round, "
              f"accuracy after {args.rounds} rounds {plain_acc:.3f}")
        print(f"  simulator  : start-up {result.startup_seconds:5.2f} s, first round {ours_times[0]:5.2f} s, "
              f"steady {statistics.median(steady(ours_times)):5.2f} s/round, "
              f"accuracy after {args.rounds} rounds {result.final_accuracy:.3f} "
              f"(incl. validation of 10 clients each round; total {time.perf_counter() - t:.1f} s)")
        if args.batched:
            batched = run_fedavg(copy.deepcopy(initial), data.train, data.test, data.splits,
                                 FedAvgConfig(rounds=args.rounds, seed=args.seed, device=str(device),
                                              batched_clients=True), progress=False)
            batched_times = [h["seconds"] for h in batched.history]
            batched_steady += steady(batched_times)
            print(f"  batched    : start-up {batched.startup_seconds:5.2f} s, first round {batched_times[0]:5.2f} s, "
                  f"steady {statistics.median(steady(batched_times)):5.2f} s/round, "
                  f"accuracy after {args.rounds} rounds {batched.final_accuracy:.3f}")
    plain, ours = statistics.median(plain_steady), statistics.median(ours_steady)
    print(f"median steady round: plain {plain:.2f} s, simulator {ours:.2f} s")
    if batched_steady:
        together = statistics.median(batched_steady)
        print(f"batched clients: {together:.2f} s/round, {ours / together:.2f}x the simulator's speed")
    print(f"speedup {plain / ours:.2f}x")


if __name__ == "__main__":
    main()
