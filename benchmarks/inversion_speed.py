"""Batched inversion engine vs. the per-image Python loop every public implementation uses.

Same victims (CIFAR-10 training images), same untrained model (default: paper 04's CNN with its
CVB), same IG settings (cosine + TV on all layers, Adam, signed gradients, box, step decay), same
starting images, same iteration count. Prints the time of both, where the batched engine spends
its time (torch profiler), and as its last line the ratio ``speedup N.Nx``. With the CVB sampling,
the two runs draw different noise, so their SSIMs agree only on average.

``--local-steps K`` benchmarks the model-update attack instead: every victim sends ``w0 - wK`` after
K local SGD steps (``--local-lr``), the engine runs ``ig_multistep`` and the loop unrolls the K steps
with ``create_graph=True`` one victim at a time, as Geiping et al.'s ``loss_steps`` does.

    python benchmarks/inversion_speed.py [--victims 64 --iterations 100 --model cnn-cvb --threads 2]
    python benchmarks/inversion_speed.py --model cnn --local-steps 5 --victims 16 --iterations 20
    python benchmarks/inversion_speed.py --device cuda --victims 256       # both sides on the GPU

Timings are only meaningful on an otherwise idle machine (other load slows small torch ops 25-50x).
"""
from __future__ import annotations

import argparse
import torch
from common import add_device_argument, clock, describe, matmul_rate, resolve_device

from fedrepro.attacks import LocalTraining, ServerView, client_update
from fedrepro.fl import model_loss
from fedrepro.attacks.inversion import _initial, invert
from fedrepro.attacks.optim import step_decay_milestones
from fedrepro.attacks.presets import ATTACKS
from fedrepro.data import load_dataset, subsample
from fedrepro.defenses.variational import add_cvb
from fedrepro.metrics import ssim
from fedrepro.models import MODELS, build_model


def shared(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str],
           local: LocalTraining | None) -> list[torch.Tensor]:
    """The dummy's gradient of the shared layers, or its unrolled update ``w0 - wK``, differentiable in ``x``."""
    if local is None:
        params = [p for n, p in model.named_parameters() if n in names]
        return list(torch.autograd.grad(model_loss(model, model(x), y), params, create_graph=True))
    start = dict(model.named_parameters())
    current = dict(start)
    for rows in local.minibatches(x.shape[0]):
        logits = torch.func.functional_call(model, current, (x[rows],))
        grads = torch.autograd.grad(model_loss(model, logits, y[rows]), list(current.values()), create_graph=True)
        current = {n: p - local.lr * g for (n, p), g in zip(current.items(), grads)}
    return [start[n] - current[n] for n in names]


