"""The authors' release conventions, kept only to run and fine-tune the released checkpoint faithfully.

Our models use the ``"exact"`` conventions of :mod:`astra_gym.world_model.framepack` and
:mod:`astra_gym.data.action_codecs`; nothing in the data, training or rollout paths uses these.
They live here, next to the release converter (:mod:`astra_gym.world_model.release_checkpoint`):

* :func:`release_groups`: the token groups of ``FramePackLayout(mode="release")``
  (astra-release.md §5.4), which :func:`~astra_gym.world_model.framepack.pack` calls for that mode:

  * The released DiT's token quirks: the 1x "last" token reads the *first target's* action row
    (off-by-one, bug 1); 2x/4x tokens take τ and action rows from the *first* valid indices of
    their group, not from the slots they cover (bug 2); once a group has one valid latent all its
    tokens are valid (padding tokens included); a group with none is invalid; ``spatial_scale`` = 1.
    For histories of up to 19 latents the first latent also fills a compressed slot, as in training.
  * The inference-side bugs are fixed: the first latent stays in the start slot beyond 20 latents
    (like the release-time layout, §5.6, not HEAD's bug 16), and every token reads the action row of
    the latent it actually uses (no T-20 shift, §5.5).
  * Action convention (§3.2): **row k is the motion from latent k to latent k+1**; a target's row
    is the motion leaving it. The caller supplies rows in that convention.

* :func:`release_latent_step_ranges` / :func:`release_align_to_latents`: the release's action-row
  alignment (§3.2): latent k's row is the motion *leaving* latent k (pixel frames fk -> fk+f), the
  aggregate of step rows ``fk .. fk+f-1``; the last latent gets the zero row (the SpatialVID path
  that trained the released checkpoint used all-zero; its openx path used identity).
"""

from __future__ import annotations

import numpy as np
import torch

from astra_gym.data.action_codecs import Aggregation, aggregate_ranges, latent_step_ranges
from astra_gym.world_model.conditioning import TokenGroup
from astra_gym.world_model.framepack import FramePackLayout, _full_resolution, _pad_spatial, _Slots

__all__ = ["release_align_to_latents", "release_groups", "release_latent_step_ranges"]


def release_latent_step_ranges(num_steps: int, temporal_factor: int) -> list[tuple[int, int] | None]:
    """The release's step ranges: latent k <- steps [fk, fk+f) (the motion leaving it); the last is None."""
    return latent_step_ranges(num_steps, temporal_factor)[1:] + [None]


def release_align_to_latents(rows: np.ndarray, temporal_factor: int, aggregation: Aggregation = "mean") -> np.ndarray:
    """Per-step rows [T, d] -> [1 + T // f, d] float32 rows in the release's convention (last row zero)."""
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"rows must be [T, d], got shape {rows.shape}")
    return aggregate_ranges(rows, release_latent_step_ranges(len(rows), temporal_factor), aggregation)


def release_groups(slots: _Slots, layout: FramePackLayout) -> list[TokenGroup]:
    """Groups of ``mode="release"``: the released DiT's 4x, 2x and [start, last] 1x tokens."""
    groups = []
    if layout.num_4x:
        groups.append(_release_compressed(slots, 4, slice(1, 1 + layout.num_4x), layout))
    if layout.num_2x:
        first_2x = 1 + layout.num_4x
        groups.append(_release_compressed(slots, 2, slice(first_2x, first_2x + layout.num_2x), layout))
    last = layout.num_slots - 1
    # Bug 1: the last 1x token reads the first target's row (row num_slots), not its own.
    groups.append(_full_resolution(slots, [0, last], [0, layout.num_slots], layout, spatial_scale=1.0))
    return groups


def _release_compressed(slots: _Slots, scale: int, span: slice, layout: FramePackLayout) -> TokenGroup:
    """Bug 2: token g takes τ from the g-th valid latent of the group (the last one if fewer) and its
    action row from the g-th valid latent (-1 if fewer); all tokens valid once one latent is."""
    valid = slots.valid[:, span]  # [B, n]
    tokens = valid.shape[1] // scale
    rank = valid.cumsum(dim=-1) - 1  # [B, n] rank of each valid slot
    count = valid.sum(dim=-1, keepdim=True)  # [B, 1]
    wanted = torch.arange(tokens, device=valid.device)[None]  # [1, tokens]
    nth = torch.minimum(wanted, count - 1).clamp(min=0)  # [B, tokens]
    hit = valid[:, None, :] & (rank[:, None, :] == nth[..., None])  # [B, tokens, n]
    offset = hit.long().argmax(dim=-1)  # [B, tokens] slot offset of the nth valid latent
    group_valid = (count > 0).expand(-1, tokens)
    own_row = group_valid & (wanted < count)
    return TokenGroup(
        scale=scale,
        latents=_pad_spatial(slots.latents[:, :, span], scale, layout.patch_hw),
        frame_pos=torch.where(group_valid, slots.pos[:, span].gather(1, offset), 0.0),
        action_row=torch.where(own_row, span.start + offset, -1),
        valid=group_valid,
        spatial_scale=1.0,
    )
