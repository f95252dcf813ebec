"""DP-SGD step time against non-private training: fedrepro.privacy's DPTrainer vs StandardTrainer.

One client, one local epoch of ``--samples`` random CIFAR-shaped images with batch 64 and Adam (the
FedAvg client step of paper 01), for each model: the non-private step (``StandardTrainer``) and the
DP-SGD step (``DPTrainer``: opacus per-sample gradients with hooks, flat clipping, Gaussian noise,
Poisson sampling with expected batch 64 — the same number of steps). Step time does not depend on
the data or on σ. Each trainer runs one warm-up epoch, then ``--repeats`` epochs interleaved with the
other; the best epoch counts. The published opacus overhead is 2.6–8× (Yousefpour et al., 2021);
measured here on 2 idle cores (torch 2.14.1, opacus 1.6, 2 threads, 8 steps of batch 64): the CNN
4.0 → 28.1 ms/step (7.0×), ResNet-9 0.72 → 2.76 s/step (3.8×). An earlier run under load gave 6.3×
and 3.1×.

Run on an idle machine (with 2 threads on 2 cores any other load slows torch many times):

    python benchmarks/dp_overhead.py [--models cnn resnet9] [--samples 512] [--repeats 2] [--device cuda]

The last line is the DP / non-private step-time ratio of the last model.
"""
from __future__ import annotations

import argparse

import torch
from common import add_device_argument, clock, describe, resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet9"])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_device_argument(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    from fedrepro.fl import ClientData, FedAvgConfig, StandardTrainer
    from fedrepro.models import build_model
    from fedrepro.privacy import DPTrainer

    g = torch.Generator().manual_seed(0)
    data = ClientData(0, torch.randn(args.samples, 3, 32, 32, generator=g).to(device),
                      torch.randint(0, 10, (args.samples,), generator=g).to(device),
                      torch.empty(0, 3, 32, 32, device=device), torch.empty(0, dtype=torch.long, device=device))
    steps = -(-args.samples // args.batch)
    ratio = float("nan")
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name).to(device)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        config = FedAvgConfig(rounds=1 + 2 * args.repeats, batch_size=args.batch, seed=0, device=str(device))
        trainers = {"non-private": StandardTrainer(), "DP-SGD": DPTrainer(noise_multiplier=1.0, max_grad_norm=1.0)}
        seconds: dict[str, list[float]] = {k: [] for k in trainers}
        round_ = 0
        for repeat in range(args.repeats + 1):
            for label, trainer in trainers.items():
                model.load_state_dict(initial)
                round_ += 1
                started = clock(device)
                trainer(model, data, config, round_)
                if repeat > 0:  # the first pass of each is a warm-up
                    seconds[label].append((clock(device) - started) / steps)
        plain, private = min(seconds["non-private"]), min(seconds["DP-SGD"])
        ratio = private / plain
        print(f"{name:>8}: non-private {1000 * plain:8.1f} ms/step, DP-SGD {1000 * private:8.1f} ms/step "
              f"-> {ratio:.1f}x  ({steps} steps of batch {args.batch}, best of {args.repeats})")
    print(describe(device))
    print(f"overhead {ratio:.1f}x")


if __name__ == "__main__":
    main()
