"""Optimizer and learning-rate schedule shared by the trainers (AdamW, warm-up + cosine)."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

__all__ = ["make_adamw", "lr_factor", "cosine_schedule", "optimizer_step"]


def make_adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)):
    """AdamW over ``model``'s trainable parameters; weight decay on matrices and kernels only.

    Biases, norm weights and other 1-D parameters are not decayed (nanoGPT's rule). The fused
    implementation is used on CPU and CUDA (several times faster than the per-tensor loop on CPU);
    build the optimizer after moving the model to its device.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; check the trainable-parameter selection")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up to 1, then cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` (stepped once per optimizer step)."""
    if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(
            "need warmup_steps >= 0, total_steps >= 1, min_ratio in [0, 1]; "
            f"got {warmup_steps}, {total_steps}, {min_ratio}"
        )
    factor = partial(lr_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, max_grad_norm: float
) -> tuple[float, torch.Tensor]:
    """Clips the gradients (``max_grad_norm`` 0 = off), steps optimizer and schedule, clears the gradients.

    Returns the learning rate the step used and the gradient norm before clipping.
    """
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr, norm
