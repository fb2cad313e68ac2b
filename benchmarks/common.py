"""Shared helpers for benchmark scripts: timing with warm-up and machine-readable results.

Every benchmark writes one JSON file with the environment it ran in (torch version, threads,
device name) and a list of result rows, so numbers from different runs can be compared honestly.
Compare variants as ratios measured in the same run: this machine is shared and noisy.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from astra_gym.utils.atomic import atomic_write_text

__all__ = [
    "time_call",
    "count_flops",
    "matmul_peak_tflops",
    "environment_info",
    "spearman",
    "write_results",
    "sampler_overrides",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 5) -> dict:
    """Times ``fn`` after ``warmup`` calls.

    Returns:
        Dict with ``median_ms``, ``min_ms`` and ``repeats`` (wall-clock, device-synchronised).
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "repeats": repeats}


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``fn`` (matmuls, convolutions, attention).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` while ``fn`` really runs (so the call
    also serves as a warm-up); a multiply-add counts 2.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 10) -> float:
    """The measured dense matmul rate (TFLOP/s) of ``size x size`` operands: the reference for
    "fraction of peak" (the datasheet's number is not reached by any real kernel)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    timing = time_call(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * size**3 / (timing["min_ms"] * 1e-3) / 1e12


def environment_info(device: torch.device) -> dict:
    """What the numbers were measured on."""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_results(path: str | Path, benchmark: str, config: dict, rows: list[dict], device: torch.device) -> Path:
    """Writes ``{"benchmark", "config", "environment", "results"}`` as JSON, atomically."""
    payload = {"benchmark": benchmark, "config": config, "environment": environment_info(device), "results": rows}
    return atomic_write_text(path, json.dumps(payload, indent=2))


def _ranks(values: list[float]) -> np.ndarray:
    """Ranks 0..n-1, tied values sharing their average rank."""
    x = np.asarray(values, dtype=float)
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    for value in np.unique(x):
        ranks[x == value] = ranks[x == value].mean()
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two equally long lists (average ranks for ties; NaN if one is constant or has NaN)."""
    if np.isnan(np.asarray(a, float)).any() or np.isnan(np.asarray(b, float)).any():
        return float("nan")
    ranks = [_ranks(a), _ranks(b)]
    if ranks[0].std() == 0 or ranks[1].std() == 0:
        return float("nan")
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def sampler_overrides(denoise_steps: int | None, guidance: float | None) -> dict:
    """Env kwargs that override a bundle's sampler (``--denoise-steps``, ``--guidance``); None keeps the bundle's."""
    out: dict = {}
    if denoise_steps is not None:
        out["num_denoise_steps"] = denoise_steps
    if guidance is not None:
        out["guidance_scale"] = guidance
    return out
