"""One world-model training step as small pure functions (astra-release.md §7.3, the paper's recipe).

:func:`prepare_inputs` turns a packed clean batch into the model's training inputs, drawing from
one generator in a fixed order:

1. **Noise-as-mask** (:func:`~astra_gym.world_model.framepack.corrupt_history`): with probability
   ``history_noise_p`` per row, the history groups of ``history_noise_scales`` become
   ``(1 - s) x + s eps`` with ``s ~ U(history_noise_sigma)`` and independent noise; the model is not
   told ``s``. Release: p = 0.8, s in [0.626, 1.0], only the 1x group.
2. **Action dropout** (:func:`~astra_gym.world_model.action_encoders.drop_actions`): with
   probability ``action_dropout`` per row, the whole action sequence (flags included) becomes the
   null action, which teaches the unconditional branch of action-free guidance. Release: 0.05.
3. **Timestep** ``sigma`` (:func:`~astra_gym.world_model.flow_matching.sample_timesteps`) and target
   noise; ``x_sigma = (1 - sigma) x0 + sigma eps`` and the velocity target ``eps - x0``.

:func:`train_step` runs the model on those inputs and returns the loss: the (optionally
timestep-weighted) flow-matching MSE plus ``moe_balance_weight`` times the MoAE load-balancing loss.
With ``motion_weight`` > 0 the MSE is a weighted mean over latent cells (:func:`motion_mask`): cells
that change from the newest history latent to the target count more, so that a small moving object
(FetchPush's block and gripper) is not drowned by a static background. With ``detail_weight`` > 0
cells that differ from their dataset's mean latent count more too (:func:`detail_mask`): what stands
out of the usual scene (the goal marker, the block, the arm), moving or not.

Data parallelism: with ``share=(rank, world)`` every rank uses the step's one generator, makes the
draws for ``world`` copies of its rows (:func:`draw_share`) and keeps copy ``rank``: the ranks draw
distinct rows of one stream, and when their packed batches have the shapes of the global batch
(e.g. equal history lengths) exactly what one process with batch ``world * B`` draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn

from astra_gym.training.data import WorldModelBatch, map_tensors
from astra_gym.training.self_forcing import self_force
from astra_gym.utils.cli_args import arg
from astra_gym.world_model.action_encoders import drop_actions
from astra_gym.world_model.conditioning import ActionInput, FramePackInputs
from astra_gym.world_model.flow_matching import (
    add_noise,
    flow_matching_loss,
    sample_timesteps,
    timestep_weight,
    velocity_target,
)
from astra_gym.world_model.framepack import corrupt_history, newest_full_resolution_token
from astra_gym.world_model.sampling import SamplerConfig

__all__ = [
    "StepConfig",
    "ModelInputs",
    "prepare_inputs",
    "draw_share",
    "train_step",
    "per_dataset_mse",
    "newest_history_latent",
    "motion_mask",
    "detail_mask",
    "loss_mask",
]

T = TypeVar("T")


@dataclass(frozen=True)
class StepConfig:
    """The per-step training recipe (defaults = the release, astra-release.md §7.3); see the field help."""

    history_noise_p: float = arg(0.8, "noise-as-mask: probability that a row's history is noised (0 = off)")
    history_noise_sigma: tuple[float, float] = arg(
        (0.626, 1.0), "noise-as-mask: (low, high) of the uniform history noise level (release 0.626 1.0)"
    )
    history_noise_scales: tuple[int, ...] = arg(
        (1,), "noise-as-mask: FramePack group scales to noise, from 1 2 4 (release: only 1x)"
    )
    action_dropout: float = arg(0.05, "probability that a row's whole action sequence becomes the null action (AFG)")
    timestep_sampling: Literal["uniform", "logit_normal"] = arg(
        "uniform", "timestep distribution: uniform over the shifted 1000-point grid (release) or logit-normal"
    )
    timestep_shift: float = arg(5.0, "shift of the training timestep grid (release 5.0)")
    loss_weighting: Literal["release", "none"] = arg(
        "release", "per-sample loss weight: the release's Gaussian bump in t, or none"
    )
    moe_balance_weight: float = arg(0.01, "weight of the MoAE load-balancing loss (learned routing only)")
    motion_weight: float = arg(
        0.0,
        "extra loss weight of latent cells that change: a cell counts 1 + motion_weight * min(change / its row's "
        "mean change, motion_clip) (0 = off, every cell counts the same)",
    )
    motion_clip: float = arg(8.0, "cap of a cell's change relative to its row's mean change (motion_weight > 0)")
    self_forcing_p: float = arg(
        0.0,
        "self-forcing: probability that a row's newest history latent is replaced by the model's own sample of it "
        "from the rest of its history (no gradient; rows with >= 2 history latents; 0 = off)",
    )
    detail_weight: float = arg(
        0.0,
        "extra loss weight of latent cells that differ from their dataset's mean latent: a cell counts "
        "1 + detail_weight * min(difference / its row's mean difference, motion_clip) on top of the motion term "
        "(0 = off)",
    )

    def __post_init__(self) -> None:
        for name in ("history_noise_p", "action_dropout", "self_forcing_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        low, high = self.history_noise_sigma
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"history_noise_sigma={self.history_noise_sigma} must satisfy 0 <= low <= high <= 1")
        if any(s not in (1, 2, 4) for s in self.history_noise_scales):
            raise ValueError(f"history_noise_scales={self.history_noise_scales} must be drawn from (1, 2, 4)")
        if self.timestep_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"timestep_sampling={self.timestep_sampling!r} must be 'uniform' or 'logit_normal'")
        if self.loss_weighting not in ("release", "none"):
            raise ValueError(f"loss_weighting={self.loss_weighting!r} must be 'release' or 'none'")
        if self.moe_balance_weight < 0:
            raise ValueError(f"moe_balance_weight={self.moe_balance_weight} must be >= 0")
        if self.motion_weight < 0 or self.motion_clip <= 0:
            raise ValueError(f"motion_weight={self.motion_weight} must be >= 0 and motion_clip={self.motion_clip} > 0")
        if self.detail_weight < 0:
            raise ValueError(f"detail_weight={self.detail_weight} must be >= 0")


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """What the model sees in one training step, and what it must predict.

    Attributes:
        noisy: [B, C, F, h, w] float32 noisy target latents ``x_sigma``.
        timestep: [B] float32 ``1000 * sigma``.
        frame_pack: History after noise-as-mask.
        actions: Actions after dropout.
        target_velocity: [B, C, F, h, w] float32 ``eps - x0``.
        history_noised: [B] bool rows whose history was noised.
        actions_dropped: [B] bool rows whose actions were nulled.
    """

    noisy: Tensor
    timestep: Tensor
    frame_pack: FramePackInputs
    actions: ActionInput
    target_velocity: Tensor
    history_noised: Tensor
    actions_dropped: Tensor


def prepare_inputs(batch: WorldModelBatch, cfg: StepConfig, generator: torch.Generator) -> ModelInputs:
    """Noise-as-mask, action dropout, timestep and target noise (draw order: module docstring).

    Args:
        batch: Clean packed batch on the model's device.
        cfg: Step recipe.
        generator: CPU generator; every draw of the step comes from it.

    Returns:
        The model inputs and regression target.
    """
    target = batch.target
    frame_pack = batch.frame_pack
    if cfg.history_noise_p > 0 and frame_pack.history:
        frame_pack = corrupt_history(
            frame_pack, generator, cfg.history_noise_p, cfg.history_noise_sigma, cfg.history_noise_scales
        )
    actions, dropped = drop_actions(batch.actions, cfg.action_dropout, generator)
    sigma, timestep = sample_timesteps(
        batch.batch_size, generator, shift=cfg.timestep_shift, mode=cfg.timestep_sampling, device=target.device
    )
    noise = torch.randn(target.shape, generator=generator, dtype=torch.float32).to(target.device)
    return ModelInputs(
        noisy=add_noise(target, noise, sigma),
        timestep=timestep,
        frame_pack=frame_pack,
        actions=actions,
        target_velocity=velocity_target(target, noise),
        history_noised=_changed_rows(batch.frame_pack, frame_pack),
        actions_dropped=dropped,
    )


def draw_share(batch: WorldModelBatch, share: tuple[int, int], draw: Callable[[WorldModelBatch], T]) -> T:
    """``draw(batch)`` as a data-parallel rank's rows of the same draws made for the global batch.

    Args:
        batch: This rank's B rows (rows ``rank * B .. (rank + 1) * B - 1`` of the global batch).
        share: ``(rank, world)``; ``(0, 1)`` calls ``draw(batch)`` directly.
        draw: Makes the random inputs from a batch; its draws' shapes depend on the batch's shapes
            only, and every tensor it returns has the batch rows first.

    Returns:
        ``draw``'s output for this rank's rows: the draws consume the generator as for
        ``world * B`` rows, so they equal the single-process draws of the same rows whenever the
        packed shapes agree (the history groups' lengths follow each batch's longest history).
    """
    rank, world = share
    if world == 1:
        return draw(batch)
    tiled = map_tensors(batch, lambda t: t.repeat(world, *(1,) * (t.ndim - 1)))
    rows = slice(rank * batch.batch_size, (rank + 1) * batch.batch_size)
    return map_tensors(draw(tiled), lambda t: t[rows])


def _changed_rows(before: FramePackInputs, after: FramePackInputs) -> Tensor:
    """[B] bool rows whose history latents differ between two packs of the same batch."""
    changed = torch.zeros(before.target_frame_pos.shape[0], dtype=torch.bool, device=before.target_frame_pos.device)
    for old, new in zip(before.history, after.history, strict=True):
        changed |= (old.latents != new.latents).flatten(1).any(dim=1).to(changed.device)
    return changed


def newest_history_latent(frame_pack: FramePackInputs) -> tuple[Tensor, Tensor] | None:
    """The most recent uncompressed history latent of each row.

    Args:
        frame_pack: Packed clean history.

    Returns:
        (latents [B, C, h, w], present [B] bool) from the 1x groups' valid token with the largest
        temporal position, or None when no 1x group is packed. Rows without one are zeros, not present.
    """
    group, token = newest_full_resolution_token(frame_pack)
    rows = torch.arange(len(group), device=group.device)
    best = None
    for g, tokens in enumerate(frame_pack.history):
        if tokens.scale != 1:
            continue
        latents = tokens.latents[rows, :, token.clamp(max=tokens.latents.shape[2] - 1)]  # [B, C, h, w]
        mine = (group == g)[:, None, None, None]
        best = torch.where(mine, latents, torch.zeros_like(latents) if best is None else best)
    if best is None:
        return None
    return best, group >= 0


def motion_mask(batch: WorldModelBatch, weight: float, clip: float) -> Tensor:
    """Per-cell loss weights that favour what moves (``StepConfig.motion_weight``).

    Args:
        batch: Clean packed batch.
        weight: ``motion_weight``; 0 gives ones.
        clip: ``motion_clip``, the cap of a cell's change relative to its row's mean change.

    Returns:
        [B, 1, F, h, w] float32 weights ``1 + weight * min(d / mean_row(d), clip)``, with d the
        channel-mean absolute change from the newest 1x history latent to each target latent; 1 for
        rows without history and rows that do not change.
    """
    target = batch.target.float()
    ones = torch.ones_like(target[:, :1])
    newest = newest_history_latent(batch.frame_pack)
    if weight == 0 or newest is None:
        return ones
    latents, present = newest
    mask = _relative_weights(target, latents.float()[:, :, None], weight, clip)
    return torch.where(present[:, None, None, None, None], mask, ones)


def _relative_weights(target: Tensor, reference: Tensor, weight: float, clip: float) -> Tensor:
    """``1 + weight * min(d / mean_row(d), clip)`` [B, 1, F, h, w], d = channel-mean |target - reference|."""
    distance = (target - reference).abs().mean(dim=1, keepdim=True)  # [B, 1, F, h, w]
    scale = distance.flatten(1).mean(dim=1).clamp_min(1e-6)[:, None, None, None, None]
    return 1 + weight * (distance / scale).clamp(max=clip)


def detail_mask(batch: WorldModelBatch, reference: Sequence[Tensor], weight: float, clip: float) -> Tensor:
    """Per-cell loss weights that favour what stands out of the usual scene (``StepConfig.detail_weight``).

    Args:
        batch: Clean packed batch.
        reference: Per dataset index, its mean latent [C, h, w] (``JointLatentData.mean_latents``).
        weight: ``detail_weight``; 0 gives ones.
        clip: Cap of a cell's difference relative to its row's mean difference.

    Returns:
        [B, 1, F, h, w] float32 weights ``1 + weight * min(d / mean_row(d), clip)``, with d the
        channel-mean absolute difference of each target latent from its dataset's mean latent.
    """
    target = batch.target.float()
    if weight == 0:
        return torch.ones_like(target[:, :1])
    means = torch.stack([reference[i] for i in batch.dataset.tolist()]).to(target)  # [B, C, h, w]
    if means.shape[1:] != (target.shape[1],) + target.shape[3:]:
        raise ValueError(
            f"mean latents of shape {tuple(means.shape[1:])} do not match the targets' latents "
            f"{(target.shape[1],) + tuple(target.shape[3:])}; compute them from the same caches"
        )
    return _relative_weights(target, means[:, :, None], weight, clip)


def loss_mask(batch: WorldModelBatch, cfg: StepConfig, reference: Sequence[Tensor] | None) -> Tensor | None:
    """The flow loss's per-cell weights: motion and detail terms added (None when both are off).

    Args:
        batch: Clean packed batch.
        cfg: Step recipe (``motion_weight``, ``detail_weight``, ``motion_clip``).
        reference: Per dataset, its mean latent [C, h, w]; needed when ``detail_weight`` > 0.

    Returns:
        [B, 1, F, h, w] float32 ``motion + detail - 1``, or None.
    """
    if cfg.motion_weight == 0 and cfg.detail_weight == 0:
        return None
    mask = motion_mask(batch, cfg.motion_weight, cfg.motion_clip)
    if cfg.detail_weight > 0:
        if reference is None:
            raise ValueError("detail_weight > 0 needs the datasets' mean latents (pass reference=...)")
        mask = mask + detail_mask(batch, reference, cfg.detail_weight, cfg.motion_clip) - 1
    return mask


def train_step(
    model: nn.Module,
    batch: WorldModelBatch,
    cfg: StepConfig,
    generator: torch.Generator,
    share: tuple[int, int] = (0, 1),
    reference: Sequence[Tensor] | None = None,
    sampler: SamplerConfig | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of one batch (no backward, no optimizer step).

    With ``cfg.self_forcing_p`` > 0 the batch's newest history latents are first partly replaced by the
    model's own samples (:mod:`~astra_gym.training.self_forcing`; its draws come first from ``generator``).

    Args:
        model: The :class:`~astra_gym.world_model.transformer.AstraTransformer` (possibly wrapped
            for data parallelism; called with ``return_aux=True``).
        batch: Clean packed batch on the model's device.
        cfg: Step recipe.
        generator: CPU generator of every random draw of the step (the same on every rank).
        share: ``(rank, world)`` of data parallelism (:func:`draw_share`).
        reference: Per dataset, its mean latent [C, h, w] (needed when ``cfg.detail_weight`` > 0).
        sampler: Sampler of the model's own samples (needed when ``cfg.self_forcing_p`` > 0).

    Returns:
        (loss, logs): the 0-d loss with gradients, and detached 0-d logs ``loss``,
        ``loss_flow`` (weighted flow loss), ``mse`` (unweighted), ``moe_balance``,
        ``history_noised`` and ``actions_dropped`` (fractions of rows; ``self_forced`` too when
        self-forcing is on), plus ``mse_per_row`` [B].
    """
    self_forced = None
    if cfg.self_forcing_p > 0:
        if sampler is None:
            raise ValueError("self_forcing_p > 0 needs the sampler of the model's own samples; pass sampler=")
        draws = draw_share(batch, share, lambda b: _self_forcing_draws(b, generator))
        batch, self_forced = self_force(model, batch, cfg.self_forcing_p, sampler, draws)
    inputs = draw_share(batch, share, lambda b: prepare_inputs(b, cfg, generator))
    velocity, aux = model(inputs.noisy, inputs.timestep, None, inputs.frame_pack, inputs.actions, return_aux=True)
    weight = timestep_weight(inputs.timestep, shift=cfg.timestep_shift) if cfg.loss_weighting == "release" else None
    mask = loss_mask(batch, cfg, reference)
    flow_loss, flow_logs = flow_matching_loss(velocity, inputs.target_velocity, weight, mask)
    balance = aux["moe_balance_loss"].float()
    loss = flow_loss + cfg.moe_balance_weight * balance
    per_row = (velocity.detach().float() - inputs.target_velocity).pow(2).flatten(1).mean(dim=1)  # [B]
    logs = {
        "loss": loss.detach(),
        "loss_flow": flow_logs["loss"],
        "mse": per_row.mean(),
        "moe_balance": balance.detach(),
        "history_noised": inputs.history_noised.float().mean(),
        "actions_dropped": inputs.actions_dropped.float().mean(),
        "mse_per_row": per_row,
    }
    if self_forced is not None:
        logs["self_forced"] = self_forced.float().mean()
    return loss, logs


def _self_forcing_draws(batch: WorldModelBatch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(uniform [B], noise like the target [B, C, F, h, w]) of self-forcing, on the generator's device."""
    uniform = torch.rand(batch.batch_size, generator=generator, device=generator.device)
    return uniform, torch.randn(batch.target.shape, generator=generator, device=generator.device)


def per_dataset_mse(per_row: Tensor, dataset: Tensor, num_datasets: int) -> tuple[Tensor, Tensor]:
    """Sums and counts of per-row MSE by dataset (for logging; reduce across processes, then divide).

    Args:
        per_row: [B] per-row MSE.
        dataset: [B] long dataset index.
        num_datasets: Number of datasets K.

    Returns:
        (sums [K], counts [K]) float32.
    """
    sums = torch.zeros(num_datasets, device=per_row.device).index_add(0, dataset, per_row.float())
    counts = torch.zeros(num_datasets, device=per_row.device).index_add(0, dataset, torch.ones_like(per_row).float())
    return sums, counts
