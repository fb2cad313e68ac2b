"""The one conversion between uint8 RGB frames and the models' float pixels in [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["uint8_to_pixels", "pixels_to_uint8"]


def uint8_to_pixels(frames: np.ndarray | Tensor, channel_dim: int = 1) -> Tensor:
    """uint8 [..., H, W, 3] -> float32 in [-1, 1], the RGB axis moved to ``channel_dim``, contiguous.

    ``channel_dim=1``: [N, H, W, 3] -> [N, 3, H, W] and [B, T, H, W, 3] -> [B, 3, T, H, W] (the VAE's
    layout); ``channel_dim=-3``: [B, T, H, W, 3] -> [B, T, 3, H, W]; ``channel_dim=0``: [T, H, W, 3]
    -> [3, T, H, W]. A numpy array stays on the CPU; a tensor keeps its device.

    Contiguous on purpose: a channels-last view would send convolutions down another kernel whose
    per-sample result depends on the batch size.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    return (frames.movedim(-1, channel_dim).float() / 127.5 - 1.0).contiguous()


def pixels_to_uint8(pixels: Tensor, channel_dim: int = 1) -> Tensor:
    """The inverse of :func:`uint8_to_pixels`: float in [-1, 1] -> uint8 with RGB last (rounded, clamped).

    E.g. [B, 3, T, H, W] -> [B, T, H, W, 3] with ``channel_dim=1``.
    """
    scaled = ((pixels.float() + 1.0) * 127.5).round().clamp(0.0, 255.0)
    return scaled.to(torch.uint8).movedim(channel_dim, -1).contiguous()
