"""DP-SGD step time against non-private training: fedrepro's ghost engine, opacus alone in each of its modes,
and fedrepro's trainer on opacus (the reference engine), in one run.

One client, one local epoch of ``--samples`` random CIFAR-shaped images, batch ``--batch`` (expected, with
Poisson sampling for every private variant), Adam, flat clipping, σ = 1: the FedAvg client step of paper 01.
Per model:

* non-private — :class:`fedrepro.fl.StandardTrainer`;
* ours — :class:`fedrepro.privacy.DPTrainer` with ``engine="ghost"`` (:mod:`fedrepro.privacy.ghost`);
* opacus/<mode> — what a user would otherwise write: ``PrivacyEngine().make_private(...)`` with
  ``grad_sample_mode`` hooks, ew, functorch or ghost, and a loop over its Poisson data loader;
* fedrepro on opacus — ``DPTrainer(engine="opacus")``, the reference our tests compare against.

Each variant runs one warm-up epoch, then ``--repeats`` epochs interleaved with the others; the best
epoch counts (step time does not depend on the data or on σ). Published opacus overheads: 2.6–8×
(Yousefpour et al., 2021). Run on an idle machine (with 2 threads on 2 cores any other load slows torch
many times):

    python benchmarks/dp_overhead.py [--models cnn tanhnet resnet9] [--samples 512] [--repeats 2] [--device cuda]
                                     [--clipping flat per_layer_uniform per_layer_adaptive]

``--clipping`` adds ours and fedrepro-on-opacus for each further clipping strategy of paper 02 (the
adaptive one measures its thresholds on 256 of the images as public data, once per client and run).

The last line is the ratio of ours to the non-private step for the last model.
"""
from __future__ import annotations

import argparse
import warnings
from typing import Callable

import torch
from common import add_device_argument, clock, describe, resolve_device

OPACUS_MODES = ("hooks", "ew", "functorch", "ghost")


def opacus_epoch(name: str, mode: str, x: torch.Tensor, y: torch.Tensor, batch: int,
                 device: torch.device) -> Callable[[], int]:
    """One epoch of opacus alone, as its tutorials write it; returns the steps it took."""
    from opacus import PrivacyEngine

    from fedrepro.models import build_model

    def run() -> int:
        torch.manual_seed(0)
        model = build_model(name).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
        criterion = torch.nn.CrossEntropyLoss()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            made = PrivacyEngine().make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode,
                                                criterion=criterion)
            if mode == "ghost":
                model, optimizer, criterion, loader = made
            else:
                model, optimizer, loader = made
            steps = 0
            for xb, yb in loader:
                optimizer.zero_grad()
                criterion(model(xb), yb).backward()
                optimizer.step()
                steps += 1
        return steps

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "tanhnet", "resnet9"])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--opacus-modes", nargs="*", default=list(OPACUS_MODES), choices=OPACUS_MODES)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clipping", nargs="+", default=["flat"],
                        choices=["flat", "per_layer_uniform", "per_layer_adaptive"])
    add_device_argument(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    from fedrepro.fl import ClientData, FedAvgConfig, StandardTrainer
    from fedrepro.models import build_model
    from fedrepro.privacy import DPTrainer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.samples,), generator=g).to(device)
    data = ClientData(0, x, y, x[:0], y[:0])
    steps = -(-args.samples // args.batch)
    print(f"{describe(device)}; {steps} steps of batch {args.batch} (expected), best of {args.repeats} epochs")
    ratio = float("nan")
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name).to(device)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        config = FedAvgConfig(rounds=100, batch_size=args.batch, seed=0, device=str(device))
        trainers = {"non-private": StandardTrainer(),
                    "ours (ghost)": DPTrainer(noise_multiplier=1.0, max_grad_norm=1.0, engine="ghost"),
                    "fedrepro on opacus": DPTrainer(noise_multiplier=1.0, max_grad_norm=1.0, engine="opacus")}
        for clipping in [c for c in args.clipping if c != "flat"]:
            public = (x[:256], y[:256]) if clipping == "per_layer_adaptive" else None
            for engine, label in (("ghost", "ours (ghost)"), ("opacus", "fedrepro on opacus")):
                trainers[f"{label}, {clipping}"] = DPTrainer(clipping=clipping, noise_multiplier=1.0, max_grad_norm=1.0,
                                                             engine=engine, public_data=public)
        variants: dict[str, Callable[[int], None]] = {}
        for label, trainer in trainers.items():
            def epoch(round_: int, trainer=trainer) -> None:
                model.load_state_dict(initial)
                trainer(model, data, config, round_)
            variants[label] = epoch
        for mode in args.opacus_modes:
            run = opacus_epoch(name, mode, x, y, args.batch, device)
            variants[f"opacus/{mode}"] = lambda round_, run=run: run()
        seconds: dict[str, list[float]] = {k: [] for k in variants}
        round_ = 0
        for repeat in range(args.repeats + 1):
            for label, epoch in list(variants.items()):
                round_ += 1
                started = clock(device)
                try:
                    epoch(round_)
                except Exception as error:  # an opacus mode that refuses a model: say so, keep the others
                    print(f"  {label} failed on {name}: {type(error).__name__}: {str(error)[:120]}")
                    seconds.pop(label)
                    variants.pop(label)
                    continue
                if repeat > 0:  # the first pass of each is a warm-up
                    seconds[label].append((clock(device) - started) / steps)
        best = {k: min(v) for k, v in seconds.items() if v}
        plain = best["non-private"]
        fastest = min((k for k in best if k.startswith("opacus/")), key=best.get, default=None)
        print(f"{name}:")
        for label, value in best.items():
            mark = "  <- opacus's fastest mode" if label == fastest else ""
            print(f"  {label:>40} {1000 * value:9.1f} ms/step  {value / plain:5.2f}x non-private{mark}")
        ratio = best["ours (ghost)"] / plain
        if fastest:
            print(f"  ours / opacus's fastest ({fastest}): {best['ours (ghost)'] / best[fastest]:.2f}x")
    print(f"overhead {ratio:.2f}x")


if __name__ == "__main__":
    main()
