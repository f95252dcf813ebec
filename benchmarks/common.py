"""What every benchmark shares: the ``--device`` option, timing that waits for the GPU, and the line
that says where a number was measured (a GPU figure is meaningless without the GPU's name)."""
from __future__ import annotations

import argparse
import time

import torch


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (cuda when present)")


def resolve_device(name: str) -> torch.device:
    from fedrepro.runtime import get_device

    return get_device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the kernels it launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    synchronize(device)
    return time.perf_counter()


def describe(device: torch.device) -> str:
    """``torch 2.11.0, NVIDIA H200 (CUDA 13.0)`` or ``torch 2.14.1, CPU, 2 threads``."""
    if device.type == "cuda":
        return f"torch {torch.__version__}, {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads"


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 4096, repeats: int = 5) -> float:
    """Measured dense matrix-product rate in TFLOP/s: the ceiling a benchmark's achieved rate is read against."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    start = clock(device)
    for _ in range(repeats):
        a @ b
    seconds = (clock(device) - start) / repeats
    return 2 * size ** 3 / seconds / 1e12
