"""Policy-search speed: fedrepro's batched S_pri/S_acc against the reference's loops, in one run.

The setting is paper 05's search on the 8-layer ConvNet (width 64, 2.9 M parameters) at 32×32
CIFAR-10: per policy, S_pri over ``--images`` validation images (one per class by default) × K = 21
path points, and S_acc over 10 mini-batches of one image per class. The looped version is the
reference implementation's structure (ATSPrivacy ``search_transform_attack.py``): one
forward/backward pass per image and path point, one S_acc pass per mini-batch. The batched version
evaluates all points of all images as vmapped per-sample gradients and all S_acc mini-batches as one
pass. Both score the same policies on the same images and model, and must agree.

The model is randomly initialised (the semi-trained M^s only changes the weights, not the cost). A
warm-up policy (not timed) runs first for each version.

Run on an idle machine (with 2 threads on 2 cores any other load slows torch many times):

    python benchmarks/policy_search_speed.py [--policies 3] [--images 10]

The paper reports ~1 minute per policy on one V100 with 100 S_pri images (10 search jobs in
parallel, 1,500 policies in 2.5 h: 10 policies per minute); the report compares seconds per policy
with that, also scaled to 100 images. The last line is the ratio of policies per minute,
batched / looped.

Measured on 2 idle cores (2 threads): width 64 with 10 images, batched 19.6 s and looped 14.8 s per
policy (0.8×; 189 s per policy scaled to 100 images, about 3× slower than the paper's V100); width 8
with 30 images, 2.7 s each (1.0×; 9 s scaled to 100 images). A rerun idle at width 64: batched 19.6 s,
looped 16.4 s (0.84×); with one thread (OMP_NUM_THREADS=1) 35.8 and 27.5 s (0.77×), so the batched
path gains more from the second thread (1.83× against 1.68×). An earlier run at load 6–9 measured 3.5×,
because contention slows the loop's many small passes more. On this CPU the vmapped per-sample
gradients do not beat the loop; we have no GPU here to measure them there.

The paper's minute is out of reach on these 2 cores whatever the implementation. S_pri on 100 images
× 21 points is 2,100 per-sample gradients of 11.1 GFLOP each (forward + backward of the width-64
ConvNet, by torch's FLOP counter): 23.4 TFLOP per policy. A 4096² matrix product runs at 185 GFLOP/s
in fp32 and 381 GFLOP/s in bfloat16 here, so even at matrix-product speed a policy needs 126 s in fp32
(the loop, at 157 s, runs at 80% of that speed) and 61 s in bfloat16.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from fedrepro.data import load_dataset
from fedrepro.defenses.transforms import random_policies
from fedrepro.models import build_model
from fedrepro.search import accuracy_score, pick_images, privacy_score

PAPER_SECONDS_PER_POLICY = 60.0
PAPER_IMAGES = 100


def score(model_pri, model_acc, policy: str, pri, acc, data, batched: bool) -> tuple[float, float, float, float]:
    """(S_pri, S_acc, seconds S_pri, seconds S_acc) of one policy."""
    t = time.perf_counter()
    s_pri = privacy_score(model_pri, *pri, policy, mean=data.mean, std=data.std, batched=batched).value
    t_pri = time.perf_counter() - t
    t = time.perf_counter()
    s_acc = accuracy_score(model_acc, *acc, policy, mean=data.mean, std=data.std, batched=batched).value
    return s_pri, s_acc, t_pri, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=3, help="timed policies per version")
    parser.add_argument("--images", type=int, default=10, help="S_pri images per policy (one per class first)")
    parser.add_argument("--width", type=int, default=64, help="ConvNet width (64 is the paper's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = load_dataset("cifar10", "test")
    per_class = -(-args.images // data.num_classes)
    images, labels = pick_images(data, per_class=per_class, seed=args.seed)
    order = torch.argsort(torch.arange(len(labels)) % per_class, stable=True)[: args.images]  # one per class first
    pri = (images[order], labels[order])
    acc = (data.images[:2000], data.labels[:2000])
    torch.manual_seed(args.seed)
    model_pri = build_model("convnet", width=args.width).eval()
    model_acc = build_model("convnet", width=args.width).eval()
    params = sum(p.numel() for p in model_pri.parameters())
    policies = random_policies(args.policies + 1, torch.Generator().manual_seed(args.seed))
    warmup, timed = policies[0], policies[1:]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f}; ConvNet width "
          f"{args.width} ({params:,} parameters), 32×32 CIFAR-10; S_pri: {args.images} images × 21 points, "
          f"S_acc: 10 runs × {data.num_classes} images; policies {', '.join(timed)} (warm-up {warmup})")

    results = {}
    for name, batched in (("batched", True), ("looped", False)):
        score(model_pri, model_acc, warmup, pri, acc, data, batched)
        rows = [score(model_pri, model_acc, p, pri, acc, data, batched) for p in timed]
        seconds = sum(r[2] + r[3] for r in rows) / len(rows)
        results[name] = (rows, seconds)
        print(f"{name:8s}: {seconds:7.2f} s per policy (S_pri {sum(r[2] for r in rows) / len(rows):6.2f} s, "
              f"S_acc {sum(r[3] for r in rows) / len(rows):5.2f} s) = {60 / seconds:6.2f} policies/minute", flush=True)

    (b_rows, b_seconds), (l_rows, l_seconds) = results["batched"], results["looped"]
    diff_pri = max(abs(b[0] - lo[0]) for b, lo in zip(b_rows, l_rows))
    diff_acc = max(abs(b[1] - lo[1]) / max(1.0, abs(lo[1])) for b, lo in zip(b_rows, l_rows))
    print(f"agreement: max |ΔS_pri| = {diff_pri:.2e}, max relative |ΔS_acc| = {diff_acc:.2e}")
    def scaled(rows: list) -> float:
        """Seconds per policy with the paper's 100 S_pri images (S_pri scales with the images, S_acc does not)."""
        return (sum(r[2] for r in rows) / args.images * PAPER_IMAGES + sum(r[3] for r in rows)) / len(rows)

    at_paper = scaled(b_rows)
    print(f"paper: ~{PAPER_SECONDS_PER_POLICY:.0f} s per policy on a V100 with {PAPER_IMAGES} images (10 jobs in "
          f"parallel: {10 * 60 / PAPER_SECONDS_PER_POLICY:.0f} policies/minute)")
    print(f"here : {b_seconds:.2f} s per policy with {args.images} images = "
          f"{PAPER_SECONDS_PER_POLICY / b_seconds:.2f}× the paper's per-policy speed; scaled to {PAPER_IMAGES} images "
          f"{at_paper:.1f} s per policy = {PAPER_SECONDS_PER_POLICY / at_paper:.2f}× (looped: "
          f"{scaled(l_rows):.1f} s)")
    print(f"speedup {l_seconds / b_seconds:.1f}x")


if __name__ == "__main__":
    main()
