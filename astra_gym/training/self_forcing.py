"""Self-forcing: train on histories whose newest latent the world model made itself.

Trained, the world model reads recorded history; free-running inside an env, it reads its own
samples. Their small errors compound: on Manipulation the goal marker and the block fade within
about 10 imagined steps while a teacher-forced step keeps them (``benchmarks/RESULTS.md``,
sessions 24 and 28). Scheduled sampling (Bengio et al., 2015) and Self Forcing (Huang et al., 2025)
close that gap by feeding the model its own outputs during training.

Here, with probability ``p`` per row whose history holds at least two latents, the newest history
latent is replaced by the model's own sample of it: the sampler (no gradient) denoises it from the
rest of that row's history under its recorded action (``WorldModelBatch.prefix``). The target stays
the recorded next latent, so the loss asks the model to correct its own one-step error from the
older history, which keeps the first latent of the row's history at full resolution. Noise-as-mask
and action dropout still apply afterwards (:func:`~astra_gym.training.steps.prepare_inputs`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from astra_gym.training.data import WorldModelBatch, map_tensors
from astra_gym.world_model.conditioning import FramePackInputs
from astra_gym.world_model.framepack import newest_full_resolution_token
from astra_gym.world_model.sampling import SamplerConfig, sample_chunk

__all__ = ["replace_newest_history_latent", "self_force"]


def replace_newest_history_latent(frame_pack: FramePackInputs, latents: Tensor, rows: Tensor) -> FramePackInputs:
    """The pack with each chosen row's newest full-resolution history latent replaced.

    The newest latent is the valid 1x-group token with the largest temporal position
    (:func:`~astra_gym.world_model.framepack.newest_full_resolution_token`).

    Args:
        frame_pack: Packed history of B rows.
        latents: [B, C, h, w] replacements (rows not chosen are ignored).
        rows: [B] bool rows to change.

    Returns:
        New packed inputs; other rows, groups, positions and actions are untouched.

    Raises:
        ValueError: A chosen row has no valid 1x history token.
    """
    group, token = newest_full_resolution_token(frame_pack)
    if bool((rows & (group < 0)).any()):
        raise ValueError("a self-forced row has no full-resolution history latent to replace")
    groups = list(frame_pack.history)
    h, w = latents.shape[-2:]
    for g, tokens in enumerate(groups):
        picked = torch.nonzero(rows & (group == g)).flatten()
        if len(picked) == 0:
            continue
        new = tokens.latents.clone()
        new[picked, :, token[picked], :h, :w] = latents[picked].to(new.dtype)
        groups[g] = dataclasses.replace(tokens, latents=new)
    return dataclasses.replace(frame_pack, history=tuple(groups))


def self_force(
    model: nn.Module,
    batch: WorldModelBatch,
    p: float,
    sampler: SamplerConfig,
    draws: tuple[Tensor, Tensor],
) -> tuple[WorldModelBatch, Tensor]:
    """Replaces the newest history latent of the drawn rows by the model's own sample of it.

    Args:
        model: The world model (called without gradient; its mode is left as it is).
        batch: Clean packed batch with ``prefix`` (``JointLatentData(prefix=True)``) on the model's device.
        p: Probability that an eligible row (history >= 2 latents) is self-forced.
        sampler: Euler steps, shift and guidance of the model's own samples (the env's).
        draws: (uniform [B] in [0, 1), noise [B, C, 1, h, w]) from the step's generator.

    Returns:
        (batch with the new history, [B] bool rows that were self-forced).

    Raises:
        ValueError: The batch has no prefix.
    """
    if batch.prefix is None or batch.prefix_actions is None:
        raise ValueError("self-forcing needs the batch's prefix packs; build JointLatentData with prefix=True")
    uniform, noise = draws
    rows = (uniform.to(batch.history_length.device) < p) & (batch.history_length >= 2)
    if not bool(rows.any()):
        return batch, rows
    picked = torch.nonzero(rows).flatten()
    subset = map_tensors((batch.prefix, batch.prefix_actions), lambda t: t[picked])
    with torch.no_grad():
        own = sample_chunk(
            model,
            noise.to(batch.target.device)[picked],
            context=None,
            frame_pack=subset[0],
            actions=subset[1],
            config=sampler,
        )  # [R, C, 1, h, w]
    latents = torch.zeros_like(batch.target[:, :, 0]).index_copy(0, picked, own[:, :, 0].to(batch.target.dtype))
    frame_pack = replace_newest_history_latent(batch.frame_pack, latents, rows)
    return dataclasses.replace(batch, frame_pack=frame_pack), rows
