"""Inputs of the transformer besides the noisy chunk: packed history tokens and actions.

These small frozen containers are the contract between :mod:`framepack` (which builds them from a
history of latents and an action sequence), :mod:`action_encoders` (which turns raw action rows into
features) and :mod:`transformer` (which embeds, positions and attends over them). All index
bookkeeping (which latent goes to which token, which RoPE position and which action row it gets)
is decided by the packer; the transformer only follows these tensors.

Token order inside the transformer is ``[history groups in the given order] + [target]``; the
release order is 4x, 2x, 1x, target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TokenGroup", "FramePackInputs", "ActionInput", "key_padding_mask"]


@dataclass(frozen=True)
class TokenGroup:
    """History latents embedded by one ``clean_x_embedder`` Conv3d.

    Attributes:
        scale: Compression factor s in {1, 2, 4}; the embedder kernel/stride is
            (s, s*ph, s*pw), so ``latents`` must already be padded to multiples of it.
        latents: [B, C, T, H, W] history latents (T = scale * temporal tokens).
        frame_pos: [B, T // scale] float temporal RoPE position of each temporal token, in
            latent-frame units of the clip (targets continue the same axis).
        action_row: [B, T // scale] long row of :attr:`ActionInput.values` whose features are added
            to every spatial token of that temporal token; -1 means a zero feature (not the
            processor of a zero vector).
        valid: [B, T // scale] bool; False keys are masked out of attention (padding). A row whose
            tokens are all invalid is equivalent to the group being absent for that row.
        spatial_scale: Spatial RoPE position of token (r, c) is ``(r * k + (k - 1) / 2, c * k + (k - 1) / 2)``
            with k = spatial_scale. The release uses 1 (each group's own small grid); the
            geometrically true position of a token compressed s times is k = s.
    """

    scale: int
    latents: Tensor
    frame_pos: Tensor
    action_row: Tensor
    valid: Tensor
    spatial_scale: float = 1.0

    def __post_init__(self) -> None:
        where = f"TokenGroup (scale {self.scale})"
        if self.latents.ndim != 5:
            raise ValueError(f"{where}: latents must be [B, C, T, H, W], got {tuple(self.latents.shape)}")
        batch, _, length = self.latents.shape[:3]
        if self.scale < 1 or length % self.scale:
            raise ValueError(
                f"{where}: {length} latents are not a multiple of the scale; pad the group (FramePack "
                "replicate-pads) before packing"
            )
        expected = (batch, length // self.scale)
        for name in ("frame_pos", "action_row", "valid"):
            shape = tuple(getattr(self, name).shape)
            if shape != expected:
                raise ValueError(f"{where}: {name} must be [B, T // scale]={list(expected)}, got {list(shape)}")

    @property
    def num_temporal_tokens(self) -> int:
        """Temporal tokens T // scale."""
        return self.frame_pos.shape[1]


@dataclass(frozen=True)
class FramePackInputs:
    """Everything the transformer needs to know about the history of one chunk.

    Attributes:
        history: Token groups in token order (release: 4x, 2x, 1x). May be empty (no history).
        target_frame_pos: [B, F] float temporal RoPE positions of the F target latents.
        target_action_row: [B, F] long action rows of the targets (-1 = zero feature).
    """

    history: tuple[TokenGroup, ...]
    target_frame_pos: Tensor
    target_action_row: Tensor

    def __post_init__(self) -> None:
        pos, rows = tuple(self.target_frame_pos.shape), tuple(self.target_action_row.shape)
        if len(pos) != 2 or pos != rows:
            raise ValueError(f"target_frame_pos and target_action_row must both be [B, F], got {pos} and {rows}")
        for index, group in enumerate(self.history):
            if group.latents.shape[0] != pos[0]:
                raise ValueError(f"history group {index} has batch {group.latents.shape[0]}, the targets {pos[0]}")

    @staticmethod
    def no_history(batch: int, frames: int, device: torch.device | str | None = None) -> FramePackInputs:
        """Targets at positions 0..F-1 using action rows 0..F-1, no history tokens."""
        pos = torch.arange(frames, device=device).expand(batch, frames)
        return FramePackInputs(history=(), target_frame_pos=pos.float(), target_action_row=pos.long())


@dataclass(frozen=True)
class ActionInput:
    """Raw per-latent-frame action vectors and their modality.

    Attributes:
        values: [B, A, D] float action rows (each row already carries its past/current flag in
            its last used column). Rows are indexed by ``action_row`` of the packed inputs. For a
            modality narrower than D, only its first ``spec.dim`` columns are read.
        modality: [B] long index into ``config.modalities`` for each batch row.
    """

    values: Tensor
    modality: Tensor

    def __post_init__(self) -> None:
        if self.values.ndim != 3:
            raise ValueError(f"ActionInput.values must be [B, A, D], got shape {tuple(self.values.shape)}")
        if self.modality.shape != (self.values.shape[0],):
            raise ValueError(
                f"ActionInput.modality must be [B]={self.values.shape[0]} modality indices, "
                f"got shape {tuple(self.modality.shape)}"
            )


def key_padding_mask(valid: Tensor) -> Tensor | None:
    """[B, S] bool valid keys -> [B, 1, 1, S] SDPA mask, or None when every key is valid (fast path)."""
    if bool(valid.all()):
        return None
    return valid[:, None, None, :]
