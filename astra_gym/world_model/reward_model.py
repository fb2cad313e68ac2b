"""Learned reward and termination: a small CNN over the newest frame(s) and the action row.

The world model predicts pixels only; an env built on it still owes the agent a reward and an
episode end. :class:`RewardModel` reads what the agent saw after its action (the last
``num_frames`` decoded frames of the chunk) and the action row that produced them, and predicts

* ``reward``: a real number, trained by regression on the simulator's per-step reward;
* ``termination_logit``: the log-odds that the simulator ended the episode at this step (trained
  with binary cross-entropy on ``terminated``); the env terminates when ``logit > 0``.

Architecture (all sizes from :class:`RewardModelConfig`)::

    frames [B, k, 3, H, W] in [-1, 1]  ->  [B, 3k, H, W]
      -> (Conv 3x3 stride 2, GroupNorm, SiLU) x len(channels)      [B, c_last, H / 2^n, W / 2^n]
      -> global average pool                                        [B, c_last]
         (+ with ``keypoints``: spatial soft-argmax, each channel's
            expected (x, y) under a softmax over its positions)    [B, c_last + 2 c_last]
    action [B, d] -> Linear(d, hidden) -> SiLU                      [B, hidden]
    concat -> Linear(pooled + hidden, hidden) -> SiLU                [B, hidden]
      -> Linear(hidden, 2) -> (reward, termination_logit)
      (+ with ``pose_dim`` P: -> Linear(hidden, P) -> poses         [B, P], asked for in training only)

Average pooling keeps what is in the picture but not where: a task whose reward is a distance
between small objects (Manipulation ``progress``: gripper to block to goal, 20-40 px apart at 64x64,
beyond the convolutions' 7-15 px receptive field) cannot be read from it. ``keypoints`` adds the
spatial soft-argmax of Levine et al. (2016, "End-to-End Training of Deep Visuomotor Policies"):
one learned image point per channel, from which the head can compute distances.

``pose_dim`` adds a second head that predicts the task's ground-truth poses after the step (the
gripper, block and goal positions) from the same features, standardised by the buffers ``pose_mean``
and ``pose_std`` (set by the trainer, saved with the weights). As a training target only
(``train_reward --pose-weight``) it shapes the features the reward head reads: a scalar distance says
little about where each object is, nine coordinates say much more. With ``pose_reward`` the model
goes further and *computes* its reward from the predicted poses with the task's own formula
(:data:`POSE_REWARDS`, e.g. ``reach-push``'s distances) instead of reading it from the head: the
distance is then exact, and only the positions are learned.

``anchor`` adds the episode's start frame (the newest real frame the rollout was reset on, kept in
``RolloutState.start_frames``) as three more input channels. A world model can lose what a single
frame would show: on FetchPush the imagined goal marker fades within about 10 steps and the block
drifts under a still arm, and a reader of the newest frame alone then pays a standing arm for the
drift (``benchmarks/RESULTS.md``, sessions 24 and 27). Trained on imagined frames labelled with the
real poses, an anchored reader can learn where the start frame is the better witness (the goal
never moves; the block moves only when pushed). Reading the fixed poses from the start frame by
hand instead lost the errors that cancel within one frame (session 24).

Initialisation: PyTorch defaults, except the output layer: its reward weights are scaled by
``output_init_scale`` and its termination bias is ``termination_prior_logit`` (default -8, a
termination probability of 3e-4 per step) with zero termination weights, so an untrained model
(the debug variant) gives small rewards and practically never ends an episode (RetinaNet's prior
initialisation).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "RewardModelConfig",
    "RewardModel",
    "REWARD_MODEL_PRESETS",
    "get_reward_model_preset",
    "spatial_soft_argmax",
    "POSE_REWARDS",
]


def _reach_block(poses: Tensor) -> Tensor:
    """``reach-block`` of :mod:`astra_gym.data.tasks` on poses [B, 9] (gripper, block, goal xyz; goal unread): [B]."""
    return -(poses[:, 0:3] - poses[:, 3:6]).norm(dim=1)


def _reach_push(poses: Tensor) -> Tensor:
    """``reach-push`` of :mod:`astra_gym.data.tasks` on the same poses [B, 9]: [B]."""
    return _reach_block(poses) - (poses[:, 3:6] - poses[:, 6:9]).norm(dim=1)


# A task's reward as a function of the poses after the step (its pose keys concatenated, in order), for
# ``RewardModelConfig.pose_reward``; each must equal the task's reward in astra_gym.data.tasks (tested).
# Formulas of the same width read the same poses, so one pose reader serves them all (``with_pose_reward``).
POSE_REWARDS = {"reach-push": (_reach_push, 9), "reach-block": (_reach_block, 9)}


@dataclass(frozen=True)
class RewardModelConfig:
    """Sizes of :class:`RewardModel`.

    Attributes:
        action_dim: Width d of the action rows it reads (the scenario's command feature without
            the flag: 7 for vehicle/robot commands, 16 for keyboard).
        num_frames: Newest frames k it sees (the last k frames of a chunk).
        channels: Widths of the stride-2 conv stages.
        hidden: Width of the action embedding and of the head.
        keypoints: Also read each last-stage channel's expected image position (spatial soft-argmax).
        pose_dim: Width P of the auxiliary pose head (0 = none; see the module docstring).
        pose_reward: A task of :data:`POSE_REWARDS` whose reward the model computes from its predicted
            poses instead of its reward head (None = the head's).
        anchor: Also read the episode's start frame (``anchor`` of :meth:`RewardModel.forward`).
        output_init_scale: Factor on the initial reward weights (small = near-zero rewards).
        termination_prior_logit: Initial bias of the termination logit.
    """

    action_dim: int
    num_frames: int = 1
    channels: tuple[int, ...] = (32, 64, 128)
    hidden: int = 128
    keypoints: bool = False
    pose_dim: int = 0
    pose_reward: str | None = None
    anchor: bool = False
    output_init_scale: float = 0.1
    termination_prior_logit: float = -8.0

    def __post_init__(self) -> None:
        if self.action_dim < 1:
            raise ValueError(f"RewardModelConfig.action_dim={self.action_dim} must be >= 1")
        if self.num_frames < 1:
            raise ValueError(f"RewardModelConfig.num_frames={self.num_frames} must be >= 1")
        if self.pose_dim < 0:
            raise ValueError(f"RewardModelConfig.pose_dim={self.pose_dim} must be >= 0 (0 = no pose head)")
        if self.pose_reward is not None:
            if self.pose_reward not in POSE_REWARDS:
                raise ValueError(f"pose_reward={self.pose_reward!r}: choose one of {sorted(POSE_REWARDS)} or None")
            if self.pose_dim != POSE_REWARDS[self.pose_reward][1]:
                raise ValueError(
                    f"pose_reward={self.pose_reward!r} reads {POSE_REWARDS[self.pose_reward][1]} pose numbers, "
                    f"but pose_dim={self.pose_dim}"
                )
        if not self.channels or min(self.channels) < 1 or self.hidden < 1:
            raise ValueError(f"channels={self.channels} and hidden={self.hidden} must be positive")
        if not math.isfinite(self.output_init_scale) or not math.isfinite(self.termination_prior_logit):
            raise ValueError("output_init_scale and termination_prior_logit must be finite")

    def replace(self, **changes) -> RewardModelConfig:
        """Returns a copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-serialisable form (inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RewardModelConfig:
        """Builds a config from :meth:`to_dict` output; unknown keys raise a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RewardModelConfig fields {unknown}; known fields: {sorted(known)}")
        data = dict(data)
        if "channels" in data:
            data["channels"] = tuple(data["channels"])
        return cls(**data)


REWARD_MODEL_PRESETS: dict[str, dict] = {
    # Widths only; action_dim comes from the scenario.
    "small": {"channels": (32, 64, 128), "hidden": 128},
    # Where small objects are, at 1/4 resolution: for rewards that are distances between them.
    "keypoints": {"channels": (32, 64), "hidden": 128, "keypoints": True},
    "debug": {"channels": (8, 16), "hidden": 16},
}


def get_reward_model_preset(name: str, action_dim: int, **changes) -> RewardModelConfig:
    """The named preset for action rows of width ``action_dim``; raises a ValueError listing presets."""
    try:
        sizes = REWARD_MODEL_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown reward model preset {name!r}; choose one of {sorted(REWARD_MODEL_PRESETS)}"
        ) from None
    return RewardModelConfig(action_dim=action_dim, **{**sizes, **changes})


def spatial_soft_argmax(maps: Tensor) -> Tensor:
    """Each channel's expected position under a softmax over its positions.

    Args:
        maps: [B, C, h, w] feature maps.

    Returns:
        [B, 2C]: (x, y) per channel, channel by channel, in [-1, 1] (-1 = left / top pixel centre).
    """
    b, c, h, w = maps.shape
    weights = maps.flatten(2).float().softmax(dim=-1).view(b, c, h, w)
    ys = torch.linspace(-1.0, 1.0, h, device=maps.device)
    xs = torch.linspace(-1.0, 1.0, w, device=maps.device)
    x = (weights.sum(dim=2) * xs).sum(dim=-1)  # [B, C]
    y = (weights.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1).flatten(1).to(maps.dtype)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class RewardModel(nn.Module):
    """Predicts (reward, termination logit) from the newest frames and the action row.

    Args:
        config: Sizes; see :class:`RewardModelConfig`.
    """

    def __init__(self, config: RewardModelConfig) -> None:
        super().__init__()
        self.config = config
        stages: list[nn.Module] = []
        width = 3 * (config.num_frames + int(config.anchor))
        for out in config.channels:
            stages += [nn.Conv2d(width, out, 3, stride=2, padding=1), _group_norm(out), nn.SiLU()]
            width = out
        self.frame_encoder = nn.Sequential(*stages)
        self.action_encoder = nn.Sequential(nn.Linear(config.action_dim, config.hidden), nn.SiLU())
        pooled = 3 * width if config.keypoints else width
        self.head = nn.Sequential(
            nn.Linear(pooled + config.hidden, config.hidden), nn.SiLU(), nn.Linear(config.hidden, 2)
        )
        self.pose_head = nn.Linear(config.hidden, config.pose_dim) if config.pose_dim else None
        if config.pose_dim:
            self.register_buffer("pose_mean", torch.zeros(config.pose_dim))
            self.register_buffer("pose_std", torch.ones(config.pose_dim))
        self._init_output()

    def _init_output(self) -> None:
        """Small reward weights; termination starts at its prior logit (see the module docstring)."""
        out = self.head[-1]
        with torch.no_grad():
            out.weight[0].mul_(self.config.output_init_scale)
            out.weight[1].zero_()
            out.bias[0].zero_()
            out.bias[1].fill_(self.config.termination_prior_logit)

    def with_pose_reward(self, task: str) -> RewardModel:
        """This model computing ``task``'s reward (a :data:`POSE_REWARDS` formula) from the poses it predicts.

        The weights are shared, not copied: a reader of ``reach-push`` serves ``reach-block`` unchanged.

        Raises:
            ValueError: The model computes no reward from poses, or ``task`` reads other poses.
        """
        if self.config.pose_reward is None:
            raise ValueError(
                f"a reward model without pose_reward cannot compute {task!r} from poses; train one with "
                "`train_reward --pose-reward`"
            )
        self.config = self.config.replace(pose_reward=task)  # validated: the formula reads pose_dim numbers
        return self

    @torch.no_grad()
    def set_pose_scale(self, mean: Tensor, std: Tensor) -> None:
        """Sets the standardisation [P] of the pose head's outputs (from the training poses)."""
        if self.pose_head is None:
            raise ValueError("this reward model has no pose head (RewardModelConfig.pose_dim = 0)")
        self.pose_mean.copy_(mean)
        self.pose_std.copy_(std)

    def forward(
        self, frames: Tensor, actions: Tensor, poses: bool = False, anchor: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Scores one transition per batch row.

        Args:
            frames: [B, k, 3, H, W] float pixels in [-1, 1], the newest k = ``num_frames`` frames,
                oldest first.
            actions: [B, d] float action rows (without the past/current flag).
            poses: Also return the pose head's prediction (a model with ``pose_dim`` > 0 only).
            anchor: [B, 1, 3, H, W] float pixels in [-1, 1], the episode's start frame: read by a model
                with ``RewardModelConfig.anchor`` (required there), ignored by others.

        Returns:
            (reward [B], termination_logit [B]), float32; with ``poses``, the predicted poses [B, P]
            (in their own units) third. With ``pose_reward``, the reward is that task's reward of
            the predicted poses.
        """
        self._check_inputs(frames, actions)
        if poses and self.pose_head is None:
            raise ValueError("poses=True needs a reward model with a pose head (RewardModelConfig.pose_dim > 0)")
        if self.config.anchor:
            frames = torch.cat([self._checked_anchor(anchor, frames), frames], dim=1)  # [B, 1 + k, 3, H, W]
        dtype = self.head[0].weight.dtype
        images = frames.flatten(1, 2).to(dtype).contiguous()  # [B, k (+1), 3, H, W] -> [B, 3k (+3), H, W]
        maps = self.frame_encoder(images)  # [B, c_last, h, w]
        pooled = maps.mean(dim=(2, 3))  # [B, c_last]
        if self.config.keypoints:
            pooled = torch.cat([pooled, spatial_soft_argmax(maps)], dim=1)  # [B, 3 c_last]
        features = torch.cat([pooled, self.action_encoder(actions.to(dtype))], dim=1)  # [B, pooled + hidden]
        hidden = self.head[1](self.head[0](features))  # [B, hidden]
        out = self.head[2](hidden).float()  # [B, 2]
        reward = out[:, 0]
        if poses or self.config.pose_reward is not None:
            predicted = self.pose_head(hidden).float() * self.pose_std.float() + self.pose_mean.float()  # [B, P]
            if self.config.pose_reward is not None:
                reward = POSE_REWARDS[self.config.pose_reward][0](predicted)
            if poses:
                return reward, out[:, 1], predicted
        return reward, out[:, 1]

    def _check_inputs(self, frames: Tensor, actions: Tensor) -> None:
        k, d = self.config.num_frames, self.config.action_dim
        if frames.ndim != 5 or frames.shape[1:3] != (k, 3):
            raise ValueError(f"frames must be [B, {k}, 3, H, W] in [-1, 1], got shape {tuple(frames.shape)}")
        if actions.shape != (frames.shape[0], d):
            raise ValueError(
                f"actions must be [B, {d}] rows for B={frames.shape[0]}, got shape {tuple(actions.shape)}"
            )

    def _checked_anchor(self, anchor: Tensor | None, frames: Tensor) -> Tensor:
        """``anchor`` [B, 1, 3, H, W] in ``frames``' dtype, or a ValueError naming what is wrong."""
        if anchor is None:
            raise ValueError(
                "this reward model reads the episode's start frame (RewardModelConfig.anchor): pass anchor= "
                "[B, 1, 3, H, W], e.g. the rollout's RolloutState.start_frames"
            )
        if anchor.shape != (frames.shape[0], 1, *frames.shape[2:]):
            raise ValueError(
                f"anchor must be [B, 1, 3, H, W] = {(frames.shape[0], 1, *frames.shape[2:])} like the frames, "
                f"got shape {tuple(anchor.shape)}"
            )
        return anchor.to(frames.dtype)
