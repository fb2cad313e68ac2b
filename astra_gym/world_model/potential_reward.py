"""A task reward read as the change of a learned potential: ``scale * (phi(s') - phi(s))``.

Some tasks are potential-based shaping of another one: Manipulation ``progress`` is the
``reach-push`` distance closed in the step, i.e. ``10 * (r(s') - r(s))`` with ``r(s) = -distance``
(:mod:`astra_gym.data.tasks`). Learning the per-step difference directly asks a reward model to see
a 1-2 px gripper motion, and an agent trained inside finds states where its errors pile up (the
imagined return climbs while the real one falls). Reading the potential instead (where the
gripper, the block and the goal are: large, single-frame facts) and differencing it makes an
episode's imagined return telescope to ``scale * (phi(s_T) - phi(s_0))``: per-step errors cancel
instead of accumulating, and the only way to exploit it is to reach states whose potential the
model gets wrong. Measured on ``small-v0`` (``benchmarks/RESULTS.md``, session 8), this trades a
worse per-step reading for a better per-episode one and an imagined return that no longer climbs
under PPO; it did not plan better, so a bundle's own model of the task comes first and this
reader serves bundles that have only the potential's.

The potential is a function of the frames alone: it is read with a zero action row (the model
takes one, but a potential must not depend on it, or the shaping is no longer potential-based).
Until session 27 both sides of a step were read with that step's row. A frame was then read with
one row as a step's "after" and with the next row as the next step's "before", so the sum did not
telescope and every change of action added the difference. On ``manip-v5`` that paid random motion
about +0.7 over 50 imagined steps (``benchmarks/RESULTS.md``, session 27).

:class:`PotentialReward` wraps the potential's :class:`~astra_gym.world_model.reward_model.RewardModel`
so the rollout core scores it like any reward model: it sees one frame more than the potential
model (the frame before the step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from astra_gym.world_model.reward_model import RewardModel

__all__ = ["PotentialReward"]


class PotentialReward(nn.Module):
    """Reward ``scale * (phi(newest k frames) - phi(the k frames before them))`` of a potential model.

    Args:
        potential: The reward model of the potential task (e.g. ``reach-push``), k = its ``num_frames``.
        scale: Multiplies the potential's change (the task's ``potential_scale``).

    Attributes:
        config: The potential model's config with ``num_frames`` k + 1 (what the rollout keeps).
    """

    def __init__(self, potential: RewardModel, scale: float) -> None:
        super().__init__()
        self.potential, self.scale = potential, float(scale)
        self.config = potential.config.replace(num_frames=potential.config.num_frames + 1)

    def forward(self, frames: Tensor, actions: Tensor, anchor: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scores one transition per batch row.

        Both potentials are read with a zero action row (the module docstring), so an episode's
        return telescopes exactly whatever the actions.

        Args:
            frames: [B, k + 1, 3, H, W] float pixels in [-1, 1], oldest first.
            actions: [B, d] float action rows (without the past/current flag): checked, not read.
            anchor: [B, 1, 3, H, W] the episode's start frame, read by both potentials of an anchored
                potential model (see :class:`RewardModel`); None otherwise.

        Returns:
            (reward [B], termination_logit [B]) float32; the termination is the potential model's
            on the newest frames.
        """
        if frames.ndim != 5 or frames.shape[1] != self.config.num_frames:
            raise ValueError(
                f"frames must be [B, {self.config.num_frames}, 3, H, W] (the potential's frames plus the one "
                f"before), got shape {tuple(frames.shape)}"
            )
        batch = frames.shape[0]
        if actions.shape != (batch, self.config.action_dim):
            raise ValueError(
                f"actions must be [B, {self.config.action_dim}] rows for B={batch}, got {tuple(actions.shape)}"
            )
        both = torch.cat([frames[:, 1:], frames[:, :-1]], dim=0)  # [2B, k, 3, H, W]: after, before
        anchors = None if anchor is None else anchor.repeat(2, 1, 1, 1, 1)
        still = actions.new_zeros(2 * batch, actions.shape[1])  # [2B, d]
        phi, logit = self.potential(both, still, anchor=anchors)
        return self.scale * (phi[:batch] - phi[batch:]), logit[:batch]
