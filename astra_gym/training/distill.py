"""Few-step distillation: a student that does in ``student_steps`` (1) plain forwards what the
teacher does in ``teacher_steps`` Euler steps with action-free guidance.

The teacher's sampler is deterministic given the starting noise, so it defines a map
``noise -> clean chunk`` for each history and action sequence. The student starts from the teacher's
weights and regresses that map directly (knowledge distillation of a sampler, Luhman & Luhman 2021;
guidance distillation, Meng et al. 2023): from the same noise it takes ``student_steps`` Euler steps
of its own, with gradients through all of them, and the loss is the MSE to the teacher's chunk.
Guidance is baked in, so the student runs one forward per step instead of AFG's two.

One step of :func:`distill_step`, drawing from one generator in a fixed order:

1. **Action dropout** as in training (the same null action): a dropped row's teacher target is the
   unconditional sample (with null actions the guided velocity equals the unconditional one), so
   the student keeps an unconditional mode.
2. **Noise** [B, C, F, h, w] at sigma = 1, shared by teacher and student.

The history stays clean (inference uses clean history; noise-as-mask is a training-time device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from astra_gym.training.data import WorldModelBatch
from astra_gym.training.steps import draw_share
from astra_gym.utils.cli_args import arg
from astra_gym.world_model.action_encoders import drop_actions
from astra_gym.world_model.conditioning import ActionInput
from astra_gym.world_model.sampling import SamplerConfig, euler_step, flow_sigmas, sample_chunk

__all__ = ["DistillConfig", "distill_step", "student_sample"]


@dataclass(frozen=True)
class DistillConfig:
    """What the student learns to reproduce; see the field help."""

    teacher_steps: int = arg(8, "Euler steps of the teacher's sampler (the target)")
    teacher_guidance: float = arg(3.0, "action-free guidance scale of the teacher's sampler")
    teacher_shift: float = arg(1.0, "sigma-schedule shift of the teacher's and the student's steps")
    student_steps: int = arg(1, "Euler steps of the student (gradients flow through all of them)")

    def __post_init__(self) -> None:
        if self.teacher_steps < 1 or self.student_steps < 1:
            raise ValueError(f"teacher_steps={self.teacher_steps} and student_steps={self.student_steps} must be >= 1")
        if not self.teacher_shift > 0:
            raise ValueError(f"teacher_shift={self.teacher_shift} must be > 0")

    @property
    def teacher_sampler(self) -> SamplerConfig:
        """The teacher's :class:`SamplerConfig`."""
        return SamplerConfig(self.teacher_steps, self.teacher_shift, self.teacher_guidance)


def student_sample(
    model: nn.Module, noise: Tensor, batch: WorldModelBatch, actions: ActionInput, cfg: DistillConfig
) -> tuple[Tensor, Tensor]:
    """The student's ``student_steps`` Euler steps from ``noise``, differentiable.

    Args:
        model: The student transformer (called with ``return_aux=True``).
        noise: [B, C, F, h, w] float32 noise at sigma = 1.
        batch: The batch (its clean ``frame_pack``).
        actions: The (possibly dropped) actions.
        cfg: Distillation settings.

    Returns:
        ([B, C, F, h, w] float32 clean chunk, mean MoAE balance loss over the steps).
    """
    sigmas = flow_sigmas(cfg.student_steps, cfg.teacher_shift, device=noise.device)
    x, balance = noise, noise.new_zeros(())
    for i in range(cfg.student_steps):
        timestep = (1000.0 * sigmas[i]).expand(x.shape[0]).float()
        v, aux = model(x, timestep, None, batch.frame_pack, actions, return_aux=True)
        x = euler_step(x, v.float(), sigmas[i], sigmas[i + 1])
        balance = balance + aux["moe_balance_loss"].float() / cfg.student_steps
    return x, balance


def _draws(batch: WorldModelBatch, action_dropout: float, generator: torch.Generator) -> tuple:
    """Action dropout, then the chunk's starting noise (the step's draws, in this order)."""
    actions, dropped = drop_actions(batch.actions, action_dropout, generator)
    noise = torch.randn(batch.target.shape, generator=generator, dtype=torch.float32).to(batch.target.device)
    return actions, dropped, noise


def distill_step(
    model: nn.Module,
    teacher: nn.Module,
    batch: WorldModelBatch,
    cfg: DistillConfig,
    action_dropout: float,
    moe_balance_weight: float,
    generator: torch.Generator,
    autocast_dtype: torch.dtype | None = None,
    share: tuple[int, int] = (0, 1),
) -> tuple[Tensor, dict[str, Tensor]]:
    """Distillation loss of one batch (no backward, no optimizer step).

    Args:
        model: The student (possibly wrapped for data parallelism).
        teacher: The frozen teacher transformer (same layout and action space).
        batch: Clean packed batch on the models' device.
        cfg: Distillation settings.
        action_dropout: Probability that a row's actions become the null action.
        moe_balance_weight: Weight of the student's MoAE balance loss.
        generator: CPU generator of every random draw of the step.
        autocast_dtype: Run the teacher under autocast with this dtype (None = as it is).
        share: ``(rank, world)`` of data parallelism (:func:`~astra_gym.training.steps.draw_share`).

    Returns:
        (loss, logs) with the same log keys as :func:`~astra_gym.training.steps.train_step`
        (``mse`` = ``loss_flow`` = the chunk MSE to the teacher; ``history_noised`` is 0).
    """
    actions, dropped, noise = draw_share(batch, share, lambda b: _draws(b, action_dropout, generator))
    device_type = batch.target.device.type
    with (
        torch.no_grad(),
        torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None),
    ):
        target = sample_chunk(
            teacher, noise, context=None, frame_pack=batch.frame_pack, actions=actions, config=cfg.teacher_sampler
        )
    chunk, balance = student_sample(model, noise, batch, actions, cfg)
    per_row = (chunk - target).pow(2).flatten(1).mean(dim=1)  # [B]
    mse = per_row.mean()
    loss = mse + moe_balance_weight * balance
    logs = {
        "loss": loss.detach(),
        "loss_flow": mse.detach(),
        "mse": mse.detach(),
        "moe_balance": balance.detach(),
        "history_noised": torch.zeros(()),
        "actions_dropped": dropped.float().mean(),
        "mse_per_row": per_row.detach(),
    }
    return loss, logs
