"""Rectified-flow training math as pure functions (astra-release.md §7.3).

A clean latent x0 and noise eps give the noisy sample ``x_t = (1 - sigma) * x0 + sigma * eps`` at
timestep ``t = 1000 * sigma``; the model regresses the velocity ``eps - x0``. The release draws the
timestep uniformly over the *index* of a 1000-point shift-5 grid (so high noise is favoured) and
weights the per-sample MSE with a Gaussian bump in t centred on 500 ("BSMNTW" weighting).
Unlike the release, timesteps stay float32 here (it casts them to bf16).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

from astra_gym.world_model.sampling import broadcast_level, flow_sigmas

__all__ = [
    "training_sigmas",
    "sample_timesteps",
    "add_noise",
    "velocity_target",
    "timestep_weight",
    "flow_matching_loss",
]


def training_sigmas(
    num_train_timesteps: int = 1000, shift: float = 5.0, device: torch.device | str | None = None
) -> Tensor:
    """The training grid: ``sigma_j = shift * s_j / (1 + (shift - 1) * s_j)``, ``s_j = linspace(1, 0, N + 1)[:N]``.

    Args:
        num_train_timesteps: Grid size N (release: 1000).
        shift: Timestep shift (release: 5.0).
        device: Device of the result.

    Returns:
        [N] float32 sigmas, decreasing from 1.0 (release: last = 0.00498, timestep 4.98).
    """
    return flow_sigmas(num_train_timesteps, shift, device=device)[:-1]


def sample_timesteps(
    batch: int,
    generator: torch.Generator,
    num_train_timesteps: int = 1000,
    shift: float = 5.0,
    mode: Literal["uniform", "logit_normal"] = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Draws one noise level per sample.

    ``"uniform"`` (the release) draws an index j ~ U{0..N-1} of :func:`training_sigmas`.
    ``"logit_normal"`` draws ``s = sigmoid(logit_mean + logit_std * z)`` with z ~ N(0, 1) and applies
    the same shift map ``shift * s / (1 + (shift - 1) * s)`` (shift 1 gives SD3's plain logit-normal).

    Args:
        batch: Number of samples B.
        generator: Source of randomness; draws happen on its device.
        num_train_timesteps: Grid size N of the uniform mode.
        shift: Timestep shift.
        mode: ``"uniform"`` or ``"logit_normal"``.
        logit_mean: Mean of the logit-normal mode.
        logit_std: Standard deviation of the logit-normal mode.
        device: Device of the results (default: the generator's device).

    Returns:
        (sigma, timestep): both [B] float32; sigma in (0, 1], timestep = 1000 * sigma.
    """
    device = device or generator.device
    if mode == "uniform":
        index = torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=generator.device)
        sigma = training_sigmas(num_train_timesteps, shift, device=generator.device)[index]
    elif mode == "logit_normal":
        z = torch.randn((batch,), generator=generator, device=generator.device, dtype=torch.float32)
        s = torch.sigmoid(logit_mean + logit_std * z)
        sigma = shift * s / (1.0 + (shift - 1.0) * s)
    else:
        raise ValueError(f"unknown timestep sampling mode {mode!r}; use 'uniform' or 'logit_normal'")
    sigma = sigma.to(device=device, dtype=torch.float32)
    return sigma, 1000.0 * sigma


def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
    """Noisy sample on the straight path: ``(1 - sigma) * x0 + sigma * noise``.

    Args:
        x0: [B, ...] clean latents.
        noise: Standard normal noise, same shape.
        sigma: Noise level in [0, 1]: a float, a 0-d tensor or [B].

    Returns:
        [B, ...] float32 noisy latents (x0 at sigma 0, noise at sigma 1).
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match x0 shape {tuple(x0.shape)}")
    s = broadcast_level(sigma, x0)
    return (1.0 - s) * x0.float() + s * noise.float()


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Flow-matching regression target d x_sigma / d sigma = ``noise - x0`` (float32, same shape)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match x0 shape {tuple(x0.shape)}")
    return noise.float() - x0.float()


def _bump(timestep: Tensor, num_train_timesteps: int) -> Tensor:
    """Unnormalised Gaussian bump ``exp(-2 ((t - N/2) / N)^2)``."""
    n = float(num_train_timesteps)
    return torch.exp(-2.0 * ((timestep - n / 2) / n) ** 2)


@functools.lru_cache(maxsize=8)
def _bump_normaliser(num_train_timesteps: int, shift: float) -> tuple[float, float]:
    """(minimum, mean-1 scale) of the bump over the training grid."""
    grid = 1000.0 * training_sigmas(num_train_timesteps, shift).double()
    y = _bump(grid, num_train_timesteps)
    y_min = float(y.min())
    return y_min, float(num_train_timesteps / (y - y_min).sum())


def timestep_weight(timestep: Tensor, num_train_timesteps: int = 1000, shift: float = 5.0) -> Tensor:
    """The release's loss weight: Gaussian bump in t, min-subtracted, mean 1 over the training grid.

    ``w(t) = (y(t) - min_grid y) * N / sum_grid (y - min_grid y)`` with
    ``y(t) = exp(-2 ((t - 500) / 1000)^2)``. On grid points this equals the release's lookup table:
    0 at t = 1000, 0.40 at 937.5, 1.03 at 833, 1.91 at 625, 2.08 near 500, 0.03 near 5.

    Args:
        timestep: [B] timesteps in [0, 1000] (any float dtype).
        num_train_timesteps: Grid size N.
        shift: Shift of the grid the weight is normalised over.

    Returns:
        [B] float32 weights >= 0.
    """
    y_min, scale = _bump_normaliser(num_train_timesteps, float(shift))
    y = _bump(timestep.float(), num_train_timesteps)
    return ((y - y_min) * scale).clamp_min(0.0)


def flow_matching_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted per-sample MSE: ``mean_b(weight_b * mean_{masked elements of b} (pred - target)^2)``.

    With B = 1, no mask and the release weight this is the release's loss.

    Args:
        pred: [B, ...] predicted velocity (any float dtype; the math is float32).
        target: [B, ...] target velocity, same shape.
        weight: [B] per-sample weights (e.g. :func:`timestep_weight`); None means 1.
        mask: Optional weights >= 0 (bool or float) broadcastable to ``pred``, e.g. [B, 1, F, 1, 1]
            marking the latent frames that count; a row whose mask is all zero contributes 0.

    Returns:
        (loss, logs): 0-d float32 loss that carries gradients, and detached 0-d float32 tensors
        ``loss``, ``mse`` (unweighted mean of the per-sample MSEs) and ``weight`` (mean weight).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
    batch = pred.shape[0]
    sq = (pred.float() - target.float()) ** 2  # [B, ...]
    if mask is None:
        mse = sq.reshape(batch, -1).mean(dim=1)  # [B]
    else:
        m = torch.broadcast_to(mask.to(sq.dtype), sq.shape).reshape(batch, -1)  # [B, N]
        mse = (sq.reshape(batch, -1) * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-12)  # [B]
    w = torch.ones_like(mse) if weight is None else weight.to(mse)
    if w.shape != (batch,):
        raise ValueError(f"weight must be [B]={batch} per-sample weights, got shape {tuple(w.shape)}")
    loss = (w * mse).mean()
    logs = {"loss": loss.detach(), "mse": mse.mean().detach(), "weight": w.mean().detach()}
    return loss, logs
