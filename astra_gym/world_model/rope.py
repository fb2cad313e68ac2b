"""3-D rotary position embedding (RoPE) from explicit per-token positions.

Wan2.1 splits each attention head's ``D`` real channels into three contiguous parts rotated by
the temporal, height and width position of the token (44/42/42 for ``D = 128``). Consecutive
channel pairs ``(2c, 2c + 1)`` are treated as one complex number; the complex channels of axis
``a`` (real size ``D_a``) turn at frequencies ``w_k = theta^(-2k / D_a)``, ``k = 0 .. D_a/2 - 1``.

Wan looks positions up in an integer table; Astra's FramePack packing needs arbitrary
per-token positions (history groups with their own frame indices, compressed grids), so here
the angles are computed directly from float positions. For integer positions the result equals
Wan's ``precompute_freqs_cis_3d`` and diffusers' ``WanRotaryPosEmbed`` table: frequencies and
angles in float64, cos/sin rounded once to float32, rotation applied in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RopeTable", "axis_frequencies", "grid_positions", "rope_table", "apply_rope"]


@dataclass(frozen=True)
class RopeTable:
    """Per-token rotation of every complex channel, shared by all heads and all blocks.

    Attributes:
        cos: [B, S, 1, D/2] float32 cosine of each token's angle per complex channel.
        sin: [B, S, 1, D/2] float32 sine of the same angles.
    """

    cos: Tensor
    sin: Tensor


def _angle_dtype(device: torch.device) -> torch.dtype:
    """float64 for the angle computation, float32 where the backend has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def axis_frequencies(real_size: int, theta: float, device: torch.device | None = None) -> Tensor:
    """Rotation frequencies of one axis, exactly as Wan's ``rope_params``.

    Args:
        real_size: Real channels ``D_a`` of this axis (even).
        theta: RoPE base.
        device: Device of the result.

    Returns:
        [D_a / 2] float64 frequencies ``1 / theta^(2k / D_a)``.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    exponents = torch.arange(0, real_size, 2, dtype=_angle_dtype(device), device=device) / real_size
    return 1.0 / (theta**exponents)


def grid_positions(frame_pos: Tensor, height: int, width: int, spatial_scale: float = 1.0) -> Tensor:
    """Positions of every token of a ``T x height x width`` token grid, row-major (t, h, w).

    Args:
        frame_pos: [B, T] temporal position of each temporal token.
        height: Token rows of the grid.
        width: Token columns of the grid.
        spatial_scale: k; row r sits at ``r * k + (k - 1) / 2`` (columns likewise), so a
            token covering k x k finer tokens is placed at their centre. 1 = own grid.

    Returns:
        [B, T * height * width, 3] float32 (t, h, w) positions.
    """
    batch, frames = frame_pos.shape
    offset = (spatial_scale - 1.0) / 2.0
    rows = torch.arange(height, device=frame_pos.device, dtype=torch.float32) * spatial_scale + offset
    cols = torch.arange(width, device=frame_pos.device, dtype=torch.float32) * spatial_scale + offset
    grid = (batch, frames, height, width)
    pos_t = frame_pos.float()[:, :, None, None].expand(grid)  # [B, T, h, w]
    pos_h = rows[None, None, :, None].expand(grid)  # [B, T, h, w]
    pos_w = cols[None, None, None, :].expand(grid)  # [B, T, h, w]
    return torch.stack((pos_t, pos_h, pos_w), dim=-1).reshape(batch, frames * height * width, 3)


def rope_table(positions: Tensor, split: tuple[int, int, int], theta: float) -> RopeTable:
    """Builds the rotation table of a token sequence.

    Args:
        positions: [B, S, 3] float (t, h, w) position of each token.
        split: Real channels of each head rotated by (t, h, w); sums to the head width D
            (``AstraTransformerConfig.rope_split``).
        theta: RoPE base (``AstraTransformerConfig.rope_theta``).

    Returns:
        The :class:`RopeTable` with [B, S, 1, D/2] float32 cos and sin.
    """
    if positions.ndim != 3 or positions.shape[-1] != 3:
        raise ValueError(f"positions must be [B, S, 3] (t, h, w), got shape {tuple(positions.shape)}")
    if any(size % 2 for size in split):
        raise ValueError(f"RoPE split {split} must be even per axis (channels are rotated in pairs)")
    dtype = _angle_dtype(positions.device)
    angles = [
        positions[..., axis, None].to(dtype) * axis_frequencies(size, theta, positions.device)  # [B, S, D_a/2]
        for axis, size in enumerate(split)
    ]
    angle = torch.cat(angles, dim=-1).unsqueeze(2)  # [B, S, 1, D/2]
    return RopeTable(cos=angle.cos().float(), sin=angle.sin().float())


def apply_rope(x: Tensor, table: RopeTable) -> Tensor:
    """Rotates queries or keys by their tokens' angles (in float32, result in ``x.dtype``).

    Args:
        x: [B, S, H, D] per-head queries or keys.
        table: Rotation table with [B, S, 1, D/2] cos/sin.

    Returns:
        [B, S, H, D] rotated tensor, same dtype as ``x``.
    """
    if x.shape[-1] != 2 * table.cos.shape[-1] or x.shape[1] != table.cos.shape[1]:
        raise ValueError(
            f"apply_rope: x {tuple(x.shape)} does not fit the table {tuple(table.cos.shape)}; "
            "expected x = [B, S, H, 2 * table.cos.shape[-1]] with the same S"
        )
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, S, H, D/2, 2]
    real, imag = pairs.unbind(-1)  # each [B, S, H, D/2]
    rotated = torch.stack(
        (real * table.cos - imag * table.sin, real * table.sin + imag * table.cos), dim=-1
    )  # [B, S, H, D/2, 2]
    return rotated.flatten(-2).to(x.dtype)  # [B, S, H, D]