def loop_attack(view: ServerView, labels: torch.Tensor, starts: torch.Tensor, iterations: int, lr: float,
                tv_weight: float) -> torch.Tensor:
    """One victim after another, written as the reference inverting-gradients code does it."""
    model = view.model
    device = next(model.parameters()).device
    mean = torch.tensor(view.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(view.std, device=device).view(1, -1, 1, 1)
    low, high = -mean / std, (1 - mean) / std
    results = []
    for victim in range(view.num_victims):
        target = [view.gradients[n][victim] for n in view.names]
        x = starts[victim].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(step_decay_milestones(iterations)),
                                                         gamma=0.1)
        y = labels[victim]
        for _ in range(iterations):
            optimizer.zero_grad()
            grads = shared(model, x, y, view.names, view.local)
            dot, norm, target_norm = 0.0, 0.0, 0.0
            for g, t in zip(grads, target):
                dot = dot - (g * t).sum()
                norm = norm + g.pow(2).sum()
                target_norm = target_norm + t.pow(2).sum()
            cost = 1 + dot / norm.sqrt() / target_norm.sqrt()
            tv = (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
            (cost + tv_weight * tv).backward()
            x.grad.sign_()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                x.data = torch.max(torch.min(x, high), low)
        results.append(x.detach())
    return torch.stack(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victims", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--model", default="cnn-cvb",
                        help=f"'cnn-cvb' (paper 04's CNN with its CVB, in training mode: the bottleneck samples) "
                             f"or a registered model: {', '.join(MODELS.names())}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--local-steps", type=int, default=0,
                        help="0: attack single gradients; K: attack model updates after K local SGD steps")
    parser.add_argument("--local-lr", type=float, default=0.1, help="local learning rate with --local-steps")
    add_device_argument(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    data = load_dataset("cifar10", "train")
    index = subsample(len(data), args.victims, args.seed)
    images, labels = data.normalize(data.images[index]).to(device), data.labels[index].to(device)
    if args.model == "cnn-cvb":
        model = add_cvb(build_model("cnn")).train()
    else:
        model = build_model(args.model, in_channels=3, num_classes=10, image_size=32).eval()
    model = model.to(device)
    local = LocalTraining(steps=args.local_steps, lr=args.local_lr) if args.local_steps else None
    view = ServerView(model, client_update(model, images, labels, local=local), 1, (3, 32, 32), data.mean, data.std,
                      labels[:, None], kind="update" if local else "gradient", local=local)
    config = ATTACKS.get("ig_multistep" if local else "ig")(max_iterations=args.iterations)
    victims = torch.arange(args.victims)
    starts = _initial(view, config, victims, torch.zeros_like(victims), args.seed, 10, torch.float32,
                      device).view(args.victims, 1, 3, 32, 32)
    shared_what = f"updates after {args.local_steps} local steps (lr {args.local_lr:g})" if local else "gradients"
    print(f"{args.victims} CIFAR-10 victims, model {args.model} (untrained), IG settings on {shared_what}, "
          f"{args.iterations} iterations; {describe(device)}")

    invert(view.select([0]), config.replace(max_iterations=2), progress=False)  # warm-up (allocator, kernels)
    start = clock(device)
    batched = invert(view, config, seed=args.seed, chunk_size=args.victims, progress=False)
    batched_time = clock(device) - start

    start = clock(device)
    looped = loop_attack(view, labels[:, None], starts, args.iterations, config.lr, config.tv_weight)
    loop_time = clock(device) - start

    originals = data.denormalize(images.cpu())
    loop_ssim = ssim(originals, data.denormalize(looped.flatten(0, 1).cpu())).mean()
    batched_ssim = ssim(originals, batched.denormalized().cpu()).mean()
    per = args.victims * args.iterations
    print(f"per-image loop: {loop_time:8.2f} s  {1e3 * loop_time / per:.3f} ms per victim-iteration  "
          f"mean SSIM {loop_ssim:.3f}")
    print(f"batched engine: {batched_time:8.2f} s  {1e3 * batched_time / per:.3f} ms per victim-iteration  "
          f"mean SSIM {batched_ssim:.3f}")

    profile_iterations = max(2, min(10, args.iterations))
    with torch.profiler.profile() as profiler:
        invert(view, config.replace(max_iterations=profile_iterations), seed=args.seed, chunk_size=args.victims,
               progress=False)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # one iteration's arithmetic, as torch counts it
        invert(view, config.replace(max_iterations=1), seed=args.seed, chunk_size=args.victims, progress=False)
    achieved = counter.get_total_flops() * args.iterations / batched_time / 1e12
    ceiling = matmul_rate(device)
    print(f"batched engine: about {achieved:.3f} TFLOP/s, {100 * achieved / ceiling:.1f}% of this device's measured "
          f"fp32 4096² matrix-product rate ({ceiling:.2f} TFLOP/s)")
    where = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nwhere the batched engine spends its time ({profile_iterations} iterations, top operators by {where}):")
    print(profiler.key_averages().table(sort_by=where, row_limit=12))
    print(f"{args.victims * args.iterations / batched_time:.0f} victim-iterations per second batched")
    print(f"speedup {loop_time / batched_time:.1f}x")


if __name__ == "__main__":
    main()
